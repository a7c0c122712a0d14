"""Indirect stubs, hot swap and lazy compilation.

The resolver's machine code is checked instruction by instruction with
capstone; everything else by running linked code: first calls with every
kind of argument register (integers, doubles, varargs counting on %al, stack
arguments) must return what a direct call returns, recursion and mutual
recursion go through stubs, several threads making the first call compile
once, a hot swap under a calling thread never shows anything but the old or
the new result, and a failing compile function aborts the process (in a
child) unless a fallback is registered.  Removing a batch a stub jumps into
is refused, or forced onto the fallback or an aborting trap; ``close``
releases every stub, trampoline and resolver; ``call *GOT`` sites of a
stubbed name use the stub's slot; and a lazy function being compiled may be
called from an initializer inside ``finalize`` without deadlock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import capstone
import numpy as np
import pytest
from fixtures_build import FIXTURES, REPO

import rtdyld
from rtdyld import compile_callbacks
from rtdyld.lazy import STUB_ORIGIN
from rtdyld.x86_64 import indirection

LAZY = FIXTURES / "lazy"
PIE = ("-O2", "-fPIE")
MD = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)


@pytest.fixture(autouse=True)
def resolver_callback_is_host(wx_guard):
    """The resolver's cffi callback is a libffi closure: host memory, like the conftest's callbacks."""
    wx_guard.allow_page_of(compile_callbacks.callback_address())


def disasm(code: bytes, address: int) -> list[str]:
    insns = list(MD.disasm(code, address))
    assert sum(i.size for i in insns) == len(code), "bytes capstone could not decode"
    return [f"{i.mnemonic} {i.op_str}".strip() for i in insns]


def version_ir(k: int) -> str:
    return f"define i64 @version() {{\n  ret i64 {k}\n}}\n"


def run_python(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """A child Python that imports rtdyld from this repository."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def sum_ints(*a: int) -> int:
    return sum((i + 1) * x for i, x in enumerate(a))


# --- machine code -----------------------------------------------------------------------------


def test_resolver_disassembles_to_the_documented_sequence():
    saves = [f"movaps xmmword ptr [rsp{f' + {16 * i:#x}' if i else ''}], xmm{i}" for i in range(8)]
    loads = [f"movaps xmm{i}, xmmword ptr [rsp{f' + {16 * i:#x}' if i else ''}]" for i in range(8)]
    expected = [
        "push rbp",
        "mov rbp, rsp",
        *(f"push {r}" for r in ("rax", "rdi", "rsi", "rdx", "rcx", "r8", "r9", "r10")),
        "sub rsp, 0x80",
        "and rsp, 0xfffffffffffffff0",
        *saves,
        "mov rdi, r11",
        "movabs rax, 0x1122334455667788",
        "call rax",
        "mov r11, rax",
        *loads,
        "lea rsp, [rbp - 0x40]",
        *(f"pop {r}" for r in ("r10", "r9", "r8", "rcx", "rdx", "rsi", "rdi", "rax")),
        "pop rbp",
        "jmp r11",
    ]
    assert disasm(indirection.resolver(0x1122334455667788), 0x10000) == expected


def test_stub_and_trampoline_encodings():
    stub = indirection.stub(0x10000, 0x11008)
    assert len(stub) == indirection.STUB_SIZE
    insns = list(MD.disasm(stub, 0x10000))
    assert [i.mnemonic for i in insns] == ["jmp", "int3", "int3"]
    assert insns[0].op_str == f"qword ptr [rip + {0x11008 - 0x10006:#x}]"

    tramp = indirection.trampoline(0x20000, 77, 0x30000)
    assert len(tramp) == indirection.TRAMPOLINE_SIZE
    assert disasm(tramp, 0x20000) == ["movabs r11, 0x4d", "jmp 0x30000", "int3"]
    with pytest.raises(ValueError, match="out of reach"):
        indirection.trampoline(0x20000, 1, 0x20000 + (1 << 32))


