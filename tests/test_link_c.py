"""Link gcc-built objects and call them, across optimisation levels and code models.

Every test in the matrix compiles its fixtures from fixtures/c with one of
``C_FLAG_SETS`` (-O0/-O2 x -fPIC/-fPIE/-fno-pic/-mcmodel=medium/-mcmodel=large),
links them with rtdyld and checks what the linked code computes and what the
linked data holds.
"""

from __future__ import annotations

import errno
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from cffi import FFI
from fixtures_build import C_FLAG_SETS, REPO

import rtdyld

ffi = FFI()

# Host data (stdout, environ) is out of reach of -fno-pic code placed below
# 2 GiB; test_errors checks that such a link fails with a LayoutError.
HOST_DATA_FLAG_SETS = [k for k, flags in C_FLAG_SETS.items() if "-fno-pic" not in flags]


@pytest.fixture(params=list(C_FLAG_SETS))
def cflags(request) -> tuple[str, ...]:
    return C_FLAG_SETS[request.param]


def link(build, flags, *sources, define=None, extra=()):
    """A new Linker with ``sources`` compiled by gcc and linked in one batch."""
    ln = rtdyld.Linker()
    for name, value in (define or {}).items():
        ln.define(name, value)
    for src in sources:
        ln.add_object(build.cc(src, *flags, *extra))
    return ln, ln.finalize()


def read_pointers(addr: int, n: int) -> list[int]:
    return list(ffi.unpack(ffi.cast("uintptr_t *", addr), n))


def read_bytes(addr: int, n: int) -> bytes:
    return ffi.buffer(ffi.cast("char *", addr), n)[:]


def address(ptr) -> int:
    return int(ffi.cast("uintptr_t", ptr))


# --- cross-object references -------------------------------------------------


def test_cross_object_calls_and_data(build, cflags):
    ln, _ = link(build, cflags, "xa.c", "xb.c")
    f = lambda name, sig="int(int)": ln.function(name, sig)

    assert f("a_plus")(5) == 12
    assert f("a_calls_b")(5) == 2 * 5 + 100
    assert f("b_calls_a")(5) == (5 + 7) * 3
    assert [f("a_via_table", "int(int, int)")(i, 4) for i in range(3)] == [8, 11, 4002]
    assert [f("b_via_table", "int(int, int)")(i, 4) for i in range(2)] == [11, 8]
    assert [f("a_read_ptr")(i) for i in range(2)] == [100, 7]
    assert [f("a_read_b_ptrs")(i) for i in range(2)] == [7, 100]
    assert [f("b_read_a_ptrs")(i) for i in range(2)] == [100, 7]
    # Same-named statics in the two objects stay distinct.
    assert f("a_local_tag", "int(void)")() == 1
    assert f("b_local_tag", "int(void)")() == 2

    f("b_set_a", "void(int)")(50)
    assert f("a_plus")(1) == 51
    assert f("a_read_ptr")(1) == 50
    assert f("a_read_b_ptrs")(0) == 50


def test_cross_object_pointer_tables_hold_symbol_addresses(build, cflags):
    ln, _ = link(build, cflags, "xa.c", "xb.c")
    sym = ln.lookup

    assert read_pointers(sym("a_ptrs"), 2) == [sym("b_value"), sym("a_value")]
    assert read_pointers(sym("b_ptrs"), 2) == [sym("a_value"), sym("b_value")]
    assert read_pointers(sym("a_fns"), 2) == [sym("b_twice"), sym("a_plus")]
    assert read_pointers(sym("b_fns"), 2) == [sym("a_plus"), sym("b_twice")]
    assert np.frombuffer(read_bytes(sym("b_value"), 4), "<i4")[0] == 100


def test_link_order_does_not_matter(build):
    flags = C_FLAG_SETS["O2-pie"]
    ln, _ = link(build, flags, "xb.c", "xa.c")
    assert ln.function("a_calls_b", "int(int)")(5) == 110
    assert ln.function("b_calls_a", "int(int)")(5) == 36


def test_debug_sections_are_not_loaded(build, cflags):
    ln, _ = link(build, cflags, "xa.c", "xb.c", extra=("-g",))
    assert ln.function("a_calls_b", "int(int)")(5) == 110
    assert read_pointers(ln.lookup("b_fns"), 1) == [ln.lookup("a_plus")]


# --- tables, switches, constants ---------------------------------------------


