"""Where tilefuse keeps what it compiles: generated kernel modules, Numba's cache files for
them, self-check records and reproducers. Place in the pipeline: after rendering, before the
first call; the CPU backend loads every generated module through `load_generated`.

Default `~/.cache/tilefuse` (or `$XDG_CACHE_HOME/tilefuse`); `TILEFUSE_CACHE_DIR` moves it.

    kernels/tilefuse_gen_<key>.py   a generated module; <key> hashes its source and
                                    `environment()` (tilefuse, numba, llvmlite, CPU)
    kernels/names/<graph>.json      what the last module of that graph was keyed on
    checks/<key>.json               a passed self-check (check="first" skips the next one)
    reproducers/<graph>-<key>/      what a failed self-check left behind
    locks/<name>.lock               one compiling process at a time per module

Safety: files are written atomically (a temporary file renamed into place); a module is
imported and compiled under an exclusive file lock, so two processes compiling the same model
at once both succeed; Numba's index and data files (`.nbi`, `.nbc`) of generated modules are
sealed with checksums once they have worked, and checked before Numba reads them: a
truncated or corrupted file is removed and rebuilt, where Numba would raise or, on a corrupt
object file, abort the process. `TILEFUSE_EXPLAIN_CACHE=1` prints why a lookup missed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# what this process compiled and rebuilt: "compiles" counts models built by a backend,
# "unpickle_hits" unpickles answered from the per-process model cache (compiler.rebuild_model)
stats: Counter[str] = Counter()

MODULE_PREFIX = "tilefuse_gen_"
SEAL_SUFFIX = ".tfsum"


# A folder is tilefuse's (and `tilefuse cache clear` may empty it) when it holds this file,
# written when tilefuse creates the folder or first finds it empty. The format is the Cache
# Directory Tagging Specification's, so backup tools skip the folder too.
MARKER = "CACHEDIR.TAG"
MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by tilefuse.\n"
    "# For information about cache directory tags see https://bford.info/cachedir/\n"
)
_ready: dict[str, pathlib.Path] = {}  # configured root -> the folder in use (per process)
_private: list[pathlib.Path] = []  # a private temporary cache, once the configured one fails


def cache_dir() -> pathlib.Path:
    """The cache folder: TILEFUSE_CACHE_DIR, else $XDG_CACHE_HOME/tilefuse or ~/.cache/tilefuse.
    Created (with its marker) when missing; a private temporary folder, with a warning, when it
    cannot be created or written (`use_private_cache`)."""
    if _private:
        return _private[0]
    root = os.environ.get("TILEFUSE_CACHE_DIR")
    variable = "TILEFUSE_CACHE_DIR" if root else "the default cache folder"
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "tilefuse")
    if root in _ready:
        return _ready[root]
    path = pathlib.Path(root)
    if os.path.lexists(root) and not os.path.isdir(root):
        from .errors import TilefuseError

        raise TilefuseError(
            f"{variable} {root!r} is a file, not a folder: point TILEFUSE_CACHE_DIR at a "
            "folder (tilefuse creates it when it is missing)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not is_marked(path) and all(p.name in OWN_NAMES for p in path.iterdir()):
            atomic_write(path / MARKER, MARKER_TEXT)  # new, or made by an older tilefuse
    except OSError as err:
        return use_private_cache(f"{variable} {root!r} cannot be created ({err.strerror})")
    _ready[root] = path
    return path


# what tilefuse writes at the top of its cache folder (a folder holding nothing else is its)
OWN_NAMES = frozenset(
    {
        MARKER,
        "kernels",
        "checks",
        "reproducers",
        "locks",
        "tuning",
        "roofline.json",
        "calibration.json",
    }
)


def is_marked(path: pathlib.Path) -> bool:
    """Whether `path` carries tilefuse's cache marker."""
    try:
        return "created by tilefuse" in (path / MARKER).read_text(errors="replace")
    except OSError:
        return False


def use_private_cache(reason: str) -> pathlib.Path:
    """From now on, this process caches in a temporary folder of its own (say why, once)."""
    if not _private:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="tilefuse-cache-"))
        (folder / MARKER).write_text(MARKER_TEXT)
        _private.append(folder)
        warnings.warn(
            f"tilefuse: {reason}; compiling into a private temporary cache {folder} instead "
            "(nothing is kept for the next process)",
            CacheWarning,
            stacklevel=3,
        )
    return _private[0]