def test_resolver_in_memory_is_sealed_and_calls_the_callback(maps):
    ln = rtdyld.Linker()
    ln.add_lazy("nothing_yet", lambda: 1)
    cc = ln._compile_callbacks
    code = bytes(cc.resolver_allocation.memory[: len(indirection.resolver(0))])
    assert code == indirection.resolver(compile_callbacks.callback_address())
    assert maps.mapping_of(cc.resolver_address).perms == "r-xp"


# --- stubs ------------------------------------------------------------------------------------


def test_stub_is_published_code_rx_slot_rw_and_update_is_one_slot_store(build, maps):
    ln = rtdyld.Linker()
    ln.add_module(version_ir(1), name="v1.ll")
    v1 = ln.finalize()
    v1_addr = ln.lookup("version")
    stub = ln.stubs.create("version")
    assert ln.stubs.address("version") == stub == ln.lookup("version")
    assert ln.symbol("version").origin == STUB_ORIGIN
    assert ln.stubs.target("version") == v1_addr
    code_map, slot_map = maps.mapping_of(stub), maps.mapping_of(ln.stubs.stub("version").slot_address)
    assert code_map.perms == "r-xp" and slot_map.perms == "rw-p"
    slot = ln.stubs.stub("version").slot_address
    assert disasm(ctypes_bytes(stub, 6), stub) == [f"jmp qword ptr [rip + {slot - stub - 6:#x}]"]

    ln.add_object(build.cc(LAZY / "loop.c", *PIE))
    ln.finalize()
    call_many = ln.function("call_many", "long(long)")
    assert call_many(10) == 10

    ln.add_module(version_ir(3).replace("@version", "@version_three"), name="v3.ll")
    ln.finalize()
    ln.stubs.update("version", "version_three")
    assert ln.stubs.target("version") == ln.lookup("version_three")
    assert call_many(10) == 30
    ln.stubs.update("version", v1_addr)
    assert call_many(10) == 10
    assert not v1.removed


def ctypes_bytes(address: int, n: int) -> bytes:
    import ctypes

    return ctypes.string_at(address, n)


def test_stub_errors_name_the_symbol():
    ln = rtdyld.Linker()
    with pytest.raises(rtdyld.UsageError, match="'nowhere_at_all'"):
        ln.stubs.create("nowhere_at_all")
    with pytest.raises(rtdyld.UsageError, match="'nothing'.*no indirect stub"):
        ln.stubs.update("nothing", 0x1000)
    ln.stubs.create("fixed", 0x1000)
    with pytest.raises(rtdyld.UsageError, match="already has an indirect stub"):
        ln.stubs.create("fixed", 0x2000)


def test_many_stubs_grow_in_chunks():
    from rtdyld.lazy import STUBS_PER_CHUNK

    ln = rtdyld.Linker()
    addrs = [ln.stubs.create(f"s{i}", 0x1000 + i) for i in range(STUBS_PER_CHUNK + 3)]
    assert len(set(addrs)) == len(addrs)
    assert len(ln.stubs._chunks) == 2
    assert [ln.stubs.target(f"s{i}") for i in (0, STUBS_PER_CHUNK + 2)] == [0x1000, 0x1000 + STUBS_PER_CHUNK + 2]


# --- hot swap ----------------------------------------------------------------------------------


def test_replace_repoints_callers_and_removes_the_old_batch(build):
    ln = rtdyld.Linker()
    ln.stubs.create("version", 1)  # a placeholder until the first real definition
    ln.add_object(build.cc(LAZY / "loop.c", *PIE))
    ln.finalize()
    call_many = ln.function("call_many", "long(long)")
    first = ln.replace("version", version_ir(1))
    assert call_many(5) == 5
    second = ln.replace("version", version_ir(2))
    assert call_many(5) == 10
    assert not first.removed  # within the grace period
    assert ln.stubs.reclaim(grace=0) == [first]
    assert first.removed and not second.removed
    third = ln.replace("version", version_ir(3), keep_old=True)
    ln.stubs.reclaim(grace=0)
    assert call_many(5) == 15
    assert not second.removed and not third.removed
    assert ln.lookup("version") == ln.stubs.address("version")