def test_function_pointer_tables(build, cflags):
    ln, _ = link(build, cflags, "fptr.c")
    apply_ro = ln.function("apply_ro", "int(int, int, int)")
    apply_rw = ln.function("apply_rw", "int(int, int, int)")

    assert [apply_ro(i, 9, 5) for i in range(4)] == [14, 4, 45, 12]
    assert [apply_rw(i, 9, 5) for i in range(4)] == [12, 45, 4, 14]
    ops = [ln.lookup(n) for n in ("op_add", "op_sub", "op_mul", "op_xor")]
    assert read_pointers(ln.lookup("ops_ro"), 4) == ops
    assert read_pointers(ln.lookup("ops_rw"), 4) == ops[::-1]

    ln.function("swap_rw", "void(int, int)")(0, 2)
    assert [apply_rw(i, 9, 5) for i in range(4)] == [4, 45, 12, 14]


def expected_switch(sel: int, x: int) -> int:
    cases = {
        0: x + 11,
        1: (x - 5) * 2,
        2: x * x + 1,
        3: (x ^ 255) - 3,
        4: x << 4,
        5: x - 5 + 11,
        6: x // 3,
        7: x * x + (x << 4),
        8: (x + 11) ^ 255,
        9: -x,
        10: (x - 5) * (x - 5),
        11: 77,
    }
    return cases.get(sel, -1)


def test_switch_jump_table(build, cflags):
    ln, _ = link(build, cflags, "switch.c")
    dense_switch = ln.function("dense_switch", "int(int, int)")
    for x in (0, 7, 100):
        got = [dense_switch(sel, x) for sel in range(-2, 14)]
        assert got == [expected_switch(sel, x) for sel in range(-2, 14)], x


def djb_xor(s: bytes) -> int:
    h = 5381
    for c in s:
        h = ((h * 33) ^ c) & 0xFFFFFFFF
    return h


def test_string_constants(build, cflags):
    ln, _ = link(build, cflags, "strings.c")
    word = ln.function("word", "const char *(int)")

    assert [ffi.string(word(i)) for i in range(4)] == [b"alpha", b"beta", b"gamma", b"delta"]
    assert ln.function("total_len", "int(void)")() == 19
    assert read_bytes(ln.lookup("banner"), 14) == b"rtdyld banner\0"
    buf = ffi.new("char[32]")
    ln.function("copy_banner", "void(char *)")(buf)
    assert ffi.string(buf) == b"rtdyld banner"
    hash_str = ln.function("hash_str", "unsigned(const char *)")
    assert hash_str(b"abc") == djb_xor(b"abc")
    assert ln.function("hash_of_literal", "unsigned(void)")() == djb_xor(b"the quick brown fox")


def test_double_and_vector_constants(build, cflags):
    ln, _ = link(build, cflags, "fpvec.c")
    poly = ln.function("poly", "double(double)")
    scale = ln.function("scale", "double(double)")
    for x in (0.0, 0.5, -3.25, 10.0, 1e-3):
        assert poly(x) == ((1.5 * x - 2.25) * x + 0.125) * x + 3.0
        assert scale(x) == x * 3.25 - 0.0625
    assert ln.function("dot2", "double(double, double)")(2.0, 4.0) == 2.0 * 0.5 + 4.0 * -1.25

    src = np.array([1.0, 2.0, -4.0, 0.5], dtype=np.float32)
    out = ffi.new("float[4]")
    ln.function("axpb4", "void(float *, const float *)")(out, ffi.from_buffer("float[]", src))
    a = np.array([1.5, -2.0, 0.25, 8.0], dtype=np.float32)
    b = np.array([0.5, 10.0, -1.0, 3.0], dtype=np.float32)
    assert list(out) == list(src * a + b)