class CacheWarning(UserWarning):
    """The cache folder could not be used as configured (read-only, not creatable)."""


def atomic_write(path: pathlib.Path, data: str | bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def explain(message: str) -> None:
    """Say why a cache lookup missed, when TILEFUSE_EXPLAIN_CACHE=1."""
    if os.environ.get("TILEFUSE_EXPLAIN_CACHE", "") not in ("", "0"):
        print(f"tilefuse cache: {message}", file=sys.stderr)


# -- the key ---------------------------------------------------------------------------------
def environment() -> dict[str, str]:
    """What compiled code depends on besides its source: a change in any of these is a miss."""
    import llvmlite
    import llvmlite.binding as llvm
    import numba

    from ._version import __version__

    return {
        "tilefuse": __version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "python": sys.version.split()[0],
        "cpu": llvm.get_host_cpu_name(),
        "cpu_features": _cpu_features(),
    }


def _cpu_features() -> str:
    import llvmlite.binding as llvm

    try:
        return llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot tell on this host: the CPU name must do
        return ""


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def model_key(graph: Any, target: str, options: dict[str, Any]) -> str:
    """sha256 of a graph's canonical text, each constant's dtype, shape and bytes (in
    topological order), the target and the options: two models with the same key compute
    the same function the same way."""
    import numpy as np

    h = hashlib.sha256(str(graph).encode())
    for node in graph:
        if node.op == "const":
            array = np.ascontiguousarray(graph.constants[node.id])
            h.update(f"{array.dtype.str}{array.shape}".encode())
            h.update(array.data)
    h.update(f"{target} {sorted(options.items())!r}".encode())
    return h.hexdigest()


# -- locks -----------------------------------------------------------------------------------
@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """An exclusive lock across processes (flock on locks/<name>.lock) and threads."""
    path = cache_dir() / "locks" / f"{name}.lock"
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - closed below
    except ImportError:  # no flock (Windows): atomic writes still keep files whole
        yield
        return
    except OSError as err:  # a read-only cache: reading needs no lock (writes fall back)
        _warn_once(f"cannot lock in the cache folder ({err.strerror}): reading it unlocked")
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"tilefuse: {message}", CacheWarning, stacklevel=4)


# -- generated modules -----------------------------------------------------------------------
_imported: dict[str, Any] = {}  # generated modules imported and compiled by this process


@dataclass
class Loaded:
    """A generated module and how the cache served it."""

    module: Any
    name: str
    path: pathlib.Path
    hit: bool = True  # the module file and its compiled code were already in the cache
    reasons: list[str] = field(default_factory=list)  # why not, when not

    def seal(self) -> None:
        """The module's code ran and passed its check: seal Numba's files for it, so that
        later loads trust them only while they match."""
        if self.name in _sealed:
            return
        with locked(self.name):
            seal_numba_files(self.path, self.name)
        _sealed.add(self.name)


_sealed: set[str] = set()  # modules sealed by this process


def module_key(source: str, fingerprint: str) -> str:
    env = environment()
    return digest(fingerprint, *(f"{k}={v}" for k, v in sorted(env.items())), source)[:20]


def load_generated(
    source: str,
    fingerprint: str,
    graph_name: str,
    warm: Callable[[Any], bool] | None = None,
    trial: bool = True,
) -> Loaded:
    """Import `source` from a content-hashed file in kernels/ (Numba caches real files only).

    `fingerprint` hashes the code the module calls (the kernel library). `warm(module)`
    compiles what must be compiled and returns whether Numba served it from its cache; it
    runs under the module's lock, after the module's Numba files are checked. A failure
    while loading cached code removes the module's Numba files and tries once more.

    With `trial`, Numba's files stay unsealed until `Loaded.seal()` (after the code ran and
    passed its check); without, they are sealed now (code that is compiled, never run)."""
    name = MODULE_PREFIX + module_key(source, fingerprint)
    path = cache_dir() / "kernels" / f"{name}.py"
    if name in _imported:
        return Loaded(_imported[name], name, path)
    with locked(name):  # other processes, and other threads of this one
        if name in _imported:
            return Loaded(_imported[name], name, path)
        loaded = Loaded(None, name, path)
        try:
            _write_module(loaded, source, graph_name, fingerprint)
        except OSError as err:  # a read-only cache without this module: compile elsewhere
            private = use_private_cache(f"cannot write to the cache folder ({err.strerror})")
            loaded.path = path = private / "kernels" / f"{name}.py"
            _write_module(loaded, source, graph_name, fingerprint)
        try:
            _import_and_warm(loaded, warm)
        except Exception as err:
            problems = purge_numba_files(path, name)
            if not problems:
                raise
            _miss(loaded, f"Numba could not load its cache ({type(err).__name__}: {err})")
            _import_and_warm(loaded, warm)
        # on trial until the code has run and passed its check (Loaded.seal): a process that
        # dies first leaves the trial record, and the next one rebuilds the files
        if trial:
            put_on_trial(path, name)
        else:
            seal_numba_files(path, name)
        _imported[name] = loaded.module
    if not loaded.hit:
        explain(f"miss for graph {graph_name} ({name}): " + "; ".join(loaded.reasons))
    return loaded