def test_replace_keeps_an_old_batch_that_others_call_directly(build):
    ln = rtdyld.Linker()
    ln.add_module(version_ir(1), name="v1.ll")
    v1 = ln.finalize()
    ln.add_object(build.cc(LAZY / "loop.c", *PIE))  # linked before the stub: binds to v1 itself
    ln.finalize()
    direct = ln.function("call_many", "long(long)")
    ln.replace("version", version_ir(2))
    ln.stubs.reclaim(grace=0)
    assert not v1.removed
    assert direct(4) == 4
    assert ln.function("version", "long()")() == 2


def test_replace_accepts_objects_and_requires_the_name(build):
    ln = rtdyld.Linker()
    ln.stubs.create("sum_ints", 1)
    ln.replace("sum_ints", build.cc(LAZY / "sum_ints.c", *PIE))
    assert ln.function("sum_ints", "long(long,long,long,long,long,long,long,long)")(*range(8)) == sum_ints(*range(8))
    with pytest.raises(rtdyld.UsageError, match="does not define 'sum_ints'"):
        ln.replace("sum_ints", version_ir(1))


def test_hot_swap_while_another_thread_calls_in_a_loop(build):
    ln = rtdyld.Linker()
    ln.stubs.create("version", 1)
    ln.replace("version", version_ir(1))
    ln.add_object(build.cc(LAZY / "loop.c", *PIE))
    ln.finalize()
    call_many = ln.function("call_many", "long(long)")
    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []
    n = 20_000

    def caller():
        while not stop.is_set():
            s = call_many(n)  # cffi releases the GIL: the swaps happen mid-loop
            if not n <= s <= 2 * n:
                errors.append(f"call_many({n}) = {s}")
            seen.append(s)

    t = threading.Thread(target=caller)
    t.start()
    try:
        for k in range(40):
            ln.replace("version", version_ir(1 + (k % 2)))
            time.sleep(0.002)
        ln.replace("version", version_ir(2))
        deadline = time.monotonic() + 30
        while not seen or seen[-1] != 2 * n:
            assert time.monotonic() < deadline, seen[-5:]
            time.sleep(0.01)
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:5]
    assert any(n < s < 2 * n for s in seen) or len(set(seen)) > 1


# --- compile callbacks ----------------------------------------------------------------------------


def test_first_calls_keep_integer_float_and_stack_arguments(build):
    ln = rtdyld.Linker()
    compiled = []

    def from_c(source):
        def compile_fn():
            compiled.append(source)
            return build.cc(LAZY / source, *PIE)

        return compile_fn

    ln.add_lazy("sum_ints", from_c("sum_ints.c"))
    ln.add_lazy("mix", from_c("mix.c"))
    ln.add_lazy("vsum", from_c("vsum.c"))
    ln.add_object(build.cc(LAZY / "callers.c", *PIE))
    ln.finalize()
    call_sum_ints = ln.function("call_sum_ints", "long(long)")
    call_mix = ln.function("call_mix", "double(double)")
    call_vsum = ln.function("call_vsum", "double(double)")

    def mix(k: float) -> float:
        xs = [k + 0.5 * i for i in range(8)]
        ints = [int(k), 2, 3, 4, 5, 6, 7]
        return sum((i + 1) * x for i, x in enumerate(xs)) + sum(10 * (i + 1) * v for i, v in enumerate(ints))

    def vsum(k: float) -> float:
        return sum((i + 1) * (k + i) for i in range(10))

    for k in (3, 11):  # the first call goes through the resolver, the second does not
        assert call_sum_ints(k) == sum_ints(*range(k, k + 8))
        assert call_mix(float(k)) == mix(float(k))
        assert call_vsum(float(k)) == vsum(float(k))
    assert compiled == ["sum_ints.c", "mix.c", "vsum.c"]
    assert ln.stubs.target("mix") == ln.stubs.stub("mix").handle.symbols[next(
        n for n in ln.stubs.stub("mix").handle.symbols if n.startswith("mix$impl"))].address


