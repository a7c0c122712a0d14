"""One Linker used from several threads at once: link, look up, call, remove.

Each worker links its own small batches (distinct names) against one shared
batch, calls them, looks up the other workers' symbols while those come and
go, aborts and fails batches, and removes what it linked.  Thread switches
are forced very often so that the interleavings the locks guard actually
happen.  At the end every result was right, only the shared batch is left,
and the memory of everything removed or failed was given back.
"""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fixtures_build import C_FLAG_SETS
from invariants import unreleased_memory

import rtdyld
from memmgr import MemoryManager

PIE = C_FLAG_SETS["O2-pie"]
WORKERS = 4
ITERATIONS = 30
OBJECTS_PER_WORKER = 3
MISSING = "int missing_everywhere(int);\nint uses_missing(int x) { return missing_everywhere(x); }\n"


@pytest.fixture
def busy_switching():
    """Switch threads every 10 µs instead of every 5 ms."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


@pytest.fixture
def memory():
    with MemoryManager(reserve_size=64 << 20, low_reserve_size=16 << 20) as mm:
        yield mm


def run_threads(targets) -> list[BaseException]:
    """Run each callable in its own thread, all starting together; the exceptions they raised."""
    start = threading.Barrier(len(targets))

    def after_start(fn):
        def run():
            start.wait()
            fn()

        return run

    with ThreadPoolExecutor(len(targets)) as pool:
        futures = [pool.submit(after_start(fn)) for fn in targets]
    return [f.exception() for f in futures if f.exception() is not None]


def worker_name(w: int, j: int) -> str:
    return f"w{w}_{j}"


def worker_k(w: int, j: int) -> int:
    return 100 * w + j


def test_concurrent_link_lookup_call_remove(build, memory, busy_switching):
    ln = rtdyld.Linker(memory=memory)
    ln.add_object(build.cc("threads/base.c", *PIE))
    base = ln.finalize()
    objects = {
        (w, j): build.cc_bytes(
            "threads/worker.c", *PIE, f"-DNAME={worker_name(w, j)}", f"-DK={worker_k(w, j)}"
        )
        for w in range(WORKERS)
        for j in range(OBJECTS_PER_WORKER)
    }
    missing = build.cc_text(MISSING, *PIE, stem="missing").read_bytes()
    calls_served = [0] * WORKERS
    seen_others = [0] * WORKERS

    def worker(w: int):
        def run():
            for i in range(ITERATIONS):
                js = [i % OBJECTS_PER_WORKER, (i + 1) % OBJECTS_PER_WORKER]
                with ln.lock:  # only this thread's inputs join the batch
                    for j in js:
                        ln.add_object(objects[w, j], name=f"{worker_name(w, j)}.o")
                    handle = ln.finalize()
                assert set(handle.objects) == {f"{worker_name(w, j)}.o" for j in js}
                for j in js:
                    name = worker_name(w, j)
                    fn = ln.function(name, "int(int)")
                    for x in range(3):
                        assert fn(x) == 3 * x + worker_k(w, j)
                    assert ln.function(f"{name}_calls", "int(void)")() == 3
                    calls_served[w] += 3
                # Other workers' symbols come and go: present, or a clean error.
                other = worker_name((w + 1) % WORKERS, i % OBJECTS_PER_WORKER)
                try:
                    assert memory.contains(ln.lookup(other))
                    seen_others[w] += 1
                except rtdyld.UndefinedSymbolError as e:
                    # ...possibly naming a near miss: another worker's symbol.
                    assert str(e).startswith(f"symbol {other!r} is not defined by any finalized batch")
                if i % 5 == 1:
                    with ln.lock:
                        ln.add_object(objects[w, 0], name="aborted.o")
                        ln.abort()
                if i % 5 == 3:
                    with ln.lock:
                        ln.add_object(missing, name=f"missing-{w}.o")
                        with pytest.raises(rtdyld.UndefinedSymbolError, match="missing_everywhere"):
                            ln.finalize()
                handle.remove()
                for j in js:
                    with pytest.raises(rtdyld.UndefinedSymbolError):
                        ln.function(worker_name(w, j), "int(int)")

        return run

    errors = run_threads([worker(w) for w in range(WORKERS)])
    assert errors == []
    assert calls_served == [ITERATIONS * 2 * 3] * WORKERS
    assert ln.handles == [base]
    assert memory.live_allocations() == [lb.allocation for _, lb in base.parts]
    assert set(ln.main.published) == {"base_factor", "base_scale"}
    assert base.dependents and all(h.removed for h in base.dependents)
    assert unreleased_memory([memory]) == []
    base.remove()
    assert unreleased_memory([memory]) == []


def test_lookup_racing_remove_sees_the_symbol_or_a_clean_error(build, memory, busy_switching):
    ln = rtdyld.Linker(memory=memory)
    side = ln.create_dylib("side")
    a = build.cc_text("int racy_a(int x) { return x + 1; }\n", *PIE, stem="racy_a").read_bytes()
    b = build.cc_text("int racy_b(int x) { return x + 2; }\n", *PIE, stem="racy_b").read_bytes()
    stop = threading.Event()
    outcomes = {"found": 0, "absent": 0}

    def link_and_remove():
        try:
            for _ in range(200):
                with ln.lock:
                    ln.add_object(a, name="racy_a.o")
                    ln.add_object(b, name="racy_b.o", dylib=side)
                    handle = ln.finalize()
                assert len(handle.parts) == 2  # published in two steps, one per dylib
                handle.remove()
        finally:
            stop.set()

    def look_up():
        while not stop.is_set():
            try:
                addr = ln.lookup("racy_a")
                assert memory.contains(addr)
                outcomes["found"] += 1
            except rtdyld.UndefinedSymbolError as e:
                assert str(e) == "symbol 'racy_a' is not defined by any finalized batch"
                outcomes["absent"] += 1
            with pytest.raises(rtdyld.UndefinedSymbolError, match="racy_b"):
                ln.function("racy_b", "int(int)")  # only in the side dylib

    def both_or_neither():
        while not stop.is_set():
            with ln.lock:
                found = []
                for name, dylib in (("racy_a", None), ("racy_b", side)):
                    try:
                        found.append(ln.lookup(name, dylib=dylib))
                    except rtdyld.UndefinedSymbolError:
                        pass
                assert len(found) in (0, 2), "a batch was seen half published"

    errors = run_threads([link_and_remove, look_up, look_up, both_or_neither])
    assert errors == []
    assert outcomes["found"] + outcomes["absent"] > 0
    assert ln.handles == [] and memory.live_allocations() == []
    assert unreleased_memory([memory]) == []


def test_linkers_in_threads_compile_ir_and_share_one_memory_manager(memory, busy_switching):
    ir = "define i32 @{name}(i32 %x) {{\n  %r = mul i32 %x, {k}\n  ret i32 %r\n}}\n"

    def worker(w: int):
        def run():
            ln = rtdyld.Linker(memory=memory)
            for i in range(6):
                name = f"ir_{w}_{i}"
                ln.add_module(ir.format(name=name, k=w * 10 + i), name=f"{name}.ll")
                handle = ln.finalize()
                assert ln.function(name, "int(int)")(3) == 3 * (w * 10 + i)
                handle.remove()
            assert ln.handles == []

        return run

    assert run_threads([worker(w) for w in range(WORKERS)]) == []
    assert memory.live_allocations() == []
    assert unreleased_memory([memory]) == []


def test_release_from_two_threads_returns_the_range_once(memory, busy_switching):
    from memmgr import PAGE_SIZE, Prot, SegmentRequest

    for _ in range(50):
        alloc = memory.allocate([SegmentRequest("data", PAGE_SIZE, Prot.RW)])
        assert run_threads([alloc.release, alloc.release, alloc.release]) == []
        assert alloc.state == "released"
    assert memory.live_allocations() == []
    assert memory.all_free_blocks() == [(base, size) for base, size in memory.reservations()]