def _miss(loaded: Loaded, reason: str) -> None:
    loaded.hit = False
    loaded.reasons.append(reason)


def _write_module(loaded: Loaded, source: str, graph_name: str, fingerprint: str) -> None:
    path = loaded.path
    if path.exists() and path.read_text(errors="replace") == source:
        return
    if path.exists():
        _miss(loaded, "the module file was corrupt or truncated: rewritten")
        purge_numba_files(path, loaded.name)
    else:
        _miss(loaded, _why_new(graph_name, fingerprint, source))
    atomic_write(path, source)
    record = {"module": loaded.name, "kernels": fingerprint[:16], "source": digest(source)[:16]}
    record.update(environment())
    atomic_write(_name_record(graph_name), json.dumps(record, indent=1) + "\n")


def _name_record(graph_name: str) -> pathlib.Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in graph_name)[:80] or "graph"
    return cache_dir() / "kernels" / "names" / f"{safe}.json"


def _why_new(graph_name: str, fingerprint: str, source: str) -> str:
    """What differs from the last module compiled for a graph of this name."""
    try:
        before = json.loads(_name_record(graph_name).read_text())
    except (OSError, ValueError):
        return f"no module for graph {graph_name} in the cache yet"
    now = {"kernels": fingerprint[:16], "source": digest(source)[:16], **environment()}
    changed = [f"{k} {before.get(k)!r} -> {v!r}" for k, v in now.items() if before.get(k) != v]
    what = {"kernels": "the kernel library changed", "source": "the generated code changed"}
    words = [what.get(c.split()[0], c) for c in changed[:4]]
    return "key changed since the last compile of this graph: " + (", ".join(words) or "?")