def test_first_call_from_python_with_eight_ints_and_eight_doubles():
    ln = rtdyld.Linker()
    args = ", ".join([f"i64 %i{k}" for k in range(8)] + [f"double %d{k}" for k in range(8)])
    body = ["  %s0 = fadd double %d0, 0.0"]
    for k in range(1, 8):
        body.append(f"  %m{k} = fmul double %d{k}, {float(k + 1)}")
        body.append(f"  %s{k} = fadd double %s{k - 1}, %m{k}")
    for k in range(8):
        body.append(f"  %f{k} = sitofp i64 %i{k} to double")
        body.append(f"  %n{k} = fmul double %f{k}, {float(100 * (k + 1))}")
        body.append(f"  %t{k} = fadd double {'%s7' if k == 0 else f'%t{k - 1}'}, %n{k}")
    ir = f"define double @wide({args}) {{\n" + "\n".join(body) + "\n  ret double %t7\n}\n"
    sig = "double(" + ", ".join(["int64_t"] * 8 + ["double"] * 8) + ")"
    wide = ln.add_lazy("wide", lambda: ir, signature=sig)
    ints, dbls = list(range(-3, 5)), [0.25 * k for k in range(8)]
    expected = sum((k + 1) * d for k, d in enumerate(dbls)) + sum(100 * (k + 1) * i for k, i in enumerate(ints))
    assert wide(*ints, *dbls) == expected
    assert wide(*ints, *dbls) == expected


FIB_EVEN_ODD = r"""
@calls = internal global i64 0

define i64 @fib(i64 %n) {
  %c = load i64, ptr @calls
  %c1 = add i64 %c, 1
  store i64 %c1, ptr @calls
  %small = icmp slt i64 %n, 2
  br i1 %small, label %base, label %rec
base:
  ret i64 %n
rec:
  %a = sub i64 %n, 1
  %b = sub i64 %n, 2
  %fa = call i64 @fib(i64 %a)
  %fb = call i64 @fib(i64 %b)
  %r = add i64 %fa, %fb
  ret i64 %r
}

define i64 @is_even(i64 %n) {
  %z = icmp eq i64 %n, 0
  br i1 %z, label %yes, label %no
yes:
  ret i64 1
no:
  %m = sub i64 %n, 1
  %r = call i64 @is_odd(i64 %m)
  ret i64 %r
}

define i64 @is_odd(i64 %n) {
  %z = icmp eq i64 %n, 0
  br i1 %z, label %yes, label %no
yes:
  ret i64 0
no:
  %m = sub i64 %n, 1
  %r = call i64 @is_even(i64 %m)
  ret i64 %r
}

define i64 @fib_calls() {
  %c = load i64, ptr @calls
  ret i64 %c
}
"""


def test_lazy_module_recursion_and_mutual_recursion_through_stubs():
    ln = rtdyld.Linker()
    ln.add_module(FIB_EVEN_ODD, name="rec.ll", lazy=True)
    ln.finalize()
    names = ("fib", "is_even", "is_odd", "fib_calls")
    stubs = {n: ln.stubs.stub(n) for n in names}
    assert all(s.handle is None for s in stubs.values())  # nothing compiled yet
    assert ln.function("fib", "long(long)")(15) == 610
    assert stubs["is_even"].handle is None
    # is_even calls is_odd through its stub: the resolver runs inside is_even's frame.
    assert ln.function("is_even", "long(long)")(9) == 0
    assert ln.function("is_odd", "long(long)")(9) == 1
    assert all(s.handle is not None for n, s in stubs.items() if n != "fib_calls")
    # The internal counter is one variable shared by the separately compiled functions.
    assert ln.function("fib_calls", "long()")() == 1973
    is_even_code = stubs["is_even"].handle
    assert ln.stubs.stub("is_odd").address in {e.address for _, lb in is_even_code.parts for e in lb.externals}


