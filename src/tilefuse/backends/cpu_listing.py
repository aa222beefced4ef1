"""The network's own machine code, readable: `forward` and the library kernels it calls, as
LLVM IR or assembly, each stretch of code under the IR line it implements.

Place in the pipeline: `CpuModel.llvm()` / `.asm()` and `tilefuse show --emit llvm|asm`.
`forward` is compiled afresh in this process from the generated module's Python function, with
Numba's debug line table on (and nothing else that debug mode changes: no bounds checks, no
extended lifetimes, so the code is the code that runs). Each instruction's source line maps to
the `# %v = op(...)` comment that opens its op's block in the generated source; the listing
puts that IR line above the first instruction of each stretch, then drops the debug records,
the metadata and the directives a reader does not need. Numba's Python-calling wrappers
(`cpython.`, `cfunc.`) and NRT helpers are left out: they are not the network.

The kernel library is the same for every network of a dtype (`cpu_library`); its functions
are listed after `forward`, each under a line saying what it is and which ops of this network
call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TilefuseError

OP_COMMENT = re.compile(r"^\s*# (%\S+ = .*)$")
DRIVER_CALL = re.compile(r"\bdense_(f32|f64)_(\d+x\d+)\(")
DEBUG_ATTACHMENT = re.compile(r",? !dbg !\d+")
LOCATION = re.compile(r"^!(\d+) = !DILocation\(line: (\d+)")
LOC_DIRECTIVE = re.compile(r"^\s*\.loc\s+\d+\s+(\d+)")
DROPPED_ASM = re.compile(
    r"^\s*(\.cfi_\w+|\.file\s|\.loc\s|\.Ltmp\d+:|\.Lfunc_begin\d+:|#\s*(DEBUG_VALUE|--)|"
    r"\.p2align|\.type\s|\.size\s|\.globl\s|\.weak\s|\.hidden\s)"
)  # fmt: skip
ENTRY = "(entry: the batch size and the checks of the inputs)"

# What each library function is, by name (tag = float32_v8 etc.); the first match wins.
LIBRARY_ROLES = (
    (r"tilefuse_dense_", "the driver of a dense call: checks the operands, copies the bias, "
     "plans the tasks, runs them on the thread pool"),
    (r"tilefuse_plan_", "the task plan: rows kernel or packed tiles, the grid of tasks"),
    (r"tilefuse_job_", "a pool worker's share of a call: claims tasks until none are left"),
    (r"tilefuse_run_task_", "one task: the rows kernel (batch <= 4) or pack x + micro-tiles"),
    (r"tilefuse_rows_\w+_(\d+)x(\d+)x(\d+)$", "rows kernel: {0} rows x {1} panels of {2} "
     "columns in registers over all of K (batches up to 4)"),
    (r"tilefuse_rows_\w+_any$", "rows kernel dispatch: picks the 1-, 2- or 4-row kernel"),
    (r"tilefuse_pack_x_", "packs a block of x rows for one k block (mr-row slivers)"),
    (r"tilefuse_pack_rows_\w+_(\d+)x\d+$", "packs {0} rows of x: a transpose in registers"),
    (r"tilefuse_tile_\w+_(\d+)x(\d+)$", "the {0}x{1} micro-kernel (tile mr={0}, nr={1}): "
     "a {0}x{1} block of the output in registers (a k loop for each row count up to {0}), "
     "epilogue fused in the last k block"),
    (r"tilefuse_activate_", "the epilogue's activation over a tile"),
    (r"tilefuse_add_rows_", "the residual (post=(add)) added to a task's block of the output"),
    (r"tilefuse_normalize_rows_", "a layer norm (post=(.., layer_norm)) of a task's whole rows, "
     "in place, last"),
    (r"tilefuse_softmax_rows_", "attention's softmax of a block of scores: each row's max, "
     "exp(s - max) in place and its sum, in vectors"),
    (r"tilefuse_attention_task_", "attention's task: a head and a block of 128 queries (q "
     "scaled, kᵀ and v packed, q kᵀ and p v through the dense driver, the softmax of rows)"),
)  # fmt: skip


@dataclass(frozen=True)
class SourceMap:
    """The generated source's line numbers mapped to the IR line whose block holds them."""

    op_of_line: dict[int, str]
    driver_ops: dict[str, list[str]]  # library ("f32 6x16") -> the ops that call its driver

    @staticmethod
    def of(source: str) -> SourceMap:
        op_of_line, driver_ops, current = {}, {}, ENTRY
        for number, line in enumerate(source.splitlines(), start=1):
            match = OP_COMMENT.match(line)
            if match:
                current = match.group(1)
            op_of_line[number] = current
            for call in DRIVER_CALL.finditer(line):
                ops = driver_ops.setdefault(f"{call.group(1)} {call.group(2)}", [])
                if current not in ops:
                    ops.append(current)
        return SourceMap(op_of_line, driver_ops)

    def op(self, line: int) -> str | None:
        return self.op_of_line.get(line)


