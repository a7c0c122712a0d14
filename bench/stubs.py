"""Indirect stubs and lazy compilation: what a call through a stub costs, and a first call.

Stub vs direct
    ``loop(n)`` calls ``bump`` n times, each call depending on the previous
    result.  ``bump`` lives in an earlier batch; the same ``loop`` object is
    linked once against ``bump`` itself and once against its indirect stub,
    so the two copies are the same machine code apart from the call target.
    Two kinds of call site:

    * ``call bump@PLT`` (LLVM IR compiled by llvmlite, the default): direct,
      ``call rel32`` to ``bump``; through the stub, ``call rel32`` to
      ``jmp *slot(%rip)`` — one more taken branch per call;
    * ``call *bump@GOTPCREL(%rip)`` (what ``-fno-plt`` code has in its loops;
      written in assembly, because LLVM hoists the GOT load out of a loop and
      calls a register): direct, relaxed to ``addr32 call rel32``; through
      the stub, bound to the stub's slot, ``call *slot(%rip)`` — one
      indirect call, no extra jump.

    Target: the stub loop takes at most 1.1x the direct one.

First call of a lazy function
    A fresh function is registered with ``Linker.add_lazy`` and called once
    from Python.  *compile* is the compile function (IR to object bytes with
    llvmlite); *link* is the rest of the first call: reading the object,
    linking it, re-pointing the stub, the resolver and the cffi callback.  A
    second call of the same function is shown for scale.

    python -m bench.stubs [--quick]
    python -m bench --only stubs
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

from . import report

TARGET_RATIO = 1.1
LOOP_CALLS = 20_000_000
QUICK_LOOP_CALLS = 2_000_000
RUNS = 7
QUICK_RUNS = 3
FIRST_CALLS = 30
QUICK_FIRST_CALLS = 5

# The callees: one that does nothing but add (the stub's cost laid bare) and
# one with a little work, a few rounds of xorshift, as a small real function has.
CALLEES = {
    "add": ("define i64 @bump(i64 %x) {\n  %r = add i64 %x, 3\n  ret i64 %r\n}\n", lambda x: x + 3),
    "xorshift x3": (
        "define i64 @bump(i64 %x0) {\n"
        + "".join(
            f"  %a{k} = shl i64 %x{k}, 13\n  %b{k} = xor i64 %x{k}, %a{k}\n  %c{k} = lshr i64 %b{k}, 7\n"
            f"  %d{k} = xor i64 %b{k}, %c{k}\n  %e{k} = shl i64 %d{k}, 17\n  %x{k + 1} = xor i64 %d{k}, %e{k}\n"
            for k in range(3)
        )
        + "  ret i64 %x3\n}\n",
        None,
    ),
}
CALL_SITES = ("call bump@PLT", "call *bump@GOTPCREL")
LOOP_IR = """
declare i64 @bump(i64)

define i64 @loop(i64 %n) {
entry:
  br label %head
head:
  %i = phi i64 [ 0, %entry ], [ %i1, %body ]
  %acc = phi i64 [ 0, %entry ], [ %acc1, %body ]
  %done = icmp sge i64 %i, %n
  br i1 %done, label %exit, label %body
body:
  %acc1 = call i64 @bump(i64 %acc)
  %i1 = add i64 %i, 1
  br label %head
exit:
  ret i64 %acc
}
"""


# The loop of an -fno-plt caller, n > 0 times; the loop head aligned alike in both copies.
LOOP_GOT_ASM = """
    .text
    .globl {name}
    .p2align 6
{name}:
    xorl %eax, %eax
    testq %rdi, %rdi
    jle 2f
    pushq %rbx
    movq %rdi, %rbx
    .p2align 5
1:
    movq %rax, %rdi
    callq *bump@GOTPCREL(%rip)
    decq %rbx
    jne 1b
    popq %rbx
2:
    retq
    .size {name}, .-{name}