def test_concurrent_first_calls_compile_once():
    ln = rtdyld.Linker()
    compiled = []
    started = threading.Event()

    def compile_fn():
        compiled.append(threading.get_ident())
        started.set()
        time.sleep(0.3)  # let every other thread reach the resolver
        return "define i64 @slow(i64 %x) {\n  %r = mul i64 %x, 7\n  ret i64 %r\n}\n"

    slow = ln.add_lazy("slow", compile_fn, signature="int64_t(int64_t)")
    barrier = threading.Barrier(8)
    results: dict[int, int] = {}

    def worker(k: int) -> None:
        barrier.wait()
        results[k] = slow(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: 7 * k for k in range(8)}
    assert len(compiled) == 1


def test_compile_function_may_call_other_lazy_code():
    ln = rtdyld.Linker()
    inner = ln.add_lazy("inner", lambda: "define i64 @inner() {\n  ret i64 40\n}\n", signature="int64_t()")

    def outer_compile():
        k = inner()  # re-enters the resolver from inside the callback
        return f"define i64 @outer() {{\n  ret i64 {k + 2}\n}}\n"

    outer = ln.add_lazy("outer", outer_compile, signature="int64_t()")
    assert outer() == 42 and inner() == 40


def test_compile_function_may_return_an_address(callback):
    ln = rtdyld.Linker()
    cb = callback("int64_t(int64_t)", lambda x: x - 1)
    dec = ln.add_lazy("dec", lambda: cb, signature="int64_t(int64_t)")
    assert dec(10) == 9
    assert ln.stubs.target("dec") == int(rtdyld.host.ffi.cast("uintptr_t", cb))


def test_failing_compile_calls_the_fallback_and_prints_the_traceback(callback, capfd):
    ln = rtdyld.Linker()
    fb = callback("int64_t(int64_t)", lambda x: -x)
    attempts = []

    def broken():
        attempts.append(1)
        raise ValueError("no code for neg")

    neg = ln.add_lazy("neg", broken, signature="int64_t(int64_t)", fallback=fb)
    assert neg(5) == -5
    assert neg(6) == -6
    assert attempts == [1]  # the stub now goes to the fallback
    err = capfd.readouterr().err
    assert "compiling lazy function 'neg' failed" in err
    assert "Traceback" in err and "ValueError: no code for neg" in err
    assert "calling the fallback of 'neg'" in err


def test_fallback_may_be_a_symbol_name():
    ln = rtdyld.Linker()
    ln.add_module("define i64 @safe(i64 %x) {\n  ret i64 99\n}\n", name="safe.ll")
    ln.finalize()

    def broken():
        raise RuntimeError("nope")

    f = ln.add_lazy("risky", broken, signature="int64_t(int64_t)", fallback="safe")
    assert f(1) == 99


ABORT_SCRIPT = """
import rtdyld
ln = rtdyld.Linker()
def broken():
    raise ValueError("no code for boom")
boom = ln.add_lazy("boom", broken, signature="int(int)")
print("calling", flush=True)
print("returned", boom(1), flush=True)
"""


def test_failing_compile_without_fallback_aborts_the_process():
    proc = run_python("-c", ABORT_SCRIPT)
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "calling\n"
    assert "compiling lazy function 'boom' failed" in proc.stderr
    assert "Traceback" in proc.stderr and "ValueError: no code for boom" in proc.stderr
    assert "no fallback registered; aborting" in proc.stderr


