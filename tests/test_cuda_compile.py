"""The cuda backend's kernels compiled for real GPUs without one: PTX from NVVM, then ptxas's
registers and spills and the SASS of the GEMM's k loop (tilefuse.backends.cuda_inspect).

These need the CUDA toolkit's NVVM, ptxas and nvdisasm, which the test extra installs from
pip's NVIDIA wheels; without them the tests skip, except on CI (CI=true), where they fail.
The compiles run in a subprocess: this suite's numba.cuda is the simulator.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tilefuse.backends.cuda_inspect import LoopMix, loop_mix, parse_cc
from tilefuse.errors import TilefuseError

_COMPILE = r"""
import json
import tilefuse as tfu
from tilefuse.passes import run_pipeline
from tilefuse.backends import cuda_inspect as ci
report = {}
cases = [("f32", "tile_cuda"), ("f64", "tile_cuda"),
         ("f32", "tile_cuda{bm=32,bn=16,bk=6,tm=4,tn=2}")]  # ragged slices
for dtype, pipeline in cases:
    net = tfu.Sequential([tfu.Dense(4096, activation="sigmoid")], input_dim=4096, seed=0,
                         dtype=dtype)
    g = run_pipeline(net.graph(), f"canonicalize,fuse,{pipeline}")
    for cc in [(9, 0), (8, 0)] if (dtype, pipeline) == ("f32", "tile_cuda") else [(9, 0)]:
        for name, ptx in ci.kernel_ptx(g, cc).items():
            info = ci.assemble(ptx, cc)
            mix = ci.loop_mix(ci.disassemble(info.cubin))
            report[f"{dtype} {pipeline} {name} sm_{cc[0]}{cc[1]}"] = {
                "registers": info.registers, "spilled": info.spill_stores + info.spill_loads,
                "fma_share": mix.fma_share, "fma": mix.fma, "lds": mix.opcodes["LDS"],
                "local": mix.opcodes["LDL"] + mix.opcodes["STL"], "ptx_has_fma":
                ("fma.rn.f32" if dtype == "f32" else "fma.rn.f64") in ptx}
print(json.dumps(report))
"""


def toolkit_or_skip() -> None:
    from tilefuse.backends.cuda_inspect import tool

    try:
        tool("ptxas"), tool("nvdisasm")
        import nvidia.cu13  # noqa: F401  (NVVM and NVRTC from pip's wheels)
    except (TilefuseError, ImportError) as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"missing on CI: the CUDA toolkit wheels (make test installs them): {err}")
        pytest.skip(f"the CUDA toolkit is not installed: {err}")


@pytest.fixture(scope="module")
def compiled():
    toolkit_or_skip()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_every_kernel_assembles_without_spills(compiled):
    assert len(compiled) == 6, sorted(compiled)
    for name, k in compiled.items():
        assert k["spilled"] == 0 and k["local"] == 0, (name, k)  # the k loop stays in registers
        assert k["registers"] <= 255 and k["ptx_has_fma"], (name, k)


def test_large_batch_kernel_keeps_the_fma_units_busy(compiled):
    """128 x 128 blocks of 8 x 8 accumulators a thread: 512 FMAs a k step of 8, and most of
    what the k loop issues is FMA. A thread's 8 rows and 8 columns are contiguous in shared
    memory, so each k step reads them with 4 LDS.128 rather than 16 LDS."""
    large = compiled["f32 tile_cuda dense_0_large sm_90"]
    planned = compiled["f32 tile_cuda dense_0 sm_90"]
    assert large["fma"] == 8 * 8 * 8 and planned["fma"] == 16 * 4 * 4
    assert large["lds"] == 8 * (2 + 2) and planned["lds"] == 16 * (1 + 1), planned
    assert large["fma_share"] >= 0.70, large
    assert planned["fma_share"] >= 0.50, planned
    assert compiled["f32 tile_cuda dense_0_large sm_80"]["fma_share"] >= 0.70
    assert compiled["f64 tile_cuda dense_0 sm_90"]["fma"] == 8 * 4 * 4  # DFMA: 64 x 64, bk 8


def test_ragged_slices_compile(compiled):
    ragged = compiled["f32 tile_cuda{bm=32,bn=16,bk=6,tm=4,tn=2} dense_0 sm_90"]
    assert ragged["fma"] == 6 * 4 * 2


def test_cli_emits_ptx_sass_and_resources(tmp_path):
    toolkit_or_skip()
    net = tmp_path / "net.py"
    net.write_text(
        "import tilefuse as tfu\n"
        "net = tfu.Sequential([tfu.Dense(64, activation='relu')], input_dim=32, seed=0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}

    def show(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "tilefuse", "show", str(net), *args],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert ".target sm_80" in show("--emit", "ptx", "--cc", "8.0")
    assert "FFMA" in show("--emit", "sass")
    resources = show("--emit", "resources")
    assert "dense_0 (sm_90):" in resources and "registers" in resources
    assert "k loop:" in resources and "FMA" in resources


# -- without the toolkit -------------------------------------------------------------------------
_SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   STS [R3], R2 ;
        /*0030*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_1:
        /*0040*/                   LDS R5, [R3] ;
        /*0050*/                   FFMA R6, R5, R5, R6 ;
        /*0060*/                   FFMA R7, R5, R5, R7 ;
        /*0070*/               @P0 BRA `(.L_x_1) ;
        /*0080*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0090*/              @!P1 BRA `(.L_x_0) ;
        /*00a0*/                   EXIT ;
"""


def test_loop_mix_takes_the_loop_around_the_barriers():
    mix = loop_mix(_SASS)
    assert isinstance(mix, LoopMix)
    assert mix.opcodes == {"LDG": 1, "STS": 1, "BAR": 2, "LDS": 1, "FFMA": 2, "BRA": 2}
    assert mix.fma == 2 and mix.total == 9 and "2 FMA (22%)" in mix.summary()
    with pytest.raises(TilefuseError, match="no barrier"):
        loop_mix(_SASS.replace("BAR.SYNC", "NOP"))


@pytest.mark.parametrize(("text", "cc"), [("9.0", (9, 0)), ("sm_80", (8, 0)), ("120", (12, 0))])
def test_parse_cc(text, cc):
    assert parse_cc(text) == cc


def test_parse_cc_names_the_legal_form():
    with pytest.raises(TilefuseError, match="major.minor such as 9.0"):
        parse_cc("hopper")