"""


def add_loop(ln, call_site: str, name: str) -> None:
    if call_site == CALL_SITES[0]:
        ln.add_module(LOOP_IR.replace("@loop", f"@{name}"), name=f"{name}.ll")
    else:
        from rtdyld.asm import assemble

        data, display = assemble(LOOP_GOT_ASM.format(name=name), name=f"{name}.s")
        ln.add_object(data, name=display)


def stub_vs_direct(callee: str, calls: int, runs: int,
                   call_site: str = CALL_SITES[0]) -> tuple[list[float], list[float], list[str]]:
    """CPU seconds per run of loop(calls): direct, through a stub; and anything wrong."""
    import rtdyld

    bump_ir, model = CALLEES[callee]
    ln = rtdyld.Linker()
    ln.add_module(bump_ir, name="bump.ll")
    ln.finalize()
    add_loop(ln, call_site, "loop")
    direct = ln.finalize()
    direct_loop = ln.function("loop", "int64_t(int64_t)")
    ln.stubs.create("bump")
    add_loop(ln, call_site, "loop_stub")
    ln.finalize()
    stub_loop = ln.function("loop_stub", "int64_t(int64_t)")
    wrong = []
    via = {e.name: e.address for _, lb in direct.parts for e in lb.externals}
    if via.get("bump") == ln.stubs.address("bump"):
        wrong.append("stubs: the direct loop was linked against the stub")
    wrong += same_code_but_the_call(ln)
    results = {name: fn(1000) for name, fn in (("direct", direct_loop), ("stub", stub_loop))}
    expected = 3000 if model is not None else results["direct"]
    for name, got in results.items():
        if got != expected:
            wrong.append(f"stubs: {name} loop(1000) = {got}, expected {expected}")
    times: dict[str, list[float]] = {"direct": [], "stub": []}
    gc.collect()
    for r in range(runs + 1):  # the first round warms caches and predictors
        # Alternate which goes first, so neither always runs right after the other.
        for name, fn in (("direct", direct_loop), ("stub", stub_loop))[:: 1 if r % 2 else -1]:
            t = time.thread_time()  # CPU time of this thread: steadier than wall clock on a busy machine
            fn(calls)
            times[name].append(time.thread_time() - t)
    ln.close()
    return times["direct"][1:], times["stub"][1:], wrong


def same_code_but_the_call(ln) -> list[str]:
    """The two loops must differ only inside one call instruction (at most 6 bytes)."""
    import ctypes

    a, b = (ln.symbol(name) for name in ("loop", "loop_stub"))
    x, y = ctypes.string_at(a.address, a.size), ctypes.string_at(b.address, b.size)
    diff = [i for i in range(min(len(x), len(y))) if x[i] != y[i]]
    if len(x) != len(y) or not x or (diff and diff[-1] - diff[0] >= 6) or a.address % 64 != b.address % 64:
        where = f"{len(x)} vs {len(y)} bytes, differing at {diff[:8]}, at {a.address % 64} vs {b.address % 64} mod 64"
        return [f"stubs: the direct and stub loops differ beyond the call ({where})"]
    return []


def first_calls(count: int, wrong: list[str]) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per fresh lazy function: compile s, link s (rest of the first call), first call s, second call s."""
    import rtdyld
    from rtdyld.irmodule import compile_module

    ln = rtdyld.Linker()
    compile_s: list[float] = []
    link_s: list[float] = []
    first_s: list[float] = []
    second_s: list[float] = []
    for k in range(count):
        name = f"lazy_fn_{k}"
        ir = f"define i64 @{name}(i64 %x) {{\n  %r = mul i64 %x, {k + 2}\n  ret i64 %r\n}}\n"

        def compile_fn(ir=ir, name=name):
            t = time.perf_counter()
            data, _ = compile_module(ir, name)
            compile_s.append(time.perf_counter() - t)
            return data

        fn = ln.add_lazy(name, compile_fn, signature="int64_t(int64_t)")
        t = time.perf_counter()
        r1 = fn(5)
        first_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        r2 = fn(5)
        second_s.append(time.perf_counter() - t)
        if r1 != r2 or r1 != 5 * (k + 2):
            wrong.append(f"stubs: lazy {name}(5) returned {r1} then {r2}, expected {5 * (k + 2)}")
        link_s.append(first_s[-1] - compile_s[-1])
    ln.close()
    return compile_s, link_s, first_s, second_s


def run(session) -> list:
    """The ``python -m bench`` entry: prints its tables, adds no summary rows (its peer is a direct call)."""
    quick = session.options.quick
    result = measure(quick, session.options.runs if not quick else QUICK_RUNS)
    session.wrong.extend(result["wrong"])
    for (call_site, callee), ratio in result["ratios"].items():
        goal, case = f"stub call <= {TARGET_RATIO}x a direct call", f"{call_site}, {callee} callee"
        if (call_site, callee) in result["linked_wrongly"]:  # no verdict on a wrong link's time
            session.goal(goal, case, "rtdyld linked wrongly", None)
            continue
        met = report.within(ratio, TARGET_RATIO)
        session.goal(goal, case, f"{ratio:.2f}x", met)
        if not met:
            session.note(f"stubs: {call_site} of the {callee} callee through a stub took {ratio:.2f}x a direct call "
                         f"(target {TARGET_RATIO}x)")
    return []


def measure(quick: bool, runs: int, out=print) -> dict:
    calls = QUICK_LOOP_CALLS if quick else LOOP_CALLS
    rows, wrong, ratios, linked_wrongly = [], [], {}, set()
    for call_site in CALL_SITES:
        for callee in CALLEES:
            direct, stub, bad = stub_vs_direct(callee, calls, runs, call_site)
            wrong += bad
            if bad:
                linked_wrongly.add((call_site, callee))
            # The fastest run is the one least disturbed by other processes: the
            # best estimate of what the instructions cost.
            d, s = min(direct), min(stub)
            ratios[call_site, callee] = s / d
            verdict = "ok" if report.within(s / d, TARGET_RATIO) else "ABOVE target"
            rows.append([call_site, callee, report.ms(d), report.ms(s), f"{d / calls * 1e9:.2f}",
                         f"{s / calls * 1e9:.2f}", f"{s / d:.2f}", verdict])
    out(
        report.table(
            ["call site", "callee", "direct ms", "stub ms", "direct ns/call", "stub ns/call", "stub/direct",
             f"<= {TARGET_RATIO}x"],
            rows,
            f"stubs: loop({calls:,}) calling bump(), fastest of {runs} runs (thread CPU time)",
        )
    )
    out()
    n = QUICK_FIRST_CALLS if quick else FIRST_CALLS
    compile_s, link_s, first_s, second_s = first_calls(n, wrong)

    def row(label, xs):
        return [label, f"{statistics.median(xs) * 1e3:.3f}", f"{min(xs) * 1e3:.3f}", f"{max(xs) * 1e3:.3f}"]

    out(
        report.table(
            ["first call of a lazy function", "median ms", "min ms", "max ms"],
            [
                row("compile (IR -> object, llvmlite)", compile_s),
                row("link + resolver (rest of the call)", link_s),
                row("whole first call", first_s),
                row("second call (stub only)", second_s),
            ],
            f"stubs: first calls of {n} fresh functions",
        )
    )
    out()
    return {"ratios": ratios, "wrong": wrong, "linked_wrongly": linked_wrongly}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stubs", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer calls and runs")
    args = p.parse_args(argv)
    result = measure(args.quick, QUICK_RUNS if args.quick else RUNS)
    for text in result["wrong"]:
        print(f"error: rtdyld linked {text}")
    return 1 if result["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