def test_lazy_module_globals_are_emitted_once_and_eagerly():
    ir = r"""
@total = global i64 5
@table = global [2 x ptr] [ptr @add_total, ptr @get_total]

define i64 @add_total(i64 %x) {
  %t = load i64, ptr @total
  %s = add i64 %t, %x
  store i64 %s, ptr @total
  ret i64 %s
}

define i64 @get_total(i64 %unused) {
  %t = load i64, ptr @total
  ret i64 %t
}
"""
    ln = rtdyld.Linker()
    globals_obj = ln.add_module(ir, name="tot.ll", lazy=True)
    h = ln.finalize()
    assert globals_obj.name == "tot.ll [globals]"
    assert set(h.symbols) == {"total", "table"}
    table = np.frombuffer(ctypes_bytes(ln.lookup("table"), 16), dtype=np.uint64).tolist()
    assert table == [ln.stubs.address("add_total"), ln.stubs.address("get_total")]
    assert ln.function("add_total", "int64_t(int64_t)")(3) == 8
    assert ln.function("get_total", "int64_t(int64_t)")(0) == 8


def test_lazy_needs_in_process_memory():
    from memmgr import VirtualMemory

    ln = rtdyld.Linker(memory=VirtualMemory())
    with pytest.raises(rtdyld.UsageError, match="in this process"):
        ln.add_lazy("f", lambda: 1)


# --- the example ------------------------------------------------------------------------------------


