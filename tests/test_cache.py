"""The on-disk cache: atomic writes, a lock so that processes compiling one model at once all
succeed, a key that changes with the environment, corrupt or truncated files (generated
modules, Numba's index and data files) detected and rebuilt, TILEFUSE_EXPLAIN_CACHE, and
`tilefuse cache info|clear`. Runs that touch files do so in subprocesses: a corrupt Numba
file that got past the checks would abort the process that loads it."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

import tilefuse as tfu
from tilefuse import cache
from tilefuse.cli import main


def net_code(seed: int) -> str:
    """A network of its own per test (the weights are part of the module's key)."""
    return (
        "tfu.Sequential([tfu.Dense(12, activation='tanh'), tfu.Dense(3)], "
        f"input_dim=6, seed={seed}, name='cached{seed}')"
    )


_COMPILE = """
import sys, time, numpy as np, tilefuse as tfu
start = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
while time.time() < start:  # processes started together begin together
    pass
m = tfu.compile({net}, native={native})
y = m(np.linspace(-1, 1, 30, dtype=np.float32).reshape(5, 6))
print(m.loaded.name, m.loaded.hit, repr(float(y.sum())))
"""


def compile_in_subprocess(
    seed: int,
    explain: bool = False,
    start: float = 0.0,
    cache_dir: str | None = None,
    native: bool = False,
) -> tuple:
    """Compile in a new process; by default with the Numba forward (native=False), whose
    cache files these tests damage."""
    env = {**os.environ, "TILEFUSE_EXPLAIN_CACHE": "1" if explain else "0"}
    if cache_dir:
        env["TILEFUSE_CACHE_DIR"] = cache_dir
    script = _COMPILE.format(net=net_code(seed), native=native)
    result = subprocess.run(
        [sys.executable, "-c", script, str(start)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    name, hit, total = result.stdout.split()
    return name, hit == "True", float(total), result.stderr


def numba_files(module_name: str) -> list[pathlib.Path]:
    probe = cache.cache_dir() / "kernels" / f"{module_name}.py"
    return [p for files in cache.numba_groups(probe, module_name).values() for p in files]


# -- atomic writes ---------------------------------------------------------------------------
def test_atomic_write_replaces_whole_files_and_leaves_no_temporaries(tmp_path, monkeypatch):
    path = tmp_path / "a" / "f.txt"
    cache.atomic_write(path, "one")
    cache.atomic_write(path, b"two")
    assert path.read_text() == "two"

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        cache.atomic_write(path, "three")
    assert path.read_text() == "two" and sorted(os.listdir(path.parent)) == ["f.txt"]


# -- the lock --------------------------------------------------------------------------------
@pytest.mark.parametrize("native", [False, True])
def test_processes_compiling_one_model_at_once_all_succeed(native):
    start = time.time() + 3.0  # after the interpreters and imports are up
    env = {**os.environ, "TILEFUSE_EXPLAIN_CACHE": "0"}
    script = _COMPILE.format(net=net_code(2001 + 40 * native), native=native)
    children = [
        subprocess.Popen([sys.executable, "-c", script, str(start)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]  # fmt: skip
    results = [c.communicate(timeout=300) for c in children]
    assert [c.returncode for c in children] == [0, 0, 0], [r[1][-2000:] for r in results]
    lines = [r[0].split() for r in results]
    assert len({(name, total) for name, _, total in lines}) == 1  # one module, one answer
    assert sorted(hit for _, hit, _ in lines) == ["False", "True", "True"]  # built once


def test_locked_excludes_other_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))
    script = (
        "import time, tilefuse.cache as c\n"
        "with c.locked('x'):\n    print(time.time(), flush=True)\n"
    )
    env = {**os.environ, "TILEFUSE_CACHE_DIR": str(tmp_path)}
    with cache.locked("x"):
        child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                 text=True, env=env)  # fmt: skip
        time.sleep(2.0)
        released = time.time()
    entered = float(child.communicate(timeout=60)[0])
    assert entered >= released


# -- the key ---------------------------------------------------------------------------------
def test_the_key_changes_with_versions_and_cpu_features(monkeypatch):
    source, fingerprint = "def forward(): pass\n", "kernels"
    key = cache.module_key(source, fingerprint)
    real = cache.environment()
    assert set(real) >= {"tilefuse", "numba", "llvmlite", "cpu", "cpu_features"}
    for field in ("tilefuse", "numba", "llvmlite", "cpu", "cpu_features"):
        monkeypatch.setattr(cache, "environment", lambda f=field: {**real, f: "other"})
        assert cache.module_key(source, fingerprint) != key, field
    monkeypatch.setattr(cache, "environment", lambda: real)
    assert cache.module_key(source, fingerprint) == key
    assert cache.module_key(source, "other kernels") != key


def test_explain_says_why_a_lookup_missed(monkeypatch, capsys):
    _, _, _, first = compile_in_subprocess(2002, explain=True)
    assert "no module for graph cached2002 in the cache yet" in first
    assert "Numba had no compiled code for it" in first
    _, hit, _, again = compile_in_subprocess(2002, explain=True)
    assert hit and "tilefuse cache" not in again
    # the same graph name, other CPU features: the key changed, and the message says what
    monkeypatch.setenv("TILEFUSE_EXPLAIN_CACHE", "1")
    real = cache.environment()
    monkeypatch.setattr(cache, "environment", lambda: {**real, "cpu_features": "+other"})
    tfu.compile(eval(net_code(2002)), check=False, native=False)
    err = capsys.readouterr().err
    assert "key changed since the last compile of this graph: cpu_features '" in err


# -- corrupt files ---------------------------------------------------------------------------
def test_a_truncated_generated_module_is_rewritten():
    name, _, total, _ = compile_in_subprocess(2003)
    path = cache.cache_dir() / "kernels" / f"{name}.py"
    path.write_text(path.read_text()[:100])
    again, hit, total_again, err = compile_in_subprocess(2003, explain=True)
    assert again == name and not hit and total_again == total
    assert "the module file was corrupt or truncated: rewritten" in err


DAMAGES = ["truncate index", "garbage index", "truncate data", "zero data", "flip a bit in data",
           "delete data"]  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES)
def test_corrupt_numba_files_are_detected_and_rebuilt(damage):
    seed = 2010 + DAMAGES.index(damage)
    name, _, total, _ = compile_in_subprocess(seed)
    files = numba_files(name)
    index = next(p for p in files if p.suffix == ".nbi")
    data = next(p for p in files if p.suffix == ".nbc")
    damage_file(index if "index" in damage else data, damage)
    again, hit, total_again, err = compile_in_subprocess(seed, explain=True)
    assert (again, total_again) == (name, total) and not hit
    assert "removed, rebuilt" in err or "Numba had no compiled code" in err, err
    _, hit, total_third, _ = compile_in_subprocess(seed)  # and the rebuilt files work
    assert hit and total_third == total


def damage_file(path: pathlib.Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how.startswith("truncate"):
        data = data[: len(data) // 3]
    elif how.startswith("garbage"):
        data = bytearray(b"\x80\x05garbage" * 4)
    elif how.startswith("zero"):
        data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # LLVM aborts on this one
    elif how.startswith("flip"):
        data[len(data) // 2] ^= 0x10
    elif how.startswith("delete"):
        path.unlink()
        return
    path.write_bytes(bytes(data))


def test_unsealed_truncated_files_are_caught_by_their_structure():
    name, _, total, _ = compile_in_subprocess(2004)
    for path in numba_files(name):
        if path.suffix == ".nbc":
            damage_file(path, "truncate")
    for seal in numba_files(name)[0].parent.glob(name + "*" + cache.SEAL_SUFFIX):
        seal.unlink()  # as if sealing had never happened
    again, hit, total_again, err = compile_in_subprocess(2004, explain=True)
    assert not hit and total_again == total and "does not parse" in err


@pytest.mark.parametrize("damage", ["zero", "truncate"])
def test_a_corrupt_kernel_library_is_rebuilt(tmp_path, damage):
    """In a cache of its own: other test processes load the shared one meanwhile."""
    compile_in_subprocess(2005, cache_dir=str(tmp_path))
    (library,) = (tmp_path / "kernels" / "library").glob("tilefuse_kernels_float32*.o")
    damage_file(library, damage)
    _, _, _, err = compile_in_subprocess(2006, explain=True, cache_dir=str(tmp_path))
    assert library.name in err and "removed, rebuilt" in err
    assert library.stat().st_size > 1000  # rebuilt whole
    _, _, _, err = compile_in_subprocess(2006, explain=True, cache_dir=str(tmp_path))
    assert library.name not in err


# -- tilefuse cache info | clear ---------------------------------------------------------------
def test_cache_info_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))
    net = eval(net_code(2007))
    model = tfu.compile(net, native=False)
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / "log.json").write_text("{}")
    assert main(["cache", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(tmp_path) and info["sections"]["kernels"]["modules"] >= 1
    assert info["sections"]["checks"]["files"] == 1 and info["numba"]["files"] >= 2
    assert info["kept"]["tuning"]["files"] == 1
    assert main(["cache", "info"]) == 0
    text = capsys.readouterr().out
    assert "kernels" in text and "kept by clear" in text and "numba" in text
    assert main(["cache", "clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert not (tmp_path / "kernels").exists() and (tmp_path / "tuning" / "log.json").exists()
    assert not numba_files(model.loaded.name)
    x = np.ones((2, 6), np.float32)
    np.testing.assert_allclose(tfu.compile(net)(x), model(x))  # still works
    assert main(["cache", "clear", "--all"]) == 0
    capsys.readouterr()
    assert list(tmp_path.iterdir()) == [tmp_path / cache.MARKER]  # still tilefuse's


def test_clear_deletes_nothing_in_a_folder_tilefuse_did_not_make(tmp_path, monkeypatch, capsys):
    """TILEFUSE_CACHE_DIR at an ordinary folder: `cache clear` deleted its kernels/ and
    checks/, and with --all everything in it."""
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "mine.py").write_text("precious = 1\n")
    (tmp_path / "notes.txt").write_text("precious\n")
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))
    for args in (["cache", "clear"], ["cache", "clear", "--all"]):
        with pytest.raises(tfu.TilefuseError, match="was not made by tilefuse"):
            cache.clear(everything="--all" in args)
        assert main(args) != 0
        assert "was not made by tilefuse" in capsys.readouterr().err
    assert (tmp_path / "kernels" / "mine.py").exists() and (tmp_path / "notes.txt").exists()
    assert not (tmp_path / cache.MARKER).exists()


def test_a_new_or_empty_cache_folder_gets_the_marker(tmp_path, monkeypatch):
    fresh = tmp_path / "new" / "cache"
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(fresh))
    assert cache.cache_dir() == fresh and cache.is_marked(fresh)
    text = (fresh / cache.MARKER).read_text()
    assert text.startswith("Signature: 8a477f597d28d172789f06886806bc55")
    old = tmp_path / "old"  # made by an older tilefuse: only what tilefuse writes
    (old / "kernels").mkdir(parents=True)
    (old / "roofline.json").write_text("{}")
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(old))
    assert cache.is_marked(cache.cache_dir())