def import_file(path: pathlib.Path, name: str) -> Any:
    """Import the file at `path` as module `name` (registered in sys.modules, as Numba's
    cache needs to find a function's module again)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import_and_warm(loaded: Loaded, warm: Callable[[Any], bool] | None) -> None:
    problems = check_numba_files(loaded.path, loaded.name)
    for problem in problems:
        _miss(loaded, problem)
    had_cache = bool(numba_groups(loaded.path, loaded.name))
    module = import_file(loaded.path, loaded.name)
    try:
        from_cache = warm(module) if warm is not None else True
    except BaseException:
        del sys.modules[loaded.name]
        raise
    if not from_cache:
        _miss(loaded, _numba_miss_reason(had_cache))
    loaded.module = module


# -- Numba's files ---------------------------------------------------------------------------
def numba_cache_path(py_file: pathlib.Path) -> pathlib.Path | None:
    """The folder where Numba keeps the cache of functions defined in `py_file` (Numba's own
    locators decide: NUMBA_CACHE_DIR, __pycache__ beside the file, or a user-wide folder)."""
    from numba.core.caching import CompileResultCacheImpl

    scope: dict[str, Any] = {}
    exec(compile("def probe():\n    pass\n", str(py_file), "exec"), scope)
    try:
        return pathlib.Path(CompileResultCacheImpl(scope["probe"]).locator.get_cache_path())
    except RuntimeError:  # no locator: Numba cannot cache here at all
        return None


def numba_groups(py_file: pathlib.Path, prefix: str) -> dict[str, list[pathlib.Path]]:
    """Numba's files of each function whose file name starts with `prefix`, by base name
    (`<module>.<function>-<line>.py311`): its index `.nbi` and data files `.<n>.nbc`."""
    folder = numba_cache_path(py_file)
    if folder is None or not folder.is_dir():
        return {}
    groups: dict[str, list[pathlib.Path]] = {}
    for path in sorted(folder.glob(prefix + "*")):
        base = _numba_base(path.name)
        if base is not None:
            groups.setdefault(base, []).append(path)
    return groups


def _numba_base(filename: str) -> str | None:
    if filename.endswith(".nbi"):
        return filename[: -len(".nbi")]
    if filename.endswith(".nbc"):
        stem, _, number = filename[: -len(".nbc")].rpartition(".")
        return stem if number.isdigit() else None
    return None


def _seal_path(files: list[pathlib.Path], base: str) -> pathlib.Path:
    return files[0].parent / (base + SEAL_SUFFIX)


def _file_sum(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_numba_files(py_file: pathlib.Path, prefix: str) -> list[str]:
    """Remove the Numba files (of functions named `prefix`*) that fail their seal or do not
    parse; return what was wrong with each (empty: all is well)."""
    problems = []
    for base, files in numba_groups(py_file, prefix).items():
        problem = _sealed_problem(files, base) or _structure_problem(files)
        if problem:
            problems.append(f"Numba cache of {base}: {problem}: removed, rebuilt")
            _remove(files + [_seal_path(files, base), _trial_path(files, base)])
    return problems


def _sealed_problem(files: list[pathlib.Path], base: str) -> str:
    try:
        sealed = json.loads(_seal_path(files, base).read_text())
    except (OSError, ValueError):
        return _trial_problem(files, base)  # never sealed: on trial, or structure only
    now = {p.name for p in files}
    for name, checksum in sealed.items():
        if name not in now:
            return f"{name} is missing"
        if _file_sum(files[0].parent / name) != checksum:
            return f"{name} differs from the file that worked (corrupt or changed)"
    return ""


def _structure_problem(files: list[pathlib.Path]) -> str:
    """Truncation and garbage show as a pickle that does not parse (parsed, not loaded:
    loading runs code). A flipped bit inside object code parses; the seal catches that."""
    for path in files:
        try:
            data = path.read_bytes()
            if path.suffix == ".nbi":
                data = data[_pickle_length(data) :]
            _pickle_length(data)
        except Exception as err:  # pickletools raises what the garbage leads it to
            return f"{path.name} does not parse ({type(err).__name__}: {err})"
    return ""


def _pickle_length(data: bytes) -> int:
    """Length of the first pickle in `data`; ValueError when it is not a whole pickle."""
    import pickletools  # only when Numba's files are checked

    stop = -1
    for opcode, _, pos in pickletools.genops(data):
        if opcode.name == "STOP":
            stop = pos + 1
    if stop < 0:
        raise ValueError("no STOP opcode")
    return stop


TRIAL_SUFFIX = ".tftrial"
TRIAL_LIMIT_S = 3600  # a trial record this old is a dead process's, wherever it ran


def _trial_path(files: list[pathlib.Path], base: str) -> pathlib.Path:
    return files[0].parent / (base + TRIAL_SUFFIX)


def put_on_trial(py_file: pathlib.Path, prefix: str) -> None:
    """Record that this process is about to run unsealed Numba files (of functions `prefix`*)."""
    record = json.dumps({"pid": os.getpid(), "host": _host(), "time": time.time()})
    for base, files in numba_groups(py_file, prefix).items():
        if not _seal_path(files, base).exists():
            with contextlib.suppress(OSError):  # a read-only cache: nothing is recorded
                atomic_write(_trial_path(files, base), record + "\n")


def _trial_problem(files: list[pathlib.Path], base: str) -> str:
    """Unsealed files that a process loaded and then died running, before they passed their
    check: a corrupt object file crashes every process that loads it, so they are rebuilt."""
    try:
        trial = json.loads(_trial_path(files, base).read_text())
    except (OSError, ValueError):
        return ""
    alive = trial.get("host") == _host() and _pid_alive(trial.get("pid", -1))
    recent = time.time() - float(trial.get("time", 0)) < TRIAL_LIMIT_S
    if trial.get("host") == _host() and alive:
        return ""  # another process is running them now
    if trial.get("host") != _host() and recent:
        return ""  # can't tell from here: only its age says it died
    return "a process that ran them ended before they passed their check (they may be corrupt)"


def _host() -> str:
    import socket

    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def seal_numba_files(py_file: pathlib.Path, prefix: str) -> None:
    """Record checksums of Numba's files for functions named `prefix`*: they just worked."""
    for base, files in numba_groups(py_file, prefix).items():
        sums = {p.name: _file_sum(p) for p in files}
        seal = _seal_path(files, base)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(seal.read_text()) == sums:
                continue
        with contextlib.suppress(OSError):  # a read-only cache still works, unsealed
            atomic_write(seal, json.dumps(sums, indent=1) + "\n")
            _remove([_trial_path(files, base)])