def test_toy_lazy_jit_example_runs():
    proc = run_python(str(Path(REPO) / "examples" / "toy_lazy_jit.py"), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "fib(20) = 6765" in lines, proc.stdout
    assert "compiled: fib" in lines, proc.stdout
    assert "never called, never compiled: unused" in lines, proc.stdout


def test_a_replacement_made_during_compilation_wins():
    ln = rtdyld.Linker()

    def compile_fn():
        ln.replace("late", "define i64 @late() {\n  ret i64 2\n}\n")
        return "define i64 @late() {\n  ret i64 1\n}\n"

    late = ln.add_lazy("late", compile_fn, signature="int64_t()")
    assert late() == 2
    assert late() == 2


def test_replace_accepts_an_ir_file(tmp_path):
    ln = rtdyld.Linker()
    path = tmp_path / "v7.ll"
    path.write_text(version_ir(7))
    ln.stubs.create("version", 1)
    ln.replace("version", str(path))
    assert ln.function("version", "long()")() == 7
    ln.replace("version", path)
    assert ln.function("version", "long()")() == 7


def test_callers_in_another_dylib_bind_to_the_stub(build):
    ln = rtdyld.Linker()
    ln.stubs.create("version", 1)
    ln.replace("version", version_ir(1))
    other = ln.create_dylib("other")
    other.link_order([ln.main])
    ln.add_object(build.cc(LAZY / "loop.c", *PIE), dylib=other)
    h = ln.finalize()
    assert [e.address for _, lb in h.parts for e in lb.externals if e.name == "version"] == [
        ln.stubs.address("version")
    ]
    call_many = ln.function("call_many", "long(long)", dylib=other)
    assert call_many(3) == 3
    ln.replace("version", version_ir(5))
    assert call_many(3) == 15


# --- removing what a stub jumps into --------------------------------------------------------------


def test_remove_refuses_while_a_stub_jumps_into_the_batch():
    ln = rtdyld.Linker()
    ln.stubs.create("version", 1)
    v1 = ln.replace("version", version_ir(1))
    with pytest.raises(rtdyld.UsageError) as err:
        v1.remove()
    msg = str(err.value)
    assert f"cannot remove batch #{v1.number} (<version>)" in msg
    assert "the indirect stub(s) of 'version' still jump into it" in msg
    assert "re-point them first (Linker.replace or stubs.update) or pass force=True" in msg
    assert not v1.removed and ln.function("version", "long()")() == 1
    ln.replace("version", version_ir(2))
    v1.remove()  # nothing jumps there any more
    assert v1.removed and ln.function("version", "long()")() == 2

    ln.add_module(version_ir(7).replace("@version", "@seven"), name="seven.ll")
    seven = ln.finalize()
    ln.stubs.create("by_address", ln.lookup("seven"))  # a bare address: no batch recorded with it
    with pytest.raises(rtdyld.UsageError, match="indirect stub\\(s\\) of 'by_address' still jump"):
        seven.remove()
    assert not seven.removed


def test_forced_remove_points_the_stub_at_its_fallback(callback):
    ln = rtdyld.Linker()
    fb = callback("int64_t(int64_t)", lambda x: -x)
    neg = ln.add_lazy("neg", lambda: "define i64 @neg(i64 %x) {\n  %r = sub i64 0, %x\n  ret i64 %r\n}\n",
                      signature="int64_t(int64_t)", fallback=fb)
    assert neg(5) == -5
    impl = ln.stubs.stub("neg").handle
    lo = impl.batch.allocation.target_base
    assert lo <= ln.stubs.target("neg") < lo + impl.batch.allocation.size
    with pytest.raises(rtdyld.UsageError, match="'neg' still jump into it"):
        impl.remove()
    impl.remove(force=True)
    assert impl.removed
    assert ln.stubs.target("neg") == int(rtdyld.host.ffi.cast("uintptr_t", fb))
    assert neg(6) == -6


def test_forced_remove_points_a_stub_without_fallback_at_a_trap(maps):
    ln = rtdyld.Linker()
    ln.stubs.create("version", 1)
    v1 = ln.replace("version", version_ir(1))
    lo, hi = v1.batch.allocation.target_base, v1.batch.allocation.target_base + v1.batch.allocation.size
    v1.remove(force=True)
    target = ln.stubs.target("version")
    assert not lo <= target < hi
    assert maps.mapping_of(target).perms == "r-xp"
    code = ctypes_bytes(target, indirection.TRAMPOLINE_SIZE)
    assert disasm(code, target)[1] == f"jmp {ln._compile_callbacks.resolver_address:#x}"
    ln.close()


TRAP_SCRIPT = """
import rtdyld
ln = rtdyld.Linker()
ln.stubs.create("version", 1)
v1 = ln.replace("version", "define i64 @version() {\\n  ret i64 1\\n}\\n")
version = ln.function("version", "long()")
print("before", version(), flush=True)
v1.remove(force=True)
print("removed", flush=True)
print("returned", version(), flush=True)
"""


def test_calling_a_trapped_stub_names_the_function_and_aborts():
    proc = run_python("-c", TRAP_SCRIPT)
    assert proc.returncode == -signal.SIGABRT, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "before 1\nremoved\n"
    assert proc.stderr == (
        "rtdyld: 'version' was called after batch #1 (<version>), which held its code, "
        "was removed with force=True; aborting\n"
    )


# --- close --------------------------------------------------------------------------------------


def test_close_releases_stubs_trampolines_and_the_resolver(maps):
    from rtdyld import lazy

    ln = rtdyld.Linker()
    version = ln.add_lazy("version", lambda: version_ir(4), signature="long()")
    assert version() == 4
    stub = ln.stubs.address("version")
    owned = [a for a, ref in lazy._owned.values() if ref() is ln]
    names = sorted(seg.name for a in owned for seg in a.segments)
    assert names == ["lazy resolver", "lazy trampolines", "stub slots", "stubs"]
    ln.close()
    assert [a.state for a in owned] == ["released"] * 3
    assert not set(map(id, owned)) & set(map(id, ln.memory.live_allocations()))
    assert maps.mapping_of(stub).perms.startswith("---")
    assert "version" not in ln.main.published
    assert lazy.leaked_allocations() == []
    # The session is usable again: new stubs come from fresh memory.
    again = ln.add_lazy("version", lambda: version_ir(5), signature="long()")
    assert again() == 5
    ln.close()


def test_release_invariant_catches_indirection_memory_kept_after_close(monkeypatch):
    from invariants import leaked_indirection

    ln = rtdyld.Linker()
    ln.stubs.create("kept", 0x1000)
    chunk = ln.stubs._chunks[0].allocation
    monkeypatch.setattr(chunk, "release", lambda: None)
    ln.close()
    assert leaked_indirection() == [f"indirection memory of a closed Linker not released: {chunk!r}"]
    monkeypatch.undo()
    chunk.release()
    assert leaked_indirection() == []


# --- GOT calls bound to the stub's slot -------------------------------------------------------------


def test_got_calls_of_a_stubbed_name_go_through_the_stub_slot(build):
    ln = rtdyld.Linker()
    ln.stubs.create("version", 1)
    ln.replace("version", version_ir(1))
    slot = ln.stubs.stub("version").slot_address
    ln.add_object(build.cc(LAZY / "loop.c", "-O2", "-fPIE", "-fno-plt"))
    ln.add_object(build.cc_text("long version(void);\nlong (*version_pointer(void))(void) { return version; }\n",
                                "-O2", "-fPIE", "-fno-plt", stem="version_pointer"))
    h = ln.finalize()
    start = ln.lookup("call_many")
    code = ctypes_bytes(start, h.symbols["call_many"].size)
    calls = [i for i in MD.disasm(code, start) if i.mnemonic == "call"]
    assert len(calls) == 1 and bytes(calls[0].bytes[:2]) == b"\xff\x15"  # call *disp32(%rip)
    disp = int.from_bytes(calls[0].bytes[2:6], "little", signed=True)
    assert calls[0].address + calls[0].size + disp == slot
    call_many = ln.function("call_many", "long(long)")
    assert call_many(4) == 4
    ln.replace("version", version_ir(3))
    assert call_many(4) == 12
    # A load keeps the published address: the stub's, not the current implementation.
    pointer = ln.function("version_pointer", "void *(void)")()
    assert int(rtdyld.host.ffi.cast("uintptr_t", pointer)) == ln.stubs.address("version")
    assert h.batch.got == {}  # the call uses the stub's slot, the load was relaxed to a lea


# --- lock order ---------------------------------------------------------------------------------------


DEADLOCK_SCRIPT = r"""
import os, threading, time
import rtdyld

ln = rtdyld.Linker()
started, go = threading.Event(), threading.Event()

def compile_slow():
    started.set()
    go.wait(5)
    return "define i64 @slow() {\n  ret i64 7\n}\n"

slow = ln.add_lazy("slow", compile_slow, signature="int64_t()")
result = {}
b = threading.Thread(target=lambda: result.setdefault("b", slow()), daemon=True)
b.start()
started.wait()
# An initializer calling the lazy function from inside finalize (Linker lock held).
ln.add_module('''
declare i64 @slow()
@seen = global i64 0
define internal void @init() {
  %v = call i64 @slow()
  store i64 %v, ptr @seen
  ret void
}
@llvm.global_ctors = appending global [1 x { i32, ptr, ptr }] [{ i32, ptr, ptr } { i32 65535, ptr @init, ptr null }]
''', name="init.ll")
a = threading.Thread(target=lambda: result.setdefault("a", ln.finalize()), daemon=True)
a.start()
time.sleep(0.3)  # let the finalize reach the initializer, if it can
go.set()
a.join(30)
b.join(30)
if a.is_alive() or b.is_alive():
    print("deadlock", flush=True)
    os._exit(3)
print("a", "a" in result, "b", result.get("b"), flush=True)
seen = ln.lookup("seen")
print("seen", rtdyld.host.ffi.cast("int64_t *", seen)[0], flush=True)
"""


def test_initializer_calling_a_function_another_thread_is_compiling_does_not_deadlock():
    proc = run_python("-c", DEADLOCK_SCRIPT)
    assert proc.stdout == "a True b 7\nseen 7\n", (proc.returncode, proc.stdout, proc.stderr)