def test_a_cache_variable_that_names_a_file_says_so(tmp_path, monkeypatch):
    path = tmp_path / "a-file"
    path.write_text("x")
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(path))
    with pytest.raises(tfu.TilefuseError, match="TILEFUSE_CACHE_DIR .*a-file.* is a file"):
        cache.cache_dir()


_READ_ONLY = """
import os, sys, warnings, numpy as np, tilefuse as tfu
warnings.simplefilter("always")
net = {net}
x = np.linspace(-1, 1, 30, dtype=np.float32).reshape(5, 6)
with warnings.catch_warnings(record=True) as caught:
    m = tfu.compile(net)
    y = m(x)
print(m.loaded.hit, float(y.sum()), "|".join(str(w.message) for w in caught))
"""


def test_a_read_only_cache_still_serves_and_compiles(tmp_path):
    """As an unprivileged user: a cache folder it cannot write. A fully cached model loads
    (no lock needed); a new one compiles into a private temporary cache, with a warning."""
    import shutil

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to run a process as another user")
    import tempfile

    tmp_path = pathlib.Path(tempfile.mkdtemp(prefix="tilefuse-ro-"))  # pytest's is 0700
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(tmp_path, 0o755)
    env = {**os.environ, "TILEFUSE_CACHE_DIR": str(folder), "NUMBA_CACHE_DIR": str(folder / "nb"),
           "HOME": str(tmp_path), "TILEFUSE_EXPLAIN_CACHE": "0"}  # fmt: skip
    run = [sys.executable, "-c"]
    script = _READ_ONLY.format(net=net_code(2020))
    first = subprocess.run(run + [script], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *run]
    numba_dir = tmp_path / "nobody-numba"  # Numba's own cache must be writable (its rule)
    numba_dir.mkdir()
    os.chown(numba_dir, 65534, 65534)
    env["NUMBA_CACHE_DIR"] = str(numba_dir)
    again = subprocess.run(as_nobody + [script], env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    hit, total, *_ = again.stdout.strip().split(" ", 2)  # then any warnings
    assert hit == "True" and float(total) == float(first.stdout.split()[1])
    # a network of another shape: new code (weights alone share the native forward's code)
    other_net = "tfu.Sequential([tfu.Dense(5)], input_dim=6, seed=2021, name='other')"
    other = subprocess.run(as_nobody + [_READ_ONLY.format(net=other_net)], env=env,
                           capture_output=True, text=True)  # fmt: skip
    assert other.returncode == 0, other.stderr[-3000:]
    assert "private temporary cache" in other.stdout
    shutil.rmtree(tmp_path, ignore_errors=True)


_NO_CALL = """
import numpy as np, tilefuse as tfu
m = tfu.compile({net}, check=False, native=False)
print(m.loaded.name)
"""


def test_numba_files_are_sealed_only_after_the_code_ran_and_passed():
    """A corrupt file that got sealed before its first call crashed every later process:
    now files stay on trial until the code ran (and passed its check), and files left on
    trial by a process that died are rebuilt."""
    script = _NO_CALL.format(net=net_code(2030))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    name = result.stdout.strip()
    folder = numba_files(name)[0].parent
    assert not list(folder.glob(name + "*" + cache.SEAL_SUFFIX))
    assert list(folder.glob(name + "*" + cache.TRIAL_SUFFIX))  # its process is gone now
    again, hit, _, err = compile_in_subprocess(2030, explain=True)
    assert again == name and not hit
    assert "ended before they passed their check" in err, err
    assert list(folder.glob(name + "*" + cache.SEAL_SUFFIX))  # checked and called: sealed
    assert not list(folder.glob(name + "*" + cache.TRIAL_SUFFIX))
    _, hit, _, _ = compile_in_subprocess(2030)
    assert hit
