"""The persistent object cache: keys, hits across processes, damaged entries,
concurrent writers, the symbol index and the MCJIT adapter.

Every module here is compiled by llvmlite and the objects are linked by rtdyld
(or by MCJIT) and called; "no compile happened" is checked both by the
counters and by making LLVM's object emitter raise.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import llvmlite.binding as llvm
import pytest

import rtdyld
from rtdyld.cache import ObjectCache, cache_clear_main, cache_stats_main, explain_undefined

REPO = Path(__file__).resolve().parent.parent


def lib_ir(bump: int = 0) -> str:
    """``f(i) = table[i] * i + bump``: code plus data reached by a relocation."""
    return textwrap.dedent(f"""\
        @table = global [4 x i32] [i32 3, i32 5, i32 7, i32 11]

        define i32 @f(i32 %i) {{
          %p = getelementptr [4 x i32], ptr @table, i32 0, i32 %i
          %v = load i32, ptr %p
          %w = mul i32 %v, %i
          %r = add i32 %w, {bump}
          ret i32 %r
        }}
        """)


def expected(i: int, bump: int = 0) -> int:
    return [3, 5, 7, 11][i] * i + bump


USER_IR = textwrap.dedent("""\
    declare i32 @f(i32)

    define i32 @g(i32 %x) {
      %a = call i32 @f(i32 %x)
      %b = add i32 %a, 100
      ret i32 %b
    }
    """)


def link_and_call(data: bytes, name: str, arg: int) -> int:
    ln = rtdyld.Linker()
    ln.add_object(data, name=name)
    with ln.finalize():
        return ln.function("f", "int(int)")(arg)


def entry_paths(directory) -> list[Path]:
    return sorted(Path(directory).glob("*.obj"))


@pytest.fixture
def no_emit(monkeypatch):
    """Make any LLVM object emission fail."""

    def refuse(self, module):
        raise AssertionError("llvmlite compiled a module on a cache hit")

    def arm():
        monkeypatch.setattr(llvm.TargetMachine, "emit_object", refuse)

    return arm


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def run_python(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True,
                         env=child_env(), timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


# --- hits and misses ----------------------------------------------------------------


def test_miss_then_hit_without_compiling(tmp_path, no_emit):
    cache = ObjectCache(tmp_path)
    data, name, hit = cache.compile(lib_ir(), name="lib.ll")
    assert (name, hit) == ("lib.ll", False)
    assert (cache.misses, cache.hits, cache.compiles) == (1, 0, 1)
    assert link_and_call(data, name, 3) == expected(3)

    no_emit()
    again, name2, hit2 = cache.compile(lib_ir(), name="lib.ll")
    assert (name2, hit2) == ("lib.ll", True)
    assert again == data
    assert (cache.misses, cache.hits, cache.compiles) == (1, 1, 1)
    assert link_and_call(again, name2, 2) == expected(2)


def test_hit_from_fresh_instance_and_bitcode_input(tmp_path, no_emit):
    mod = llvm.parse_assembly(lib_ir())
    data, _, hit = ObjectCache(tmp_path).compile(mod.as_bitcode(), name="lib.bc")
    assert not hit
    no_emit()
    other = ObjectCache(tmp_path)
    again, _, hit = other.compile(lib_ir(), name="lib.ll")
    assert hit and again == data
    assert other.compiles == 0


SECOND_PROCESS = """
import hashlib, json, sys
import rtdyld
from rtdyld.cache import ObjectCache

cache = ObjectCache(sys.argv[1])
data, name, hit = cache.compile(open(sys.argv[2]).read(), name="lib.ll")
ln = rtdyld.Linker()
ln.add_object(data, name=name)
ln.finalize()
print(json.dumps({"hit": hit, "compiles": cache.compiles, "sha": hashlib.sha256(data).hexdigest(),
                  "result": ln.function("f", "int(int)")(3)}))
