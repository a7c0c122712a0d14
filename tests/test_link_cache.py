"""The link cache: a warm link equals the cold one, and nothing stale is ever used.

Each test links a tiny program against a tiny archive twice with the same
cache directory — in this process or in fresh ones — and checks what the
warm link gives (calls, symbols, bytes, initializers, removal), or changes
one thing between the links and checks the cache misses and the result is
the new one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import cffi
import numpy as np
import pytest
from archive_tools import build_gnu_archive, compile_c
from fixtures_build import REPO

import rtdyld
from rtdyld import Linker
from rtdyld.linkcache import LinkCache
from rtdyld.linkcache.container import unpack
from rtdyld.x86_64.edges import WIDTH

CFLAGS = ("-O2", "-fPIC")
ffi = cffi.FFI()

PROG = r"""
#include <stdlib.h>
#include <string.h>
extern int helper(int);
extern int user_value;
extern int *slots[];
int ctor_ran;
__attribute__((constructor)) static void boot(void) { ctor_ran = 40 + (int)strlen("ab"); }
int run(int x) { return helper(x) + *slots[1] + atoi("5") * 1000  /* glibc: strtol */; }
int get_user(void) { return user_value; }
int get_ctor(void) { return ctor_ran; }
"""

HELPER = r"""
int counter = 5;
int helper(int x) { return x * %d + counter; }
"""

SLOTS = r"""
extern int counter;
static int local_a = 11, local_b = 22;
int *slots[] = { &local_a, &local_b, &counter };
"""

UNUSED = r"""
int never_pulled(void) { return 1; }
"""


def _program(tmp: Path, factor: int = 3, prog: str = PROG) -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    p = compile_c(prog, tmp / "prog.o", *CFLAGS)
    members = [
        compile_c(HELPER % factor, tmp / "helper.o", *CFLAGS),
        compile_c(SLOTS, tmp / "slots.o", *CFLAGS),
        compile_c(UNUSED, tmp / "unused.o", *CFLAGS),
    ]
    ar = tmp / "libsmall.a"
    if ar.exists():
        ar.unlink()
    build_gnu_archive(ar, members)
    return p, ar


@pytest.fixture
def user_value():
    buf = ffi.new("int *", 7)
    return buf, int(ffi.cast("uintptr_t", buf))


def _link(cache, prog: Path, ar: Path, user_address: int, extra=None):
    ln = Linker(link_cache=cache)
    ln.define("user_value", user_address)
    if extra:
        extra(ln)
    ln.add_object(prog)
    ln.add_archive(ar)
    return ln, ln.finalize()


def _reference(prog: Path, ar: Path, user_address: int, extra=None) -> tuple[int, int, int]:
    """What a link without the cache gives."""
    ln, _ = _link(False, prog, ar, user_address, extra)
    try:
        return _calls(ln)
    finally:
        ln.close()


def _calls(ln) -> tuple[int, int, int]:
    return (ln.function("run", "int(int)")(4), ln.function("get_user", "int(void)")(),
            ln.function("get_ctor", "int(void)")())


def _outcome(cache: LinkCache) -> dict:
    return dict(cache.stats["batches"])


def test_warm_link_gives_the_cold_result(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    cold, hc = _link(cache, prog, ar, user_value[1])
    assert _outcome(cache)["stores"] == 1
    warm, hw = _link(cache, prog, ar, user_value[1])
    try:
        assert _outcome(cache)["hits"] == 1
        assert _calls(warm) == _calls(cold) == (4 * 3 + 5 + 22 + 5000, 7, 42)
        assert sorted(hw.symbols) == sorted(hc.symbols)
        assert hw.objects == hc.objects == [str(prog), "libsmall.a(helper.o)", "libsmall.a(slots.o)"]
        for name, d in hc.symbols.items():
            w = hw.symbols[name]
            assert (w.size, w.type, w.bind, w.origin, w.section) == (d.size, d.type, d.bind, d.origin, d.section)
            assert w.address - hw.batch.allocation.target_base == d.address - hc.batch.allocation.target_base
        # The same bytes, apart from the fields that hold addresses of the batch or of outside symbols.
        bc, bw = hc.batch.allocation, hw.batch.allocation
        assert [(s.name, s.offset, s.size) for s in bc.segments] == [(s.name, s.offset, s.size) for s in bw.segments]
        end = max(s.offset + s.size for s in bc.segments if not s.zero_fill)
        mc, mw = bc.memory[:end], hw.batch.allocation.memory[:end]
        moved = _address_fields(hc.batch)[:end]
        assert 0 < moved.sum() < end // 4
        assert np.array_equal(mc[~moved], mw[~moved])
        assert not np.array_equal(mc[moved], mw[moved])
        pulls = sorted((p.member.display_name, p.symbol) for p in hw.batch.pulls.values())
        assert pulls == sorted((p.member.display_name, p.symbol) for p in hc.batch.pulls.values())
        assert bytes(next(iter(hw.batch.pulls.values())).member.data)[:4] == b"\x7fELF"
    finally:
        warm.close()
        cold.close()


def _address_fields(lb) -> np.ndarray:
    """Bytes of ``lb`` holding an absolute address or a distance to something outside it."""
    t = lb.tables
    mask = np.zeros(len(lb.allocation.memory), dtype=bool)
    nsyms = sum(len(o.symbols) for o in lb.objects)
    base, size = lb.allocation.target_base, lb.allocation.size
    for k in range(len(t["kind"])):
        v = int(t["value"][k])
        outside = int(t["target"][k]) >= nsyms and not t["use_stub"][k]
        if outside or base <= v < base + size:
            mask[int(t["where"][k]) : int(t["where"][k]) + int(WIDTH[t["kind"][k]])] = True
    for addr in lb.got.values():
        mask[addr - base : addr - base + 8] = True
    return mask


def test_warm_batch_can_be_removed_and_relinked(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    ln, h = _link(cache, prog, ar, user_value[1])
    ln.close()
    ln, h = _link(cache, prog, ar, user_value[1])
    assert _outcome(cache)["hits"] == 1
    loaded = ln._archives(ln.main).loaded
    assert len(loaded) == 2
    lb = h.batch
    h.remove()
    assert "run" not in ln.main.published
    assert loaded == set() and lb.pulls._made is None  # the members' keys freed without making the pulls
    ln.add_object(prog)
    h2 = ln.finalize()  # the archive's members are free to be pulled again
    assert _calls(ln)[0] == 4 * 3 + 5 + 22 + 5000
    assert _outcome(cache)["hits"] == 2
    h2.remove()


class _WatchedLock:
    """A lock that sets ``second_reader`` when a second thread asks for it."""

    def __init__(self, lock, second_reader) -> None:
        self.lock, self.second_reader, self.entered = lock, second_reader, []

    def __enter__(self):
        self.entered.append(threading.current_thread())  # (an append is atomic; += 1 is not)
        if len(self.entered) == 2:
            self.second_reader.set()
        return self.lock.__enter__()

    def __exit__(self, *exc):
        return self.lock.__exit__(*exc)


def test_a_warm_batch_keeps_the_earlier_batch_it_calls_from_removal(tmp_path):
    lib = compile_c("int base_value(void) { return 7; }", tmp_path / "lib.o", *CFLAGS)
    use = compile_c("extern int base_value(void); int use(void) { return base_value() * 6; }", tmp_path / "use.o",
                    *CFLAGS)
    cache = LinkCache(tmp_path / "cache")
    for hits in (0, 2):  # cold, then both batches warm
        ln = Linker(link_cache=cache)
        ln.add_object(str(lib))
        first = ln.finalize()
        ln.add_object(str(use))
        second = ln.finalize()
        assert cache.stats["batches"]["hits"] == hits
        assert ffi.cast("int (*)(void)", ln.lookup("use"))() == 42
        assert [e.definition for e in second.batch.externals if e.name == "base_value"] == [
            first.batch.definitions["base_value"]]
        with pytest.raises(rtdyld.UsageError, match="still referenced"):
            first.remove()
        second.remove()
        first.remove()
        ln.close()


def test_a_warm_batch_read_by_two_threads_at_once_gives_both_the_same_objects_and_pulls(tmp_path, user_value,
                                                                                       monkeypatch):
    import threading

    from rtdyld.linkcache import placed

    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    ln, h = _link(cache, prog, ar, user_value[1])
    assert _outcome(cache)["hits"] == 1
    lb = h.batch
    assert lb.objects._made is None and lb.pulls._made is None  # nothing has read them yet
    second_reader = threading.Event()
    monkeypatch.setattr(placed, "_making", _WatchedLock(placed._making, second_reader))
    make = lb.objects._make

    making = threading.Event()

    def slow():
        making.set()
        second_reader.wait(timeout=20)  # the other thread reads while this one makes the list
        return make()

    lb.objects._make = slow
    results: dict = {}

    def read(who):
        results[who] = (list(lb.objects), dict(lb.pulls))

    first = threading.Thread(target=read, args=("first",))
    first.start()
    making.wait(timeout=20)
    read("second")
    first.join()
    (objs_a, pulls_a), (objs_b, pulls_b) = results["first"], results["second"]
    assert len(objs_a) == 3 and all(a is b for a, b in zip(objs_a, objs_b, strict=True))
    assert pulls_a == pulls_b and sorted(pulls_a) == sorted(id(o) for o in objs_a[1:])
    ln.close()


def test_a_modified_object_misses(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    prog2 = compile_c(PROG.replace("* 1000", "* 2000"), tmp_path / "prog2.o", *CFLAGS)
    os.replace(prog2, prog)
    ln, _ = _link(cache, prog, ar, user_value[1])
    assert (_outcome(cache)["hits"], _outcome(cache)["misses"]) == (0, 2)
    assert _calls(ln)[0] == 4 * 3 + 5 + 22 + 10000
    ln.close()


def test_a_modified_archive_member_misses(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    _program(tmp_path / "src", factor=9)
    ln, _ = _link(cache, prog, ar, user_value[1])
    assert _outcome(cache)["hits"] == 0
    assert _calls(ln)[0] == 4 * 9 + 5 + 22 + 5000
    ln.close()


def test_a_user_definition_of_a_pulled_symbol_misses(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    lib = Linker()
    lib.add_object(compile_c("int helper(int x) { return -x; }", tmp_path / "h.o", *CFLAGS))
    lib.finalize()
    ln, h = _link(cache, prog, ar, user_value[1], lambda ln: ln.define("helper", lib.lookup("helper")))
    assert _outcome(cache)["stale"] == 1
    assert any("pulled an archive member" in why for _, what, why in cache.events if what == "stale")
    ref, hr = _link(False, prog, ar, user_value[1], lambda ln: ln.define("helper", lib.lookup("helper")))
    assert _calls(ln) == _calls(ref)
    assert h.objects == hr.objects
    ln.close()
    ref.close()
    # The cold link replaced the entry: the same session shape now links warm.
    ln, _ = _link(cache, prog, ar, user_value[1], lambda ln: ln.define("helper", lib.lookup("helper")))
    assert _outcome(cache)["hits"] == 1
    ln.close()
    lib.close()


def test_a_pulled_symbol_now_defined_by_a_dylib_of_the_link_order_misses(tmp_path, user_value):
    """What outranks archives includes the dylibs of the link order, not only the batch's own."""
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    lib = Linker()
    lib.add_object(compile_c("int helper(int x) { return -x; }", tmp_path / "h.o", *CFLAGS))
    lib.finalize()

    def order(define_helper: bool):
        def extra(ln):
            first = ln.create_dylib("first")
            if define_helper:
                ln.define("helper", lib.lookup("helper"), dylib=first)
            ln.main.link_order([first, "process"])
        return extra

    _link(cache, prog, ar, user_value[1], order(False))[0].close()
    ln, _ = _link(cache, prog, ar, user_value[1], order(False))
    assert _outcome(cache)["hits"] == 1
    ln.close()
    ln, h = _link(cache, prog, ar, user_value[1], order(True))
    assert _outcome(cache)["stale"] == 1
    assert any("'helper', which pulled an archive member" in why for _, what, why in cache.events if what == "stale")
    ref, hr = _link(False, prog, ar, user_value[1], order(True))
    assert _calls(ln) == _calls(ref) and h.objects == hr.objects
    ln.close()
    ref.close()
    lib.close()