def purge_numba_files(py_file: pathlib.Path, prefix: str) -> list[str]:
    """Remove all Numba files of functions named `prefix`*; return their base names."""
    groups = numba_groups(py_file, prefix)
    for base, files in groups.items():
        _remove(files + [_seal_path(files, base), _trial_path(files, base)])
    return list(groups)


def _numba_miss_reason(had_cache: bool) -> str:
    if not had_cache:
        return "Numba had no compiled code for it (first compile, or its files were removed)"
    return "Numba's index is stale (the module file is newer) or has no entry for this CPU"


def _remove(paths: list[pathlib.Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -- self-check records ----------------------------------------------------------------------
def check_record(key: str) -> pathlib.Path:
    return cache_dir() / "checks" / f"{key}.json"


def checked_before(key: str) -> bool:
    try:
        return json.loads(check_record(key).read_text()).get("passed") is True
    except (OSError, ValueError):
        return False


def record_check(key: str, summary: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        atomic_write(check_record(key), json.dumps({"passed": True, **summary}, indent=1) + "\n")


# -- tilefuse cache info | clear -------------------------------------------------------------
SECTIONS = {
    "kernels": "generated modules",
    "checks": "passed self-checks",
    "reproducers": "reproducers of failed self-checks",
    "locks": "lock files",
}


def info() -> dict[str, Any]:
    """What the cache holds: files and bytes per section, Numba's files for the generated
    modules, what else is kept there (tuning logs, the measured peak) and the environment
    the key is made of."""
    root = cache_dir()
    sections = {name: _usage(root / name) for name in SECTIONS}
    sections["kernels"]["modules"] = len(list((root / "kernels").glob(MODULE_PREFIX + "*.py")))
    sections["kernels"]["libraries"] = len(list((root / "kernels" / "library").glob("*.o")))
    numba = _usage_of(_numba_files(root))
    kept = {p.name: _usage(p) for p in sorted(root.iterdir()) if p.name not in SECTIONS}
    return {
        "path": str(root),
        "sections": sections,
        "numba": {**numba, "path": str(_numba_folder(root) or "")},
        "kept": kept,
        "environment": environment(),
    }


def clear(everything: bool = False) -> dict[str, Any]:
    """Remove what compiling wrote (SECTIONS, and Numba's files for the generated modules);
    tuning logs and measurements stay unless `everything`: they cost minutes to make."""
    root = cache_dir()
    if not is_marked(root):
        from .errors import TilefuseError

        raise TilefuseError(
            f"{root} was not made by tilefuse (it has no {MARKER} of tilefuse's and holds "
            "other files), so `cache clear` deletes nothing there; point TILEFUSE_CACHE_DIR at "
            "a folder of tilefuse's own"
        )
    doomed = [root / name for name in SECTIONS if (root / name).exists()]
    if everything:
        doomed = [p for p in root.iterdir() if p.name != MARKER]
    numba_files = _numba_files(root)
    removed = _usage_of(numba_files + [f for p in doomed for f in _files(p)])
    _remove(numba_files)
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove([path])
    return {"path": str(root), **removed}


def _probe_file(root: pathlib.Path) -> pathlib.Path | None:
    """A module in kernels/: Numba's locators place the cache of every file there alike."""
    return next(iter(sorted((root / "kernels").glob("*.py"))), None)


def _numba_folder(root: pathlib.Path) -> pathlib.Path | None:
    probe = _probe_file(root)
    return numba_cache_path(probe) if probe is not None else None


def _numba_files(root: pathlib.Path) -> list[pathlib.Path]:
    probe = _probe_file(root)
    if probe is None:
        return []
    files = []
    for base, group in numba_groups(probe, MODULE_PREFIX).items():
        extra = [_seal_path(group, base), _trial_path(group, base)]
        files += group + [p for p in extra if p.exists()]
    return files


def _files(path: pathlib.Path) -> list[pathlib.Path]:
    if path.is_file():
        return [path]
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []


def _usage(path: pathlib.Path) -> dict[str, Any]:
    return _usage_of(_files(path))


def _usage_of(files: list[pathlib.Path]) -> dict[str, Any]:
    sizes = []
    for f in files:
        with contextlib.suppress(OSError):
            sizes.append(f.stat().st_size)
    return {"files": len(sizes), "bytes": sum(sizes)}