"""


def test_second_process_hits(tmp_path):
    src = tmp_path / "lib.ll"
    src.write_text(lib_ir(7))
    cache_dir = tmp_path / "cache"
    data, name, hit = ObjectCache(cache_dir).compile(lib_ir(7), name="lib.ll")
    assert not hit

    child = run_python(SECOND_PROCESS, str(cache_dir), str(src))
    assert (child["hit"], child["compiles"]) == (True, 0)
    assert child["sha"] == hashlib.sha256(data).hexdigest()
    assert child["result"] == link_and_call(data, name, 3) == expected(3, 7)


# --- keys ---------------------------------------------------------------------------


def test_settings_change_the_key(tmp_path):
    cache = ObjectCache(tmp_path)
    base = cache.key(lib_ir())
    variants = {
        "opt": cache.key(lib_ir(), opt=0),
        "code_model": cache.key(lib_ir(), code_model="large"),
        "reloc": cache.key(lib_ir(), reloc="static"),
        "triple": cache.key(lib_ir(), triple="x86_64-apple-macosx10.15"),
        "cpu": cache.key(lib_ir(), cpu="skylake"),
        "features": cache.key(lib_ir(), features="+avx2"),
        "module": cache.key(lib_ir(1)),
    }
    assert base not in variants.values()
    assert len(set(variants.values())) == len(variants)
    assert cache.key(lib_ir(), name="another name") == base


def test_settings_make_separate_entries(tmp_path):
    cache = ObjectCache(tmp_path)
    results = []
    for kw in ({}, {"opt": 0}, {"code_model": "large"}):
        data, name, hit = cache.compile(lib_ir(), name="lib.ll", **kw)
        assert not hit
        results.append(link_and_call(data, name, 3))
    assert results == [expected(3)] * 3
    assert len(entry_paths(tmp_path)) == 3
    assert cache.compile(lib_ir(), name="lib.ll", code_model="large")[2]


# --- damaged entries -------------------------------------------------------------


def flip_middle(b: bytes) -> bytes:
    i = len(b) // 2
    return b[:i] + bytes([b[i] ^ 0x40]) + b[i + 1:]


DAMAGE = {
    "flipped object byte": flip_middle,
    "flipped magic": lambda b: b"X" + b[1:],
    "truncated to half": lambda b: b[: len(b) // 2],
    "truncated inside header": lambda b: b[:10],
    "empty": lambda b: b"",
    "extra byte": lambda b: b + b"\0",
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_entry_is_recompiled(tmp_path, damage):
    data, _, _ = ObjectCache(tmp_path).compile(lib_ir(), name="lib.ll")
    [path] = entry_paths(tmp_path)
    path.write_bytes(damage(path.read_bytes()))

    cache = ObjectCache(tmp_path)
    again, name, hit = cache.compile(lib_ir(), name="lib.ll")
    assert not hit
    assert (cache.corrupt, cache.compiles) == (1, 1)
    assert again == data
    assert link_and_call(again, name, 1) == expected(1)

    fresh = ObjectCache(tmp_path)
    assert fresh.compile(lib_ir(), name="lib.ll")[2]
    assert fresh.corrupt == 0


def test_entry_under_the_wrong_key_is_refused(tmp_path):
    cache = ObjectCache(tmp_path)
    cache.compile(lib_ir(1), name="one.ll")
    cache.compile(lib_ir(2), name="two.ll")
    one, two = (tmp_path / (cache.key(lib_ir(b)) + ".obj") for b in (1, 2))
    one.write_bytes(two.read_bytes())

    again, name, hit = cache.compile(lib_ir(1), name="one.ll")
    assert not hit and cache.corrupt == 1
    assert link_and_call(again, name, 2) == expected(2, 1)


# --- concurrent writers ----------------------------------------------------------

WRITER = """
import json, sys
from rtdyld.cache import ObjectCache