def functions(llvm_text: str) -> dict[str, str]:
    """The `define`d functions of an LLVM IR module, by name, in order."""
    found, lines, name = {}, [], None
    for line in llvm_text.splitlines():
        if line.startswith("define "):
            name, lines = re.search(r"@(\"[^\"]+\"|[\w.$]+)\(", line).group(1), []
        if name is not None:
            lines.append(line)
            if line == "}":
                found[name], name = "\n".join(lines), None
    return found


def asm_functions(asm: str) -> dict[str, str]:
    """The functions of an assembly listing, by name: from the label to `.Lfunc_endN`."""
    found, lines, name = {}, [], None
    declared = set(re.findall(r"^\s*\.type\s+([\w.$]+),@function", asm, re.M))
    for line in asm.splitlines():
        label = re.match(r"^([\w.$]+):", line)
        if label and label.group(1) in declared:
            name, lines = label.group(1), []
        if name is not None:
            lines.append(line)
            if re.match(r"^\.Lfunc_end\d+:", line):
                found[name], name = "\n".join(lines[:-1]), None
    return found


def forward_of(found: dict[str, str], what: str) -> tuple[str, str]:
    """(name, text) of `forward` among a listing's functions; an error naming what was found
    when the listing is not laid out as expected (an object format other than ELF)."""
    for name, text in found.items():
        if is_forward(name):
            return name, text
    raise TilefuseError(
        f"cannot find forward in Numba's {what} (functions found: "
        f"{', '.join(found) or 'none'}); the listing expects ELF-style assembly on x86-64"
    )


MANGLED_TILEFUSE = re.compile(r"_ZN8tilefuse[0-9A-Za-z_$]*")


def readable_name(match: re.Match) -> str:
    """`tilefuse.backends.cpu_runtime.softmax` for Numba's mangled name of that function (its
    argument types dropped): the runtime kernels `forward` calls, named as in the source."""
    symbol, k, parts = match.group(0), 3, []
    while k < len(symbol) and symbol[k].isdigit():
        digits = re.match(r"\d+", symbol[k:]).group(0)
        size = int(digits)
        parts.append(symbol[k + len(digits) : k + len(digits) + size])
        k += len(digits) + size
    return ".".join(parts) if parts else symbol


def readable_calls(text: str) -> str:
    return MANGLED_TILEFUSE.sub(readable_name, text)


def is_forward(name: str) -> bool:
    return "7forward" in name and not name.startswith(("_ZN7cpython", "cfunc.", '"cfunc.'))


def annotated_llvm(llvm_text: str, smap: SourceMap) -> str:
    """`forward`'s LLVM IR with each op's IR line above its code and the debug records gone."""
    locations = {
        m.group(1): int(m.group(2)) for m in map(LOCATION.match, llvm_text.splitlines()) if m
    }
    name, body = forward_of(functions(llvm_text), "LLVM IR")
    out, current = [], None
    for line in readable_calls(body.replace(name, "forward")).splitlines():
        stripped = line.strip()
        if stripped.startswith(("#dbg_", "call void @llvm.dbg.")):
            continue
        ref = re.search(r"!dbg !(\d+)", line)
        op = smap.op(locations.get(ref.group(1), 0)) if ref else None
        if op is not None and op != current:
            out.append(f"  ; ---- {op}")
            current = op
        out.append(DEBUG_ATTACHMENT.sub("", line))
    return "\n".join(out)


def annotated_asm(asm: str, smap: SourceMap) -> str:
    """`forward`'s assembly with each op's IR line above its code and the directives gone."""
    name, body = forward_of(asm_functions(asm), "assembly")
    out, current = [], None
    for line in readable_calls(body.replace(name, "forward")).splitlines():
        loc = LOC_DIRECTIVE.match(line)
        if loc:
            op = smap.op(int(loc.group(1)))
            if op is not None and op != current:
                out.append(f"\t# ---- {op}")
                current = op
            continue
        if not DROPPED_ASM.match(line):
            out.append(line)
    return "\n".join(out)