def test_big_bss(build, cflags):
    ln, handle = link(build, cflags, "bigbss.c")
    size = 32 << 20
    base = ln.lookup("big_array")

    assert ln.function("big_size", "unsigned long(void)")() == size
    assert address(ln.function("big_addr", "char *(void)")()) == base
    assert ln.function("touch_big", "int(void)")() == 3
    assert read_bytes(base, 1) == b"\x01"
    assert read_bytes(base + size - 1, 1) == b"\x02"
    assert read_bytes(base + 1, 4096) == bytes(4096)
    assert read_bytes(base + size // 2, 4096) == bytes(4096)
    assert read_bytes(base + size - 4097, 4096) == bytes(4096)
    handle.remove()


# --- symbol semantics ----------------------------------------------------------


def test_common_symbols_take_largest_size_and_alignment(build, cflags):
    ln, _ = link(build, cflags, "common_a.c", "common_b.c", extra=("-fcommon",))
    buf = ln.lookup("shared_buf")
    counter = ln.lookup("shared_counter")

    assert address(ln.function("a_buf", "char *(void)")()) == buf
    assert address(ln.function("b_buf", "char *(void)")()) == buf
    assert address(ln.function("a_counter", "int *(void)")()) == counter
    assert buf % 64 == 0
    assert counter + 4 <= buf or buf + 256 <= counter
    assert read_bytes(buf, 256) == bytes(256)
    assert ln.function("buf_sum", "int(void)")() == 0

    bump = ln.function("bump_counter", "int(void)")
    assert [bump() for _ in range(3)] == [1, 2, 3]
    assert ln.function("read_counter", "int(void)")() == 3
    ln.function("fill_buf", "void(int)")(1)
    assert ln.function("buf_sum", "int(void)")() == 256
    assert ln.function("read_counter", "int(void)")() == 3


def test_weak_defaults_and_weak_undefined(build, cflags):
    ln, _ = link(build, cflags, "weak_a.c")
    assert ln.function("call_tunable", "int(void)")() == 1
    assert ln.function("read_weak_value", "int(void)")() == 10
    assert ln.function("has_maybe_missing", "int(void)")() == 0
    assert ln.function("missing_data_is_null", "int(void)")() == 1
    assert ln.function("call_maybe_missing", "int(void)")() == -1


@pytest.mark.parametrize("order", [("weak_a.c", "weak_b.c"), ("weak_b.c", "weak_a.c")])
def test_strong_definition_overrides_weak(build, cflags, order):
    ln, _ = link(build, cflags, *order)
    assert ln.function("call_tunable", "int(void)")() == 2
    assert ln.function("read_weak_value", "int(void)")() == 20
    assert np.frombuffer(read_bytes(ln.lookup("weak_value"), 4), "<i4")[0] == 20


# --- initialisers and finalisers ---------------------------------------------


def test_constructors_and_destructors_run_in_priority_order(build, cflags, callback):
    notes: list[int] = []
    note = callback("void(int)", notes.append)
    ln, handle = link(build, cflags, "ctors.c", "ctors2.c", define={"note_dtor": note})

    assert ffi.string(ln.function("ctor_log", "const char *(void)")()) == b"abxc"
    assert notes == []
    handle.remove()
    assert notes == [65535, 150, 102, 101]


def test_destructors_run_at_interpreter_exit(build):
    obj = build.cc("prog/fini.c", *C_FLAG_SETS["O2-pie"])
    script = textwrap.dedent(
        f"""
        import rtdyld
        ln = rtdyld.Linker()
        ln.add_object({str(obj)!r})
        ln.finalize()
        print("answer", ln.function("answer", "int(void)")(), flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "answer 42\nfini ran\n"


def test_legacy_ctors_and_dtors(build, cflags, callback):
    notes: list[int] = []
    ln, handle = link(build, cflags, "legacy_ctors.c", define={"note_dtor": callback("void(int)", notes.append)})
    assert ffi.string(ln.function("legacy_log", "const char *(void)")()) == b"21"
    assert notes == []
    handle.remove()
    assert notes == [1, 2]


# --- calls between linked code and its host ----------------------------------


def test_host_qsort_calls_linked_comparator(build, cflags, libc):
    ln, _ = link(build, cflags, "sortcmp.c")
    values = [5, -3, 99, 0, 42, 7, -100, 8]
    arr = ffi.new("int[]", values)
    ln.function("sort_ints", "void(int *, unsigned long)")(arr, len(values))
    assert list(arr) == sorted(values)

    host_ffi, lib = libc
    cmp_desc = host_ffi.cast("int(*)(const void *, const void *)", ln.lookup("cmp_desc"))
    lib.qsort(arr, len(values), 4, cmp_desc)
    assert list(arr) == sorted(values, reverse=True)


def test_linked_code_calls_python(build, cflags, callback):
    reports: list[tuple[bytes, int]] = []
    hook = callback("long(long)", lambda x: x * 3)
    report = callback("void(const char *, int)", lambda s, n: reports.append((ffi.string(s), n)))
    define = {"py_hook": hook, "py_report": address(report)}
    ln, _ = link(build, cflags, "pyhooks.c", define=define)

    assert ln.function("call_hook_twice", "long(long)")(5) == 5 * 9 + 1
    assert ln.function("report_three", "int(void)")() == 3
    assert reports == [(b"one", 1), (b"two", 2), (b"three", 3)]


def test_load_library(build, cflags):
    ln = rtdyld.Linker()
    ln.load_library("m")
    ln.add_object(build.cc("usesm.c", *cflags))
    ln.finalize()
    my_cos = ln.function("my_cos", "double(double)")
    assert [my_cos(x) for x in (0.0, 0.5, 2.0)] == [math.cos(x) for x in (0.0, 0.5, 2.0)]


def test_load_library_that_does_not_exist():
    ln = rtdyld.Linker()
    with pytest.raises(rtdyld.LinkError, match="rtdyld_no_such_library"):
        ln.load_library("rtdyld_no_such_library")


@pytest.mark.parametrize("flag_set", HOST_DATA_FLAG_SETS)
def test_host_data(build, flag_set, libc, monkeypatch, capfd):
    ln, _ = link(build, C_FLAG_SETS[flag_set], "hostdata.c")
    host_ffi, lib = libc

    def ptr(name: str) -> int:
        return address(ln.function(name, "void *(void)")())

    assert ptr("host_stdout") == address(lib.stdout)
    assert ptr("host_stderr") == address(lib.stderr)
    assert ptr("host_environ") == address(lib.environ)

    monkeypatch.setenv("RTDYLD_FIXTURE_VAR", "forty-two")
    env_value = ln.function("env_value", "const char *(const char *)")
    assert ffi.string(env_value(b"RTDYLD_FIXTURE_VAR")) == b"forty-two"
    assert env_value(b"RTDYLD_NO_SUCH_VARIABLE") == ffi.NULL

    capfd.readouterr()
    assert ln.function("write_stdout", "int(const char *)")(b"through host stdout\n") >= 0
    ln.function("write_stderr", "int(const char *)")(b"through host stderr\n")
    lib.fflush(host_ffi.NULL)
    out, err = capfd.readouterr()
    assert out == "through host stdout\n"
    assert err == "through host stderr\n"


def test_errno(build, cflags):
    ln, _ = link(build, cflags, "errnum.c")
    strtol_errno = ln.function("strtol_errno", "int(const char *, long *)")
    out = ffi.new("long *")
    assert strtol_errno(b"99999999999999999999", out) == errno.ERANGE
    assert out[0] == 2**63 - 1
    assert strtol_errno(b"-123", out) == 0
    assert out[0] == -123


# --- the resolver chain and batches -------------------------------------------


def test_later_batch_resolves_against_earlier(build, cflags):
    ln = rtdyld.Linker()
    ln.add_object(build.cc("fptr.c", *cflags))
    ln.finalize()
    ln.add_object(build.cc("fptr_user.c", *cflags))
    ln.finalize()
    # op_mul(6, 3) + ops_rw[3](6, 3), and ops_rw[3] is op_add
    assert ln.function("use_ops", "int(int, int)")(6, 3) == 18 + 9


def test_define_shadows_the_process(build, callback):
    flags = C_FLAG_SETS["O2-pie"]
    ln, _ = link(build, flags, "resolver.c")
    assert ln.function("measure", "unsigned long(const char *)")(b"abcd") == 4

    fake_strlen = callback("unsigned long(const char *)", lambda s: 1234)
    ln2, _ = link(build, flags, "resolver.c", define={"strlen": fake_strlen})
    assert ln2.function("measure", "unsigned long(const char *)")(b"abcd") == 1234


def test_batch_and_earlier_batches_come_before_define(build, callback):
    flags = C_FLAG_SETS["O2-pie"]
    wrong = callback("int(int, int)", lambda a, b: -1)
    ln = rtdyld.Linker()
    ln.define("op_add", wrong)
    ln.define("op_mul", wrong)
    ln.add_object(build.cc("fptr.c", *flags))
    ln.finalize()
    assert ln.function("apply_ro", "int(int, int, int)")(0, 9, 5) == 14
    ln.add_object(build.cc("fptr_user.c", *flags))
    ln.finalize()
    assert ln.function("use_ops", "int(int, int)")(6, 3) == 27


def test_inputs_as_path_bytes_and_file_object(build):
    flags = C_FLAG_SETS["O2-pie"]
    ln = rtdyld.Linker()
    ln.add_object(str(build.cc("xa.c", *flags)))
    ln.add_object(build.cc_bytes("xb.c", *flags), name="xb-from-bytes.o")
    with open(build.cc("fptr.c", *flags), "rb") as f:
        ln.add_object(f)
    ln.finalize()
    assert ln.function("a_calls_b", "int(int)")(5) == 110
    assert ln.function("apply_ro", "int(int, int, int)")(2, 9, 5) == 45


def test_remove_unpublishes_and_allows_relinking(build):
    flags = C_FLAG_SETS["O2-pie"]
    ln = rtdyld.Linker()
    ln.add_object(build.cc("xa.c", *flags))
    ln.add_object(build.cc("xb.c", *flags))
    handle = ln.finalize()
    assert ln.function("a_calls_b", "int(int)")(1) == 102
    handle.remove()
    with pytest.raises(rtdyld.UndefinedSymbolError, match="a_calls_b"):
        ln.lookup("a_calls_b")

    ln.add_object(build.cc("xa.c", *flags))
    ln.add_object(build.cc("xb.c", *flags))
    ln.finalize()
    assert ln.function("a_calls_b", "int(int)")(1) == 102