cache = ObjectCache(sys.argv[1])
modules = json.load(open(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()
hits = [cache.compile(text, name=name)[2] for name, text in modules]
print(json.dumps({"hits": hits, "corrupt": cache.corrupt, "compiles": cache.compiles}))
"""


def test_concurrent_writers_leave_valid_entries(tmp_path, no_emit):
    n = 12
    cache_dir = tmp_path / "cache"
    modules = tmp_path / "modules.json"
    modules.write_text(json.dumps([(f"m{b}.ll", lib_ir(b)) for b in range(n)]))
    args = [sys.executable, "-c", WRITER, str(cache_dir), str(modules)]
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=child_env()) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        reports.append(json.loads(out.splitlines()[-1]))
    assert all(r["corrupt"] == 0 for r in reports)
    assert sum(r["compiles"] for r in reports) >= n

    assert len(entry_paths(cache_dir)) == n
    assert not [p for p in cache_dir.iterdir() if p.name.startswith(".tmp-")]
    no_emit()
    cache = ObjectCache(cache_dir)
    for b in range(n):
        data, name, hit = cache.compile(lib_ir(b), name=f"m{b}.ll")
        assert hit
        assert link_and_call(data, name, 3) == expected(3, b)
    assert cache.corrupt == 0
    assert cache.definer_of("f") in {f"m{b}.ll" for b in range(n)}


# --- which module defined a symbol ----------------------------------------------------


def test_definer_of_names_the_module(tmp_path):
    cache = ObjectCache(tmp_path)
    lib, lib_name, _ = cache.compile(lib_ir(), name="lib.ll")
    user, user_name, _ = cache.compile(USER_IR, name="user.ll")
    assert cache.definer_of("f") == "lib.ll"
    assert cache.definer_of("table") == "lib.ll"
    assert cache.definer_of("g") == "user.ll"
    assert ObjectCache(tmp_path).definer_of("g") == "user.ll"
    assert cache.definer_of("nobody") is None

    ln = rtdyld.Linker()
    ln.add_object(lib, name=lib_name)
    ln.add_object(user, name=user_name)
    with ln.finalize():
        assert ln.function("g", "int(int)")(2) == expected(2) + 100


def test_undefined_symbol_names_the_cached_definer(tmp_path):
    cache = ObjectCache(tmp_path)
    cache.compile(lib_ir(), name="lib.ll")
    user, user_name, _ = ObjectCache(tmp_path).compile(USER_IR, name="user.ll")

    ln = rtdyld.Linker()
    ln.add_object(user, name=user_name)
    with pytest.raises(rtdyld.UndefinedSymbolError) as info:
        ln.finalize()
    err = explain_undefined(info.value, [cache])
    assert isinstance(err, rtdyld.UndefinedSymbolError)
    assert err.missing == info.value.missing
    assert str(err).startswith(str(info.value))
    assert "'f' used to be defined by module 'lib.ll'" in str(err)
    assert str(tmp_path) in str(err)

    empty = ObjectCache(tmp_path / "empty")
    assert explain_undefined(info.value, [empty]) is info.value


def test_index_follows_the_latest_name(tmp_path):
    cache = ObjectCache(tmp_path)
    cache.compile(lib_ir(), name="old.ll")
    assert cache.compile(lib_ir(), name="new.ll")[2]
    assert ObjectCache(tmp_path).definer_of("f") == "new.ll"


# --- stats, clear and the command-line helpers -------------------------------------


def test_stats_and_clear(tmp_path):
    cache = ObjectCache(tmp_path)
    cache.compile(lib_ir(1), name="one.ll")
    cache.compile(lib_ir(2), name="two.ll")
    cache.compile(lib_ir(1), name="one.ll")
    keep = tmp_path / "notes.txt"
    keep.write_text("not the cache's")

    s = cache.stats()
    size = sum(p.stat().st_size for p in entry_paths(tmp_path))
    assert s == {"directory": str(tmp_path), "entries": 2, "bytes": size, "hits": 1, "misses": 2,
                 "corrupt": 0, "compiles": 2, "write_errors": 0}
    assert cache_stats_main(tmp_path) == f"{tmp_path}: 2 entries, {size} bytes"

    assert cache_clear_main(tmp_path) == f"{tmp_path}: removed 2 entries"
    assert cache.stats()["entries"] == 0
    assert cache.definer_of("f") is None
    assert keep.read_text() == "not the cache's"
    assert not cache.compile(lib_ir(1), name="one.ll")[2]
    assert cache.clear() == 1


def test_cli_helpers_on_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(rtdyld.UsageError):
        cache_stats_main(missing)
    assert "nothing to clear" in cache_clear_main(missing)
    assert not missing.exists()


# --- llvmlite's MCJIT object cache --------------------------------------------------


def mcjit_run(hooks, calls: list[str]) -> int:
    """Build an MCJIT engine for lib_ir() with the cache hooks, call f(3)."""
    notify, getbuffer = hooks

    def counted_notify(module, buf):
        calls.append(module.name)
        notify(module, buf)

    mod = llvm.parse_assembly(lib_ir(5))
    mod.name = "jitted"
    tm = llvm.Target.from_default_triple().create_target_machine(opt=1)
    ee = llvm.create_mcjit_compiler(mod, tm)
    ee.set_object_cache(counted_notify, getbuffer)
    ee.finalize_object()
    f = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(ee.get_function_address("f"))
    return f(3)


def test_mcjit_engine_reuses_cached_object(tmp_path):
    cache = ObjectCache(tmp_path)
    calls: list[str] = []
    assert mcjit_run(cache.llvmlite_hooks(opt=1), calls) == expected(3, 5)
    assert calls == ["jitted"]
    assert (cache.misses, cache.hits, cache.compiles) == (1, 0, 1)
    assert len(entry_paths(tmp_path)) == 1

    other = ObjectCache(tmp_path)
    assert mcjit_run(other.llvmlite_hooks(opt=1), calls) == expected(3, 5)
    assert calls == ["jitted"]
    assert (other.misses, other.hits, other.compiles) == (0, 1, 0)
    assert other.definer_of("f") == "jitted"

    # Other machine settings are another key: the engine compiles again.
    assert mcjit_run(other.llvmlite_hooks(opt=2), calls) == expected(3, 5)
    assert calls == ["jitted", "jitted"]
    assert len(entry_paths(tmp_path)) == 2


def test_mcjit_hooks_reject_unknown_machine_arguments(tmp_path):
    with pytest.raises(rtdyld.UsageError, match="code_model"):
        ObjectCache(tmp_path).llvmlite_hooks(code_model="small")


# --- through the linker ------------------------------------------------------------


def test_linker_add_module_uses_the_cache(tmp_path, no_emit):
    cache = ObjectCache(tmp_path)
    for again in (False, True):
        if again:
            no_emit()
        ln = rtdyld.Linker()
        ln.add_module(lib_ir(4), name="lib.ll", cache=cache)
        ln.add_module(USER_IR, name="user.ll", cache=cache)
        with ln.finalize():
            assert ln.function("g", "int(int)")(1) == expected(1, 4) + 100
    assert (cache.misses, cache.hits, cache.compiles) == (2, 2, 2)


def test_command_line_run_with_cache_then_stats_and_clear(tmp_path):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    cache_dir = tmp_path / "objcache"

    def rtdyld(*args):
        return subprocess.run([sys.executable, "-m", "rtdyld", *args], cwd=repo, capture_output=True, text=True,
                              check=False)

    for _ in range(2):
        run = rtdyld("run", "--cache", str(cache_dir), "fixtures/hello.ll")
        assert run.returncode == 0, run.stderr
        assert run.stdout == "hello from rtdyld!\n"
    assert len(list(cache_dir.glob("*.obj"))) == 1
    stats = rtdyld("cache", "stats", str(cache_dir))
    assert stats.returncode == 0 and "1 entry" in stats.stdout
    cleared = rtdyld("cache", "clear", str(cache_dir))
    assert cleared.returncode == 0 and "removed 1 entry" in cleared.stdout
    assert not list(cache_dir.glob("*.obj"))