def role(name: str) -> str:
    for pattern, text in LIBRARY_ROLES:
        match = re.search(pattern, name)
        if match:
            return text.format(*match.groups())
    return "a helper of the kernel library"


def library_listing(text: str, kind: str, library: str, ops: list[str],
                    what: str = "kernel library", uses: str = "the dense ops of this network "
                    "call its driver") -> str:  # fmt: skip
    """The kernel library `library` ("f32 6x16": dtype and register tile), each function
    under what it is; the header names the ops of this network that call it (`what` and
    `uses` name another library: attention's)."""
    split = asm_functions(text) if kind == "asm" else functions(text)
    comment = "#" if kind == "asm" else ";"
    parts = [f"{comment} ==== {what}, {library} (cpu_library): {uses}",
             *(f"{comment}   {op}" for op in ops)]  # fmt: skip
    for name, body in split.items():
        if kind == "asm":
            body = "\n".join(line for line in body.splitlines() if not DROPPED_ASM.match(line))
        parts += ["", f"{comment} ---- {name}: {role(name)}", body]
    return "\n".join(parts)


def listing(kind: str, forward_code: str, source: str, library: dict[str, str], graph: str) -> str:
    """The whole listing: `forward` annotated, then the library of each dtype it calls.
    `library` maps a library ("f32 6x16") to its optimised LLVM IR or assembly."""
    smap = SourceMap.of(source)
    comment = "#" if kind == "asm" else ";"
    what = "assembly" if kind == "asm" else "optimised LLVM IR"
    annotate = annotated_asm if kind == "asm" else annotated_llvm
    parts = [
        f"{comment} tilefuse: {what} of graph {graph}'s compiled code: `forward` (the generated",
        f"{comment} module's function, Numba's wrappers left out), each op's code under its IR",
        f"{comment} line, then the kernel library functions it calls.",
        "",
        annotate(forward_code, smap),
    ]
    for name, text in library.items():
        parts += ["", library_listing(text, kind, name, smap.driver_ops.get(name, []))]
    return "\n".join(parts) + "\n"


NATIVE_VALUE = re.compile(r'^\s*%"?[a-z]+\.(\d+)"? = ')
INDIRECT_CALL = re.compile(r"^\s*call[a-z]*\s+\*")
FUNCTION_START = re.compile(r"^(define |[A-Za-z_][\w.]*:$)")


def native_listing(kind: str, code: str, library: dict[str, str], lines: list[str],
                   graph: str, driver_ops: list[int] | None = None) -> str:  # fmt: skip
    """The listing of a native forward (cpu_native): its functions with each op's IR line
    (`lines`, in op order) above the op's code (LLVM IR: the first value named for the op;
    assembly: the op's indirect call of its driver, counted per function: the k-th is op
    driver_ops[k]), then the kernel libraries it calls."""
    drivers = list(range(len(lines))) if driver_ops is None else driver_ops
    comment = "#" if kind == "asm" else ";"
    what = "assembly" if kind == "asm" else "optimised LLVM IR"
    out = [
        f"{comment} tilefuse: {what} of graph {graph}'s compiled code: the native forward "
        f"(cpu_native), each",
        f"{comment} op's driver call under its IR line, then the kernel library functions it "
        "calls.",
        "",
    ]
    seen: set[int] = set()
    calls = 0
    for line in code.splitlines():
        if kind == "asm" and DROPPED_ASM.match(line):
            continue
        if FUNCTION_START.match(line):
            seen, calls = set(), 0
        op = None
        if kind == "asm" and INDIRECT_CALL.match(line):
            op, calls = (drivers[calls] if calls < len(drivers) else None), calls + 1
        match = NATIVE_VALUE.match(line) if kind != "asm" else None
        if match and int(match.group(1)) not in seen:
            op = int(match.group(1))
        if op is not None and op < len(lines) and op not in seen:
            seen.add(op)
            out.append(f"{comment} {lines[op]}")
        out.append(line)
    text = "\n".join(out)
    for name, listing_text in library.items():
        text += "\n\n" + library_listing(listing_text, kind, name, lines)
    return text + "\n"


__all__ = ["SourceMap", "annotated_asm", "annotated_llvm", "library_listing", "listing",
           "native_listing"]  # fmt: skip