def test_a_moved_user_definition_is_patched(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    other = ffi.new("int *", 99)
    ln, _ = _link(cache, prog, ar, int(ffi.cast("uintptr_t", other)))
    assert _outcome(cache)["hits"] == 1
    assert _calls(ln)[1] == 99
    ln.close()


def test_a_user_definition_replacing_the_process_misses(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    fake = Linker()
    fake.add_object(compile_c("long strtol(const char *s, char **end, int base) { return 7; }", tmp_path / "s.o", *CFLAGS))
    fake.finalize()
    ln, _ = _link(cache, prog, ar, user_value[1], lambda ln: ln.define("strtol", fake.lookup("strtol")))
    assert _outcome(cache)["stale"] == 1
    assert _calls(ln)[0] == 4 * 3 + 5 + 22 + 7000
    ln.close()
    fake.close()


def test_another_rtdyld_version_misses(tmp_path, user_value, monkeypatch):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    monkeypatch.setattr(rtdyld, "__version__", rtdyld.__version__ + ".post1")
    ln, _ = _link(cache, prog, ar, user_value[1])
    assert cache.stats["batches"]["hits"] == 0 and cache.stats["objects"]["hits"] == 0
    assert _calls(ln)[0] == 4 * 3 + 5 + 22 + 5000
    ln.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty"])
def test_a_damaged_entry_misses(tmp_path, user_value, damage):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    for entry in (tmp_path / "cache").glob("*/*.ent"):
        data = bytearray(entry.read_bytes())
        if damage == "flip":
            data[len(data) // 2] ^= 0x40
        elif damage == "truncate":
            del data[len(data) - 100 :]
        else:
            data = bytearray()
        entry.write_bytes(bytes(data))
    ln, _ = _link(cache, prog, ar, user_value[1])
    # The batch, and the tables of the program and of the two members it pulls.
    assert cache.stats["batches"]["corrupt"] == 1 and cache.stats["objects"]["corrupt"] == 3
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()
    ln, _ = _link(cache, prog, ar, user_value[1])  # the cold link wrote the entries again
    assert cache.stats["batches"]["hits"] == 1
    ln.close()


def test_a_trace_or_validator_bypasses_the_cache(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    seen = []
    ln, h = _link(cache, prog, ar, user_value[1], lambda ln: ln.add_validator(seen.append))
    assert len(seen) == 1 and cache.stats["batches"]["hits"] == 0
    assert h.batch.tables
    ln.close()


_CHILD = textwrap.dedent("""
    import json, sys, cffi
    from rtdyld import Linker
    ffi = cffi.FFI()
    value = ffi.new("int *", 7)
    ln = Linker(link_cache=sys.argv[1])
    ln.define("user_value", int(ffi.cast("uintptr_t", value)))
    ln.add_object(sys.argv[2])
    ln.add_archive(sys.argv[3])
    h = ln.finalize()
    print(json.dumps({"run": ln.function("run", "int(int)")(4), "ctor": ln.function("get_ctor", "int(void)")(),
                      "symbols": sorted(h.symbols), "stats": ln.link_cache.stats["batches"]}))
""")


def _child(cache: Path, prog: Path, ar: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    env.pop("RTDYLD_LINK_CACHE", None)
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(cache), str(prog), str(ar)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(p: subprocess.Popen) -> dict:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return json.loads(out)


def test_warm_link_in_a_fresh_process(tmp_path):
    prog, ar = _program(tmp_path / "src")
    first = _result(_child(tmp_path / "cache", prog, ar))
    second = _result(_child(tmp_path / "cache", prog, ar))
    assert first["stats"]["stores"] == 1 and first["stats"]["hits"] == 0
    assert second["stats"]["hits"] == 1 and second["stats"]["stores"] == 0
    assert first["run"] == second["run"] == 4 * 3 + 5 + 22 + 5000
    assert first["ctor"] == second["ctor"] == 42
    assert first["symbols"] == second["symbols"]


def test_concurrent_writers_leave_whole_entries(tmp_path):
    prog, ar = _program(tmp_path / "src")
    cache = tmp_path / "cache"
    results = [_result(p) for p in [_child(cache, prog, ar) for _ in range(4)]]
    assert {r["run"] for r in results} == {4 * 3 + 5 + 22 + 5000}
    entries = sorted(cache.glob("batches/*.ent"))
    assert len(entries) == 1
    assert not [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]
    unpack(entries[0].read_bytes(), bytes.fromhex(entries[0].stem))
    assert _result(_child(cache, prog, ar))["stats"]["hits"] == 1


def test_run_command_with_a_link_cache(tmp_path, capsys):
    from cli_helpers import rtdyld as run_rtdyld

    main = compile_c("extern int helper(int);\nint main(void) { return helper(2); }", tmp_path / "main.o", *CFLAGS)
    _, ar = _program(tmp_path / "src")
    for _ in range(2):
        code, _out, err = run_rtdyld(capsys, "run", "--link-cache", tmp_path / "cache", main, ar)
        assert (code, err) == (11, "")
    assert len(list((tmp_path / "cache").glob("batches/*.ent"))) == 1


def test_a_thin_archive_is_linked_but_never_cached(tmp_path, user_value):
    prog, _ar = _program(tmp_path / "src")
    thin = build_gnu_archive(tmp_path / "src" / "libthin.a",
                             [tmp_path / "src" / n for n in ("helper.o", "slots.o", "unused.o")], thin=True)
    cache = LinkCache(tmp_path / "cache")
    for _ in range(2):
        ln, _ = _link(cache, prog, thin, user_value[1])
        assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
        ln.close()
    assert (cache.stats["batches"]["hits"], cache.stats["batches"]["stores"]) == (0, 0)


def test_a_thin_archive_added_by_path_is_never_cached_by_identity_either(tmp_path, user_value, settled):
    prog, _ar = _program(tmp_path / "src")
    thin = build_gnu_archive(tmp_path / "src" / "libthin.a",
                             [tmp_path / "src" / n for n in ("helper.o", "slots.o", "unused.o")], thin=True)
    for _ in range(2):
        cache = _fresh(tmp_path / "cache")
        ln, _ = _link(cache, prog, thin, user_value[1])
        assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
        ln.close()
        assert cache.stats["inputs"]["misses"] == 1 and cache.stats["inputs"]["stores"] == 0
        assert (cache.stats["batches"]["hits"], cache.stats["batches"]["stores"]) == (0, 0)
    assert not list((tmp_path / "cache").glob("archives/*.ent"))  # its member table is not kept either


def test_an_archive_added_with_a_link_cache_is_only_stated_until_a_link_reads_it(tmp_path):
    from rtdyld.errors import MalformedObjectError

    ln = Linker(link_cache=tmp_path / "cache")
    with pytest.raises(MalformedObjectError, match="missing.a: cannot read the archive"):
        ln.add_archive(tmp_path / "missing.a")
    bad = tmp_path / "bad.a"
    bad.write_bytes(b"not an archive at all")
    ln.add_archive(bad)
    ln.add_object(compile_c("extern int helper(int);\nint f(int x) { return helper(x); }", tmp_path / "f.o",
                            *CFLAGS))
    with pytest.raises(MalformedObjectError, match="bad.a"):
        ln.finalize()
    ln.close()


def test_a_later_batch_pulls_from_archives_of_an_earlier_one(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    late = compile_c("extern int never_pulled(void);\nint late(void) { return never_pulled() + 1; }",
                     tmp_path / "late.o", *CFLAGS)
    cache = LinkCache(tmp_path / "cache")
    for _ in range(2):
        ln, _ = _link(cache, prog, ar, user_value[1])
        ln.add_object(late)
        h = ln.finalize()
        assert ln.function("late", "int(void)")() == 2
        assert h.objects == [str(late), "libsmall.a(unused.o)"]
        ln.close()
    assert (cache.stats["batches"]["hits"], cache.stats["batches"]["stores"]) == (2, 2)


def test_a_remembered_digest_is_not_trusted_once_the_file_changed(tmp_path, monkeypatch):
    from rtdyld.linkcache import digests

    monkeypatch.setattr(digests, "SETTLE_NS", 0)
    f = tmp_path / "input.a"
    f.write_bytes(b"!<arch>\nfirst")
    store = digests.StatDigests(str(tmp_path / "stat"))
    first = store.file_digest(f)
    assert first == digests.digest(b"!<arch>\nfirst")
    assert len(list((tmp_path / "stat").iterdir())) == 1
    st = f.stat()
    f.write_bytes(b"!<arch>\nother")  # same size; put the old mtime back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.file_digest(f) == digests.digest(b"!<arch>\nother")



def test_a_remembered_head_is_the_files_and_follows_a_change(tmp_path, monkeypatch):
    from rtdyld.linkcache import digests

    monkeypatch.setattr(digests, "SETTLE_NS", 0)
    f = tmp_path / "input.a"
    f.write_bytes(b"!<arch>\nfirst")
    store = digests.StatDigests(str(tmp_path / "stat"))
    assert store.file_digest_and_head(f) == (digests.digest(b"!<arch>\nfirst"), b"!<arch>\n")  # hashed
    assert store.file_digest_and_head(f) == (digests.digest(b"!<arch>\nfirst"), b"!<arch>\n")  # the record
    st = f.stat()
    f.write_bytes(b"!<thin>\nfirst")  # same size; put the old mtime back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert store.file_digest_and_head(f) == (digests.digest(b"!<thin>\nfirst"), b"!<thin>\n")

def test_dylibs_linked_in_one_finalize_link_warm(tmp_path):
    lib_o = compile_c("int base_value(void) { return 40; }", tmp_path / "lib.o", *CFLAGS)
    app_o = compile_c("extern int base_value(void);\nint app(void) { return base_value() + 2; }",
                      tmp_path / "app.o", *CFLAGS)
    cache = LinkCache(tmp_path / "cache")
    for _ in range(2):
        ln = Linker(link_cache=cache)
        lib = ln.create_dylib("lib")
        ln.main.link_order([lib, "process"])
        ln.add_object(lib_o, dylib=lib)
        ln.add_object(app_o)
        h = ln.finalize()
        assert ln.function("app", "int(void)")() == 42
        assert h.objects == [str(lib_o), str(app_o)]
        ln.close()
    assert (cache.stats["batches"]["stores"], cache.stats["batches"]["hits"]) == (2, 2)



def test_definitions_keep_their_addresses_warm_absolute_ones_too(tmp_path):
    obj = compile_c('asm(".globl high_abs\\n.set high_abs, 0xffffffff80001000\\n'
                    '.globl low_abs\\n.set low_abs, 0x1234");\n'
                    "int seven(void) { return 7; }\nint table[4] = {1, 2, 3, 4};\n", tmp_path / "abs.o", *CFLAGS)
    cache = LinkCache(tmp_path / "cache")
    seen = []
    for _ in range(2):
        ln = Linker(link_cache=cache)
        ln.add_object(obj)
        h = ln.finalize()
        assert ln.function("seven", "int(void)")() == 7
        base = h.batch.allocation.target_base
        symbols = {n: ln.lookup(n) for n in ("high_abs", "low_abs", "seven", "table")}
        assert symbols["high_abs"] == 0xFFFFFFFF80001000 and symbols["low_abs"] == 0x1234
        seen.append({n: a - base if n in ("seven", "table") else a for n, a in symbols.items()})
        ln.close()
    assert cache.stats["batches"]["hits"] == 1
    assert seen[0] == seen[1]

@pytest.mark.parametrize("index", [True, False])
def test_archive_member_tables_and_index_are_remembered(tmp_path, user_value, index):
    prog, _ = _program(tmp_path / "src")
    ar = build_gnu_archive(tmp_path / "src" / "libnoindex.a",
                           [tmp_path / "src" / n for n in ("helper.o", "slots.o", "unused.o")], index=index)
    cache = LinkCache(tmp_path / "cache")
    results = []
    for _ in range(2):
        # A validator keeps the batch cold, so the archive is opened both times.
        ln, h = _link(cache, prog, ar, user_value[1], lambda ln: ln.add_validator(lambda view: None))
        results.append((_calls(ln), h.objects))
        archive = ln._archives(ln.main).archives[0]
        results.append([(m.name, m.header_offset, m.size) for m in archive.members])
        results.append({n: [m.index for m in archive.definers(n)] for n in ("helper", "slots", "never_pulled")})
        ln.close()
    assert results[:3] == results[3:]
    assert cache.stats["archives"]["hits"] == 1 and cache.stats["archives"]["stores"] == 1


def test_an_archive_spelt_two_ways_is_one_archive(tmp_path, user_value):
    """As without a cache: an archive added again by another spelling of its
    path replaces itself in the search order rather than joining it twice."""
    prog, ar = _program(tmp_path / "src")
    other = ar.parent / ".." / ar.parent.name / ar.name
    for cache in (None, LinkCache(tmp_path / "cache")):
        ln = Linker(link_cache=cache)
        ln.define("user_value", user_value[1])
        ln.add_object(prog)
        ln.add_archive(ar)
        ln.add_archive(str(other))
        ln.finalize()
        assert [a.name for a in ln._archives(ln.main).archives] == [str(ar.resolve())]
        ln.close()


def test_an_entry_that_does_not_restore_misses(tmp_path, user_value):
    from rtdyld.linkcache.container import pack

    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    (entry,) = (tmp_path / "cache").glob("batches/*.ent")
    key = bytes.fromhex(entry.stem)
    entry.write_bytes(pack(key, {"segments": [["text", 0, 1 << 40, 5, False]]}, {}))  # checksum fine, content not
    ln, _ = _link(cache, prog, ar, user_value[1])
    assert cache.stats["batches"]["corrupt"] == 1
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


def test_only_run_uses_the_link_cache_from_the_environment(tmp_path, capsys, monkeypatch):
    from cli_helpers import rtdyld as run_rtdyld

    main = compile_c("extern int helper(int);\nint main(void) { return helper(2); }", tmp_path / "main.o", *CFLAGS)
    _, ar = _program(tmp_path / "src")
    monkeypatch.setenv("RTDYLD_LINK_CACHE", str(tmp_path / "env-cache"))
    code, out, _err = run_rtdyld(capsys, "symbols", main, ar)
    assert code == 0 and "helper" in out
    assert not (tmp_path / "env-cache").exists()
    code, _out, _err = run_rtdyld(capsys, "run", main, ar)
    assert code == 11
    assert len(list((tmp_path / "env-cache").glob("batches/*.ent"))) == 1


def test_object_tables_round_trip_field_by_field(tmp_path):
    from rtdyld import fieldwise
    from rtdyld.inputs import parse_object
    from rtdyld.linkcache import tables
    from rtdyld.linkcache.container import pack
    from rtdyld.objfile.archive import read_archive

    src = "int g = 3;\nstatic int h(int x) { return x + g; }\nint (*p)(int) = h;\n" \
          "__attribute__((constructor)) static void c(void) { g = 4; }\ninline int f(int x) { return h(x); }\n" \
          "int use(int x) { return f(x); }\n"
    objs = [parse_object(compile_c(src, tmp_path / "a.o", "-O0", "-fPIC", "-std=gnu89").read_bytes(), "a.o")]
    lib = Path("/usr/lib/x86_64-linux-gnu/libz.a")
    if lib.exists():
        objs += [parse_object(m.data, m.display_name) for m in read_archive(lib).members[:4]]
    for obj in objs:
        blobs: list = []
        doc = tables.object_doc(obj, blobs)
        meta, stored = unpack(pack(b"k" * 32, {"o": doc}, tables.named(blobs, "b")), b"k" * 32)
        back = tables.object_from_doc(meta["o"], tables.unnamed(stored, "b", len(blobs)), obj.name)
        for f in obj.FIELDS:
            a, b = getattr(obj, f), getattr(back, f)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), f
            elif f == "sections":
                for sa, sb in zip(a, b, strict=True):
                    assert fieldwise.replace(sa, data=b"") == fieldwise.replace(sb, data=b"")
                    assert bytes(sa.data) == bytes(sb.data) and type(sb.flags) is type(sa.flags)
            else:
                assert a == b, f


def test_an_object_added_through_the_cache_reports_its_error_each_time_it_is_read(tmp_path):
    """Its bytes are read when first needed: a failed read fails again, with its
    own error, not with an AttributeError for a field that was never made."""
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"\x7fELF not an object")
    obj = LinkCache(tmp_path / "cache").add_object(str(bad))
    for _ in range(2):
        with pytest.raises(rtdyld.MalformedObjectError, match=r"bad\.o: not an ELF object"):
            _ = obj.sections


def test_a_lazy_object_survives_a_protocol_probe(tmp_path):
    from rtdyld.inputs import parse_object
    from rtdyld.linkcache import tables

    full = parse_object(compile_c("int g = 3;", tmp_path / "g.o", *CFLAGS).read_bytes(), "g.o")
    obj = tables.LazyObject.deferred("g.o", lambda: full)
    assert not hasattr(obj, "__deepcopy__")  # as copy.deepcopy asks, before any field is read
    names = [s.name for s in obj.sections]
    assert names == [s.name for s in full.sections] and ".data" in names


def test_a_lazy_object_read_from_within_its_own_load_finds_no_field_rather_than_recursing(tmp_path):
    from rtdyld.inputs import parse_object
    from rtdyld.linkcache import tables

    full = parse_object(compile_c("int g = 3;", tmp_path / "g.o", *CFLAGS).read_bytes(), "g.o")

    def load():
        with pytest.raises(AttributeError, match="sections"):
            _ = obj.sections
        return full

    obj = tables.LazyObject.deferred("g.o", load)
    assert [s.name for s in obj.sections] == [s.name for s in full.sections]


def test_a_lazy_object_read_by_two_threads_at_once_is_made_once_for_both(tmp_path, monkeypatch):
    import threading

    from rtdyld.inputs import parse_object
    from rtdyld.linkcache import tables

    full = parse_object(compile_c("int g = 3;", tmp_path / "g.o", *CFLAGS).read_bytes(), "g.o")
    second_reader = threading.Event()
    monkeypatch.setattr(tables, "_loading", _WatchedLock(tables._loading, second_reader))
    loads = []

    def load():
        loads.append(1)
        second_reader.wait(timeout=20)  # the other thread reads while this one is loading
        return full

    obj = tables.LazyObject.deferred("g.o", load)
    results: dict = {}

    def read(who):
        try:
            results[who] = [s.name for s in obj.sections]
        except Exception as e:  # noqa: BLE001 - what the test reports
            results[who] = e

    first = threading.Thread(target=read, args=("first",))
    first.start()
    while not loads:
        first.join(timeout=0.01)
    read("second")
    first.join()
    names = [s.name for s in full.sections]
    assert results == {"first": names, "second": names} and len(loads) == 1


def test_an_outside_symbol_moving_into_reach_misses(tmp_path, user_value):
    from rtdyld.linker import default_memory
    from rtdyld.x86_64.scan import in_reach

    prog, ar = _program(tmp_path / "src")
    lo, hi = default_memory().reach_range()
    assert not in_reach(np.array([user_value[1]], dtype=np.uint64), lo, hi)[0]  # the heap is far from the code
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    near = Linker()
    near.add_object(compile_c("int near_value = 8;", tmp_path / "near.o", *CFLAGS))
    near.finalize()
    ln, _ = _link(cache, prog, ar, near.lookup("near_value"))
    assert _outcome(cache)["stale"] == 1
    assert any("reach" in why for _, what, why in cache.events if what == "stale")
    assert _calls(ln)[1] == 8
    ln.close()
    near.close()


def test_a_cxx_batch_links_warm_with_its_unwind_tables_and_dso_handle(build, tmp_path):
    objs = [build.cxx(n, "-O2", "-fPIC") for n in ("shapes_a.cpp", "shapes_b.cpp", "statics.cpp")]
    cache = LinkCache(tmp_path / "cache")
    handles = []
    for _ in range(2):
        ln = Linker(link_cache=cache)
        ln.link_library("stdc++")
        for o in objs:
            ln.add_object(o)
        h = ln.finalize()
        checked = ln.function("shapes_checked_sum", "int(int *, int)")
        # -7 makes the callee throw; the caller in the other object catches it.
        assert checked(ffi.new("int[]", [1, -7, 3]), 3) == -1000 - (-7)
        handles.append(h)
    assert _outcome(cache)["stores"] == 1 and _outcome(cache)["hits"] == 1, cache.events
    cold, warm = (h.batch for h in handles)
    assert warm.eh_frame is not None and warm.dso_handle
    base_c, base_w = cold.allocation.target_base, warm.allocation.target_base
    assert (warm.eh_frame.address - base_w, warm.eh_frame.size) == (cold.eh_frame.address - base_c, cold.eh_frame.size)
    assert warm.dso_handle - base_w == cold.dso_handle - base_c
    for h in handles:
        h.remove()


def test_a_batch_with_thread_locals_is_linked_but_never_cached(build, tmp_path):
    obj = build.cc(REPO / "fixtures" / "tls" / "counters.c", "-O2", "-fPIC")
    other = build.cc(REPO / "fixtures" / "tls" / "other.c", "-O2", "-fPIC")
    cache = LinkCache(tmp_path / "cache")
    for _ in range(2):
        ln = Linker(link_cache=cache)
        ln.add_object(obj)
        ln.add_object(other)
        with ln.finalize():
            assert ln.function("tls_bump", "long(long)")(5) > 0
    assert _outcome(cache)["hits"] == 0 and _outcome(cache)["unstored"] == 2


def _random_residual(rng, kind, spread: int, const=None):
    """A residual-fixup table of ``kind`` fields back to back, random constants
    within ``spread`` (or ``const``), bases, outside symbols and a placement:
    (residual, base, outside addresses, image size)."""
    from rtdyld.linkcache import image

    n = len(kind)
    where = np.cumsum(np.concatenate([[0], WIDTH[kind][:-1]])).astype(np.int64)  # fields back to back
    if const is None:
        const = rng.integers(-spread, spread, n).astype(np.int64).view(np.uint64)
    cb = rng.integers(-1, 2, n).astype(np.int8)
    ext = rng.integers(0, spread, 3).astype(np.uint64)
    j = rng.integers(-1, 3, n).astype(np.int32)
    size = -(-int(where[-1] + WIDTH[kind[-1]]) // 8) * 8
    return image.Residual(where, kind, const, cb, j), int(rng.integers(0, spread)), ext, size


def test_residual_fixups_written_alike_with_integers_and_with_arrays():
    import numpy as np

    from rtdyld.linkcache import image
    from rtdyld.x86_64.edges import Edge

    rng = np.random.default_rng(7)
    signed = [Edge.Pointer64, Edge.Pointer32Signed, Edge.Pointer16, Edge.Pointer8, Edge.Delta32, Edge.Branch32,
              Edge.Delta64]
    written = 0
    for trial in range(60):
        # Even trials: small values in fields that take negative ones, so all fit;
        # odd trials: any kind and values up to 2^40, so most have one that does not.
        fits = trial % 2 == 0
        kinds = signed if fits else [*signed, Edge.Pointer32]
        n = int(rng.integers(1, 60))
        kind = rng.choice(np.array([int(k) for k in kinds], dtype=np.uint8), n)
        if trial % 6 == 4:  # a pointer table: aligned 64-bit fields
            kind = rng.choice(np.array([int(Edge.Pointer64), int(Edge.Delta64)], dtype=np.uint8), n)
        spread = 1 << int(rng.integers(1, 6) if fits else rng.integers(4, 40))
        res, base, ext, size = _random_residual(rng, kind, spread)
        few, arrays, stored = np.zeros(size, np.uint8), np.zeros(size, np.uint8), np.zeros(size, np.uint8)
        ok_few = image._apply_few(res, few, base, ext)
        ok_arrays = image._apply_arrays(res, arrays, base, ext)
        ok_stored = image.apply_records(image.to_records(res), stored, base, ext)  # as an entry holds them
        assert ok_few == ok_arrays == ok_stored, trial
        assert ok_few or not fits, trial
        if ok_few:
            assert few.tobytes() == arrays.tobytes() == stored.tobytes(), trial
            written += 1
    assert 30 <= written < 60


def test_residual_fixups_range_checked_at_the_field_limits():
    import numpy as np

    from rtdyld.linkcache import image
    from rtdyld.x86_64.edges import Edge

    def fits(kind: Edge, value: int) -> tuple[bool, bool]:
        res = image.Residual(np.zeros(1, np.int64), np.array([int(kind)], np.uint8),
                             np.array([value & (1 << 64) - 1], np.uint64), np.zeros(1, np.int8),
                             np.full(1, -1, np.int32))
        mem = np.zeros(8, np.uint8)
        return (image._apply_few(res, mem.copy(), 0, np.zeros(1, np.uint64)),
                image._apply_arrays(res, mem.copy(), 0, np.zeros(1, np.uint64)))

    for kind, good, bad in ((Edge.Branch32, (-(1 << 31), (1 << 31) - 1), (-(1 << 31) - 1, 1 << 31)),
                            (Edge.Pointer32, (0, (1 << 32) - 1), (-1, 1 << 32)),
                            (Edge.Pointer8, (-128, 255), (-129, 256))):
        for v in good:
            assert fits(kind, v) == (True, True), (kind, v)
        for v in bad:
            assert fits(kind, v) == (False, False), (kind, v)


def test_entries_are_read_whole_in_one_go(tmp_path):
    from rtdyld.linkcache.container import read_file

    for size in (0, 1, 4096, 300_001):
        f = tmp_path / f"e{size}"
        data = os.urandom(size)
        f.write_bytes(data)
        assert read_file(str(f)) == data
    with pytest.raises(FileNotFoundError):
        read_file(str(tmp_path / "missing"))


def test_entry_metadata_written_with_marshal_version_4_still_reads_back(monkeypatch):
    """Entries are written with marshal version 2 (no back-references); those
    written before with version 4, whose repeated objects are references, read
    back to the same values, and a value met twice comes back twice, equal."""
    import marshal

    from rtdyld.linkcache import container

    descr = container._descr(np.dtype([("a", "<u8"), ("b", "u1")]))  # one object for every array of the dtype
    shared = ["residual", 1 << 70, -1.5, None, True]
    meta = {"rows": shared, "again": shared, "names": ["wg_f1"] * 3, "nested": container.dumps({"x": shared})}
    blobs = {f"a{i}": np.zeros(2, np.dtype([("a", "<u8"), ("b", "u1")])) for i in range(3)}
    key = bytes(32)
    assert container.dumps(["x", "x"]) == marshal.dumps(["x", "x"], 2)  # what is written now
    read = {}
    for version in (2, 4):
        monkeypatch.setattr(container, "_MARSHAL_VERSION", version)
        packed = container.pack(key, meta, blobs)
        read[version] = container.unpack(packed, key)
    for version, (got, got_blobs) in read.items():
        assert got == meta, version
        assert container.loads(got["nested"]) == {"x": shared}, version
        assert [got_blobs[f"a{i}"].dtype.descr for i in range(3)] == [blobs["a0"].dtype.descr] * 3, version
    assert read[4][0]["rows"] is read[4][0]["again"] and read[2][0]["rows"] is not read[2][0]["again"]
    assert container._descr(np.dtype([("a", "<u8"), ("b", "u1")])) is descr


def test_residual_fixups_written_alike_grouped():
    from rtdyld.linkcache import image
    from rtdyld.linkcache.container import pack
    from rtdyld.x86_64.edges import Edge

    rng = np.random.default_rng(11)
    kinds = [Edge.Pointer64, Edge.Pointer32, Edge.Pointer32Signed, Edge.Pointer16, Edge.Pointer8, Edge.Delta32,
             Edge.Branch32, Edge.Delta64, Edge.Difference32]
    written = refused = 0
    for trial in range(80):
        n = int(rng.integers(1, 50))
        kind = rng.choice(np.array([int(k) for k in kinds], dtype=np.uint8), n)
        if trial % 5 == 0:  # a pointer table: aligned 64-bit fields
            kind = np.full(n, int(Edge.Pointer64), dtype=np.uint8)
        spread = 1 << int(rng.integers(1, 40))
        const = rng.integers(-spread, spread, n).astype(np.int64).view(np.uint64)
        if trial % 7 == 3:  # constants near 2**64: a group whose bounds alone would misjudge wrap-around
            const = (np.uint64(1 << 63) + const).astype(np.uint64)
        res, base, ext, size = _random_residual(rng, kind, spread, const)
        few, targeted = np.zeros(size, np.uint8), np.zeros(size, np.uint8)
        ok_few = image._apply_few(res, few, base, ext)
        rec, groups = image.grouped(res)
        index, quads = image.targets(rec, groups)
        assert quads or trial % 5 != 0  # a pointer table is written a word at a time
        key = bytes(32)
        stored = unpack(pack(key, {}, {"r": rec["const"], "t": index}), key)[1]  # as an entry holds them
        groups = json.loads(json.dumps(groups))
        ok_targeted = image.apply_grouped(stored["r"], groups, targeted, base, ext, (stored["t"], quads))
        listed = np.zeros(size, np.uint8)
        rows = unpack(pack(key, {"rows": image.listed(rec)}, {}), key)[0]["rows"]  # as an entry lists them
        ok_listed = image.apply_listed(rows, groups, listed, base, ext.tolist())
        assert ok_few == ok_targeted == ok_listed, trial
        if ok_few:
            assert few.tobytes() == targeted.tobytes() == listed.tobytes(), trial
            written += 1
        else:
            refused += 1
    assert written >= 20 and refused >= 10


def test_residual_groups_range_checked_at_the_field_limits():
    from rtdyld.linkcache import image
    from rtdyld.x86_64.edges import Edge

    def fits(kind: Edge, value: int, cb: int = 0, base: int = 0) -> bool:
        res = image.Residual(np.zeros(1, np.int64), np.array([int(kind)], np.uint8),
                             np.array([value & (1 << 64) - 1], np.uint64), np.array([cb], np.int8),
                             np.full(1, -1, np.int32))
        rec, groups = image.grouped(res)
        grouped = image.apply_grouped(rec["const"], groups, np.zeros(8, np.uint8), base, np.zeros(1, np.uint64),
                                      image.targets(rec, groups))
        assert image.apply_listed(image.listed(rec), groups, np.zeros(8, np.uint8), base, [0]) == grouped
        return grouped

    for kind, good, bad in ((Edge.Branch32, (-(1 << 31), (1 << 31) - 1), (-(1 << 31) - 1, 1 << 31)),
                            (Edge.Pointer32, (0, (1 << 32) - 1), (-1, 1 << 32)),
                            (Edge.Pointer8, (-128, 255), (-129, 256))):
        for v in good:
            assert fits(kind, v) and fits(kind, v - 4096, 1, 4096), (kind, v)
        for v in bad:
            assert not fits(kind, v) and not fits(kind, v - 4096, 1, 4096), (kind, v)
    # Wrapping around 2**64 as the cold link's arithmetic does: 2**64 - 8 plus 16 is 8.
    assert fits(Edge.Pointer8, (1 << 64) - 8, 1, 16)


def test_residual_targets_are_int32_and_a_fixup_past_2_gib_is_not_cached():
    from rtdyld.linkcache import image
    from rtdyld.linkcache.tables import Uncacheable
    from rtdyld.x86_64.edges import Edge

    def targets(kind: Edge, where: int):
        res = image.Residual(np.array([where], np.int64), np.array([int(kind)], np.uint8), np.zeros(1, np.uint64),
                             np.ones(1, np.int8), np.full(1, -1, np.int32))
        rec, groups = image.grouped(res)
        index, quads = image.targets(rec, groups)
        return index.dtype, index.tolist(), quads

    # An aligned pointer is stored as its word's index: far past 2 GiB, it still fits.
    assert targets(Edge.Pointer64, 1 << 33) == (np.dtype(np.int32), [1 << 30], True)
    assert targets(Edge.Pointer32, (1 << 31) - 4)[:2] == (np.dtype(np.int32), [(1 << 31) - 4 + i for i in range(4)])
    for kind, where in ((Edge.Pointer32, (1 << 31) - 3), (Edge.Pointer64, (1 << 31) + 1), (Edge.Pointer8, 1 << 32)):
        with pytest.raises(Uncacheable, match="beyond 2 GiB"):
            targets(kind, where)


@pytest.mark.parametrize("listed", [True, False])
@pytest.mark.parametrize("damage", ["groups", "rows"])
def test_residual_groups_or_rows_that_do_not_cover_each_other_are_a_corrupt_entry(tmp_path, user_value, damage,
                                                                                  listed, monkeypatch):
    from rtdyld.linkcache import image
    from rtdyld.linkcache.container import pack

    if not listed:  # the rows as arrays, with where they are written, as a large batch stores them
        monkeypatch.setattr(image, "FEW_LISTED", 0)
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    (entry,) = (tmp_path / "cache").glob("batches/*.ent")
    key = bytes.fromhex(entry.stem)
    meta, blobs = unpack(entry.read_bytes(), key)
    tail = blobs.tail
    blobs = dict(blobs)
    assert meta["residual_groups"] and (meta["residual_rows"] is not None) == listed
    if damage == "groups":
        meta["residual_groups"][0][3] += 1
    elif listed:
        meta["residual_rows"] = meta["residual_rows"][:-8]  # one int64 fewer: checksum fine, content not
    else:
        blobs["residual_targets"] = blobs["residual_targets"][:-1]
    entry.write_bytes(pack(key, meta, blobs, tail))
    ln, _ = _link(cache, prog, ar, user_value[1])
    assert cache.stats["batches"]["corrupt"] == 1 and cache.stats["batches"]["hits"] == 0
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


def test_a_process_symbol_is_looked_up_once_and_described_only_when_asked(tmp_path, user_value, monkeypatch):
    from rtdyld import host
    from rtdyld.linkcache import resolutions

    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    cold_ln, cold = _link(cache, prog, ar, user_value[1])
    cold_sources = {e.name: e.source for e in cold.batch.externals}
    cold_ln.close()
    described = []
    real_describe = host.describe_address
    monkeypatch.setattr(host, "describe_address", lambda a: described.append(a) or real_describe(a))
    ln, h = _link(cache, prog, ar, user_value[1])
    assert _outcome(cache)["hits"] == 1
    assert described == []
    (strtol,) = [e for e in h.batch.externals if e.name == "strtol"]
    assert isinstance(strtol, resolutions.ProcessExternal)
    assert strtol.address == host.process_symbol("strtol")
    assert {e.name: e.source for e in h.batch.externals} == cold_sources  # described now, as the cold link did
    assert described == [strtol.address] and strtol.definition.origin == cold_sources["strtol"]
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


def test_a_library_ahead_of_the_process_resolves_in_full(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    _link(cache, prog, ar, user_value[1])[0].close()
    # libm's dlsym also answers for libc, which it needs: strtol's provider is now libm's handle.
    ln, h = _link(cache, prog, ar, user_value[1], lambda ln: ln.load_library("m"))
    assert _outcome(cache)["stale"] == 1
    (strtol,) = [e for e in h.batch.externals if e.name == "strtol"]
    assert strtol.source.endswith(".so.6") and "/" in strtol.source
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


def test_warm_sections_are_the_cold_ones_at_the_new_base(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")
    cache = LinkCache(tmp_path / "cache")
    cold_ln, cold = _link(cache, prog, ar, user_value[1])
    placed = [(p.obj, p.index, p.segment, p.work) for p in cold.batch.sections]
    cold_ln.close()
    ln, h = _link(cache, prog, ar, user_value[1])
    assert _outcome(cache)["hits"] == 1
    warm = h.batch.sections
    assert len(warm) == len(placed) > 3
    assert [(p.obj, p.index, p.segment, p.work) for p in warm] == placed
    base = h.batch.allocation.target_base
    assert [p.address for p in warm] == [base + w for *_, w in placed]
    assert warm[-1] == list(warm)[-1] and warm == list(warm)
    ln.close()


# --- the by-identity entry: one file found from the inputs' file identities -----------------------


@pytest.fixture
def settled(monkeypatch):
    """Files count as settled however recently written (the tests write them just before)."""
    from rtdyld.linkcache import digests

    monkeypatch.setattr(digests, "SETTLE_NS", -(1 << 62))


def _fresh(cache_dir: Path) -> LinkCache:
    return LinkCache(cache_dir)  # counts of its own


def test_inputs_added_by_path_link_warm_from_one_entry_reading_no_input(tmp_path, user_value, settled,
                                                                         monkeypatch):
    from rtdyld.linkcache import by_identity, deferred

    prog, ar = _program(tmp_path / "src")
    cold = _fresh(tmp_path / "cache")
    ln, _ = _link(cold, prog, ar, user_value[1])
    assert cold.stats["inputs"]["stores"] == 1 and cold.stats["batches"]["stores"] == 1
    ln.close()

    def refuse(*_a):
        raise AssertionError("an input was read")

    monkeypatch.setattr(by_identity.InputFile, "read", refuse)
    monkeypatch.setattr(deferred.DeferredArchive, "_open", refuse)
    warm = _fresh(tmp_path / "cache")
    ln, h = _link(warm, prog, ar, user_value[1])
    assert warm.stats["inputs"]["hits"] == 1 and warm.stats["batches"]["hits"] == 1
    assert warm.stats["objects"] == dict.fromkeys(warm.stats["objects"], 0)  # no object table looked up
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    assert sorted(h.symbols) == sorted(_reference_symbols(prog, ar, user_value[1]))
    # The pulled members' sections, from the entry (not from the archive, which is not read).
    ref, rh = _link(False, prog, ar, user_value[1])
    members = [[(s.name, s.size) for s in o.sections] for o in h.batch.objects[1:]]
    assert members == [[(s.name, s.size) for s in o.sections] for o in rh.batch.objects[1:]] and members
    ref.close()
    ln.close()


def _reference_symbols(prog: Path, ar: Path, user_address: int) -> list[str]:
    ln, h = _link(False, prog, ar, user_address)
    try:
        return list(h.symbols)
    finally:
        ln.close()


def test_inputs_written_too_recently_are_not_recorded_by_identity(tmp_path, user_value):
    prog, ar = _program(tmp_path / "src")  # just written: not settled
    cold = _fresh(tmp_path / "cache")
    _link(cold, prog, ar, user_value[1])[0].close()
    assert cold.stats["inputs"]["stores"] == 0 and cold.stats["inputs"]["unstored"] == 1
    assert not list((tmp_path / "cache").glob("inputs/*.ent"))
    warm = _fresh(tmp_path / "cache")
    ln, _ = _link(warm, prog, ar, user_value[1])
    assert warm.stats["inputs"]["misses"] == 1 and warm.stats["batches"]["hits"] == 1  # by digest
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


def test_an_input_rewritten_alike_misses_by_identity_then_hits_by_digest(tmp_path, user_value, settled):
    prog, ar = _program(tmp_path / "src")
    _link(_fresh(tmp_path / "cache"), prog, ar, user_value[1])[0].close()
    prog.write_bytes(prog.read_bytes())  # the same bytes: a new ctime, so a new identity
    again = _fresh(tmp_path / "cache")
    ln, _ = _link(again, prog, ar, user_value[1])
    assert again.stats["inputs"]["misses"] == 1 and again.stats["batches"]["hits"] == 1
    assert again.stats["inputs"]["stores"] == 1  # recorded under the new identity
    ln.close()
    third = _fresh(tmp_path / "cache")
    ln, _ = _link(third, prog, ar, user_value[1])
    assert third.stats["inputs"]["hits"] == 1
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


@pytest.mark.parametrize("which", ["object", "archive"])
def test_a_changed_input_misses_by_identity_and_by_digest(tmp_path, user_value, settled, which):
    prog, ar = _program(tmp_path / "src")
    _link(_fresh(tmp_path / "cache"), prog, ar, user_value[1])[0].close()
    if which == "object":
        prog2 = compile_c(PROG.replace("* 1000", "* 2000"), tmp_path / "prog2.o", *CFLAGS)
        os.replace(prog2, prog)
        want = 4 * 3 + 5 + 22 + 10000
    else:
        _program(tmp_path / "src", factor=9)
        want = 4 * 9 + 5 + 22 + 5000
    again = _fresh(tmp_path / "cache")
    ln, _ = _link(again, prog, ar, user_value[1])
    assert again.stats["inputs"]["hits"] == 0 and again.stats["batches"]["hits"] == 0
    assert again.stats["batches"]["stores"] == 1 and again.stats["inputs"]["stores"] == 1
    assert _calls(ln)[0] == want
    ln.close()


def test_a_session_difference_makes_the_by_identity_entry_stale(tmp_path, user_value, settled):
    prog, ar = _program(tmp_path / "src")
    _link(_fresh(tmp_path / "cache"), prog, ar, user_value[1])[0].close()
    lib = Linker()
    lib.add_object(compile_c("int helper(int x) { return -x; }", tmp_path / "h.o", *CFLAGS))
    lib.finalize()
    again = _fresh(tmp_path / "cache")
    ln, _ = _link(again, prog, ar, user_value[1], lambda ln: ln.define("helper", lib.lookup("helper")))
    assert again.stats["inputs"]["stale"] == 1 and again.stats["batches"]["stale"] == 1
    ref, _ = _link(False, prog, ar, user_value[1], lambda ln: ln.define("helper", lib.lookup("helper")))
    assert _calls(ln) == _calls(ref)
    ref.close()
    ln.close()
    lib.close()


@pytest.mark.parametrize("damage", ["flip", "undecodable"])
def test_a_damaged_by_identity_entry_falls_back(tmp_path, user_value, settled, damage):
    from rtdyld.linkcache.container import pack

    prog, ar = _program(tmp_path / "src")
    _link(_fresh(tmp_path / "cache"), prog, ar, user_value[1])[0].close()
    (entry,) = (tmp_path / "cache").glob("inputs/*.ent")
    if damage == "flip":
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0x40
        entry.write_bytes(bytes(data))
    else:
        entry.write_bytes(pack(bytes.fromhex(entry.stem), {"segments": []}, {}))  # checksum fine, content not
    again = _fresh(tmp_path / "cache")
    ln, _ = _link(again, prog, ar, user_value[1])
    assert again.stats["inputs"]["corrupt"] == 1 and again.stats["batches"]["hits"] == 1
    assert again.stats["inputs"]["stores"] == 1  # rewritten from the entry found by digest
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()
    # Both entries damaged: a cold link.
    for e in (tmp_path / "cache").glob("*/*.ent"):
        if e.parent.name in ("inputs", "batches"):
            e.write_bytes(b"")
    last = _fresh(tmp_path / "cache")
    ln, _ = _link(last, prog, ar, user_value[1])
    assert last.stats["inputs"]["corrupt"] == 1 and last.stats["batches"]["corrupt"] == 1
    assert last.stats["batches"]["stores"] == 1
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


def test_a_by_identity_entry_that_restores_but_does_not_adopt_leaves_no_memory_behind(tmp_path, user_value,
                                                                                     settled):
    from rtdyld.linkcache.container import pack, unpack

    prog, ar = _program(tmp_path / "src")
    _link(_fresh(tmp_path / "cache"), prog, ar, user_value[1])[0].close()
    (entry,) = (tmp_path / "cache").glob("inputs/*.ent")
    key = bytes.fromhex(entry.stem)
    meta, blobs = unpack(entry.read_bytes(), key)
    meta["inputs"]["archives"].append(meta["inputs"]["archives"][0])  # one archive more than the session searches
    entry.write_bytes(pack(key, meta, dict(blobs.items()), blobs.tail))  # checksums fine
    again = _fresh(tmp_path / "cache")
    before = {id(a) for a in rtdyld.linker.default_memory().live_allocations()}
    ln, h = _link(again, prog, ar, user_value[1])
    assert again.stats["inputs"]["corrupt"] == 1 and again.stats["batches"]["hits"] == 1
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    assert [a for a in ln.memory.live_allocations() if id(a) not in before] == [h.batch.allocation]
    ln.close()


def test_an_object_added_by_path_is_read_when_needed_and_its_errors_named(tmp_path):
    from rtdyld.errors import LinkError, MalformedObjectError

    ln = Linker(link_cache=tmp_path / "cache")
    with pytest.raises(MalformedObjectError, match="missing.o: cannot read"):
        ln.add_object(tmp_path / "missing.o")
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"\x7fELF" + b"\0" * 12)
    obj = ln.add_object(bad)
    assert obj.name == str(bad)
    with pytest.raises(LinkError, match="bad.o"):
        ln.finalize()
    ln.close()


@pytest.mark.parametrize("head, tail", [(100, 5000), (3000, 40_000), (50_000, 100), (50_000, 70_000), (10, 0)])
def test_an_entry_tail_read_into_place_and_every_damage_refused(tmp_path, head, tail):
    from rtdyld.linkcache.container import FIRST_READ, CorruptEntry, open_entry, pack

    key = bytes(range(32))
    rng = np.random.default_rng(head + tail)
    blob = rng.integers(0, 256, head, dtype=np.uint8)
    image_bytes = rng.integers(0, 256, tail, dtype=np.uint8).tobytes()
    whole = pack(key, {"n": head, "rows": [[1, -2], ["a", None]]}, {"b": blob}, image_bytes)
    # Read whole at once, or the head in two reads, or the tail after the first read.
    assert (len(whole) < FIRST_READ) == (head + tail < 10_000)
    path = tmp_path / "e.ent"

    def read(data: bytes) -> bytes:
        path.write_bytes(data)
        with open_entry(str(path), key) as opened:
            assert opened.meta == {"n": head, "rows": [[1, -2], ["a", None]]}
            assert bytes(opened.blobs["b"]) == blob.tobytes()
            into = np.full(tail + 3, 0xEE, np.uint8)
            opened.read_tail_into(into)
            assert into[tail:].tolist() == [0xEE] * 3
            return into[:tail].tobytes()

    assert read(whole) == image_bytes
    with open_entry(str(path), key) as opened:
        assert opened.tail_bytes() == image_bytes
    meta, blobs = unpack(whole, key)
    assert meta["n"] == head and bytes(blobs.tail) == image_bytes
    # A byte flipped anywhere (header, metadata, blobs, the image where it landed), the file
    # cut short or extended, another key: refused.
    for at in sorted({0, 20, 60, 70, 90, len(whole) - tail - 1, len(whole) - tail, len(whole) - tail // 2,
                      len(whole) - 1}):
        if not 0 <= at < len(whole):
            continue
        damaged = bytearray(whole)
        damaged[at] ^= 0x10
        with pytest.raises(CorruptEntry):
            read(bytes(damaged))
        with pytest.raises(CorruptEntry):
            unpack(bytes(damaged), key)
    for damaged in {whole[:-1], whole[: len(whole) - tail - 1], whole + b"\0", whole[:40], b""}:
        with pytest.raises(CorruptEntry):
            read(damaged)
    path.write_bytes(whole)
    with pytest.raises(CorruptEntry):
        open_entry(str(path), bytes(32))


def test_a_damaged_image_is_refused_where_it_landed(tmp_path, user_value, settled):
    prog, ar = _program(tmp_path / "src")
    _link(_fresh(tmp_path / "cache"), prog, ar, user_value[1])[0].close()
    for entry in (tmp_path / "cache").glob("*/*.ent"):
        if entry.parent.name in ("inputs", "batches"):
            data = bytearray(entry.read_bytes())
            data[-5] ^= 0x01  # in the image, the entry's tail
            entry.write_bytes(bytes(data))
    again = _fresh(tmp_path / "cache")
    ln, _ = _link(again, prog, ar, user_value[1])
    assert again.stats["inputs"]["corrupt"] == 1 and again.stats["batches"]["corrupt"] == 1
    assert any("tail" in why for _, what, why in again.events if what == "corrupt")
    assert again.stats["batches"]["stores"] == 1 and again.stats["inputs"]["stores"] == 1
    assert _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()
    last = _fresh(tmp_path / "cache")
    ln, _ = _link(last, prog, ar, user_value[1])
    assert last.stats["inputs"]["hits"] == 1 and _calls(ln) == (4 * 3 + 5 + 22 + 5000, 7, 42)
    ln.close()


def test_a_by_identity_key_depends_on_the_values_alone_and_tells_any_part_apart():
    from types import SimpleNamespace

    from rtdyld.linkcache import by_identity

    def key(obj_path="/src/prog.o", ident=(1, 2, 3, 1 << 62, (1 << 62) + 5), offsets=(8, 68), kept=("g",),
            identity=None, memory="MemoryManager"):
        obj = SimpleNamespace(name="prog.o")
        setattr(obj, by_identity.INPUT_ATTR, SimpleNamespace(path=obj_path, ident=ident))
        archive = SimpleNamespace(name="libx.a", source=SimpleNamespace(path="/lib/libx.a", ident=(4, 5, 6, 7, 8)))
        return by_identity.key(identity or {"rtdyld": "1", "format": 5, "code": "c"}, [obj], [archive],
                               [list(offsets)], list(kept), memory, 5)

    base = key()
    # Equal values built anew (strings neither interned nor shared, other reference counts): the same key.
    stem = "prog"
    fresh = f"/src/{stem}.o"
    assert key(obj_path=fresh, ident=tuple(int(str(v)) for v in (1, 2, 3, 1 << 62, (1 << 62) + 5))) == base
    others = [key(obj_path="/src/prog2.o"), key(ident=(1, 2, 3, 1 << 62, (1 << 62) + 6)), key(offsets=(8,)),
              key(kept=()), key(identity={"rtdyld": "2", "format": 5, "code": "c"}), key(memory="VirtualMemory"),
              key(obj_path="/src/\udcffprog.o")]  # an undecodable byte of a file name
    assert len({base, *others}) == len(others) + 1

    class Name(str):  # a value marshal refuses: keyed by its exact repr instead
        pass

    assert key(obj_path=Name("/src/prog.o")) not in (base, None)
    # The same key in another process.
    code = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(Path(__file__).parent)!r}];"
            "import test_link_cache as t; print(t._key_of_the_default_batch().hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == _key_of_the_default_batch().hex()


def _key_of_the_default_batch() -> bytes:
    from types import SimpleNamespace

    from rtdyld.linkcache import by_identity

    obj = SimpleNamespace(name="prog.o")
    setattr(obj, by_identity.INPUT_ATTR, SimpleNamespace(path="/src/prog.o", ident=(1, 2, 3, 1 << 62, 9)))
    archive = SimpleNamespace(name="libx.a", source=SimpleNamespace(path="/lib/libx.a", ident=(4, 5, 6, 7, 8)))
    return by_identity.key({"rtdyld": "1", "format": 5, "code": "c"}, [obj], [archive], [[8]], ["g"],
                           "MemoryManager", 5)
