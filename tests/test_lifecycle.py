"""The life cycle of a batch: add, abort or finalize (all-or-nothing), call, remove.

Every failure of ``finalize`` must leave ``Linker.snapshot()`` exactly as it
was before the batch: published symbols, handles, live allocations,
reservations and the mappings of the reserved range.  Removing a batch runs
its finalizers, unpublishes its symbols and gives its memory back; hundreds
of load/unload cycles leave the process's mappings and RSS flat, and a
removed batch or a closed session leaves nothing for the garbage collector.
"""

from __future__ import annotations

import gc
import os
import struct
from collections import Counter

import pytest
from archive_tools import build_gnu_archive
from cffi import FFI
from fixtures_build import FIXTURES

import rtdyld
from memmgr import MemoryManager

ffi = FFI()

LIFECYCLE = FIXTURES / "lifecycle"
PIE = ("-O2", "-fPIE")


def ir(name: str) -> str:
    return (LIFECYCLE / name).read_text()


def cycle_step(x: int, calls_before: int = 0) -> int:
    """What cycle.ll's cycle_step returns: 3x + cycle_bias + strlen("cycle") + count."""
    return 3 * x + 7 + 5 + calls_before


def ping(n: int) -> int:
    return 1 if n <= 0 else pong(n - 1) * 2


def pong(n: int) -> int:
    return 2 if n <= 0 else ping(n - 1) + 3


def mappings_over(lo: int, hi: int) -> list[tuple[int, int, str]]:
    """(start, end, perms) of every mapping that overlaps [lo, hi)."""
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            span, perms = line.split()[:2]
            start, end = (int(x, 16) for x in span.split("-"))
            if start < hi and lo < end:
                out.append((start, end, perms))
    return out


def read_words(address: int, count: int) -> tuple[int, ...]:
    """``count`` little-endian 64-bit words at ``address`` in this process."""
    return struct.unpack(f"<{count}Q", ffi.buffer(ffi.cast("char *", address), 8 * count))


def mapping_count() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def private_ln():
    """A session with its own small reservation, so reuse of a range is observable."""
    memory = MemoryManager(reserve_size=16 << 20, low_reserve_size=16 << 20)
    linker = rtdyld.Linker(memory=memory)
    yield linker
    linker.close()
    memory.close()


# --- abort -------------------------------------------------------------------------


def test_abort_discards_the_pending_batch(ln):
    ln.add_module(ir("cycle.ll"), name="kept")
    ln.finalize()
    before = ln.snapshot()

    ln.add_module(ir("provider_one.ll"), name="aborted_provider")
    ln.add_module(ir("undefined.ll"), name="aborted_undefined")
    ln.abort()
    assert ln.snapshot() == before

    handle = ln.finalize()
    assert handle.objects == []
    assert handle.symbols == {}
    for name in ("answer", "shared_value", "calls_nobody"):
        with pytest.raises(rtdyld.UndefinedSymbolError, match=name):
            ln.lookup(name)
    assert ln.function("cycle_step", "int64_t(int64_t)")(1) == cycle_step(1)


def test_abort_then_a_new_batch(ln):
    ln.add_module(ir("undefined.ll"), name="aborted")
    ln.abort()
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    handle = ln.finalize()
    assert handle.objects == ["provider_one"]
    assert ln.function("answer", "int(void)")() == 101


@pytest.fixture
def answer_archive(build, tmp_path):
    member = build.cc(LIFECYCLE / "arch_answer.c", *PIE)
    return build_gnu_archive(tmp_path / "libanswer.a", [member])


def test_archive_members_are_pulled_on_demand(ln, answer_archive):
    ln.add_archive(answer_archive)
    ln.add_module(ir("arch_user.ll"), name="arch_user")
    ln.finalize()
    assert ln.function("use_arch", "int(void)")() == 78


def test_abort_discards_archives(ln, answer_archive):
    ln.add_archive(answer_archive)
    ln.abort()
    ln.add_module(ir("arch_user.ll"), name="arch_user")
    with pytest.raises(rtdyld.UndefinedSymbolError, match="arch_answer"):
        ln.finalize()


def test_failed_finalize_discards_archives(ln, answer_archive):
    ln.add_archive(answer_archive)
    ln.add_module(ir("undefined.ll"), name="doomed_undefined")
    with pytest.raises(rtdyld.UndefinedSymbolError, match="nobody_defines_this"):
        ln.finalize()
    ln.add_module(ir("arch_user.ll"), name="arch_user")
    with pytest.raises(rtdyld.UndefinedSymbolError, match="arch_answer"):
        ln.finalize()


# --- a failed finalize leaves no trace ---------------------------------------------


def _undefined(ln):
    ln.add_module(ir("undefined.ll"), name="doomed_undefined")
    return rtdyld.UndefinedSymbolError, ["nobody_defines_this", "doomed_undefined"]


def _duplicate_in_batch(ln):
    spare = ln.dylibs["spare"]
    ln.add_module(ir("provider_one.ll"), name="doomed_one", dylib=spare)
    ln.add_module(ir("provider_two.ll"), name="doomed_two", dylib=spare)
    return rtdyld.DuplicateSymbolError, ["answer", "doomed_one", "doomed_two"]


def _duplicate_with_earlier_batch(ln):
    ln.add_module(ir("provider_two.ll"), name="doomed_again")
    return rtdyld.DuplicateSymbolError, ["doomed_again", "provider_one"]


def _overflow(ln):
    ln.add_module(ir("abs32.ll"), name="doomed_abs32", reloc="static")
    return rtdyld.RelocationOverflowError, ["doomed_abs32", ".text", "R_X86_64_32", "ext_buf"]


def _overflow_after_a_linked_group(ln):
    # The first dylib's group links (and allocates) before the second one fails.
    ln.add_module(ir("provider_two.ll"), name="doomed_good", dylib=ln.dylibs["spare"])
    ln.add_module(ir("abs32.ll"), name="doomed_abs32", reloc="static")
    return rtdyld.RelocationOverflowError, ["doomed_abs32", "R_X86_64_32"]


def _undefined_after_a_linked_group(ln):
    ln.add_module(ir("provider_two.ll"), name="doomed_good", dylib=ln.dylibs["spare"])
    ln.add_module(ir("undefined.ll"), name="doomed_undefined")
    return rtdyld.UndefinedSymbolError, ["nobody_defines_this"]


def _rejected(ln):
    ln.add_module(ir("provider_two.ll"), name="doomed_rejected", dylib=ln.dylibs["spare"])
    return rtdyld.ValidationError, ["doomed_rejected"]


FAILURES = {
    "undefined": _undefined,
    "duplicate-in-batch": _duplicate_in_batch,
    "duplicate-with-earlier-batch": _duplicate_with_earlier_batch,
    "overflow": _overflow,
    "overflow-after-linked-group": _overflow_after_a_linked_group,
    "undefined-after-linked-group": _undefined_after_a_linked_group,
    "validator": _rejected,
}


def reject_doomed(view) -> None:
    for s in view.sections:
        if s.object == "doomed_rejected":
            raise rtdyld.ValidationError(f"{s.object}: rejected by the test")


@pytest.mark.parametrize("failure", FAILURES)
def test_failed_finalize_leaves_no_trace(ln, failure):
    ln.create_dylib("spare")
    ln.add_module(ir("cycle.ll"), name="cycle")
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    ln.finalize()
    # Above 4 GiB, so a 32-bit absolute reference to it overflows.
    ln.define("ext_buf", ln.lookup("cycle_bias"))
    assert ln.lookup("cycle_bias") >= 1 << 32
    ln.add_validator(reject_doomed)
    step = ln.function("cycle_step", "int64_t(int64_t)")
    assert step(1) == cycle_step(1, 0)
    before = ln.snapshot()
    assert before["allocations"] and before["maps"]

    error, words = FAILURES[failure](ln)
    with pytest.raises(error) as exc:
        ln.finalize()
    for word in words:
        assert word in str(exc.value)

    assert ln.snapshot() == before
    for name in ("calls_nobody", "get_ext_buf"):
        with pytest.raises(rtdyld.UndefinedSymbolError):
            ln.lookup(name)
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("answer", dylib=ln.dylibs["spare"])

    # The session goes on: the failed inputs are gone and a good batch links.
    assert step(2) == cycle_step(2, 1)
    ln.add_module(ir("consumer.ll"), name="consumer")
    handle = ln.finalize()
    assert handle.objects == ["consumer"]
    assert ln.function("ask", "int(void)")() == 101 * 10 + 5
    assert ln.function("answer", "int(void)")() == 101


def test_failed_finalize_in_a_fresh_session_leaves_no_trace(private_ln):
    ln = private_ln
    before = ln.snapshot()
    ln.add_module(ir("undefined.ll"), name="doomed_undefined")
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.finalize()
    assert ln.snapshot() == before


def reject_everything(view) -> None:
    raise rtdyld.ValidationError("rejected by the test")


@pytest.mark.parametrize(("first", "reloc"), [(None, "pic"), (None, "static"), ("cycle.ll", "static")],
                         ids=["first-batch", "first-low-batch", "first-low-batch-after-a-batch"])
def test_failed_batch_leaves_no_new_reservation(private_ln, first, reloc):
    ln = private_ln
    if first is not None:
        _finalized(ln, first)
    before = ln.snapshot()
    ln.add_validator(reject_everything)
    ln.add_module(ir("lowdata.ll"), name="doomed_lowdata", reloc=reloc)
    with pytest.raises(rtdyld.ValidationError):
        ln.finalize()
    assert ln.snapshot() == before


def test_batch_below_2_gib(private_ln):
    ln = private_ln
    ln.add_module(ir("lowdata.ll"), name="lowdata", reloc="static")
    ln.finalize()
    address = ln.lookup("low_value")
    assert address < 1 << 31
    assert ln.function("low_address", "uintptr_t(void)")() == address


# --- removal -------------------------------------------------------------------------


@pytest.fixture(params=["c", "ir"])
def dtors_input(request, build):
    """(add to linker, the notes its finalizers write after the constructor's 1)."""
    if request.param == "c":
        path = build.cc(LIFECYCLE / "dtors.c", *PIE)
        # .fini_array holds {bye, late} and runs backwards, as in a program gcc links.
        return (lambda ln: ln.add_object(path)), [3, 2]
    return (lambda ln: ln.add_module(ir("dtors.ll"), name="dtors.ll")), [2]


def test_remove_runs_finalizers(ln, callback, dtors_input):
    add, fini_notes = dtors_input
    notes: list[int] = []
    ln.define("note", callback("void(int)", notes.append))
    add(ln)
    handle = ln.finalize()
    assert notes == [1]
    assert ln.function("dtor_answer", "int(void)")() == 42
    assert notes == [1]

    handle.remove()
    assert notes == [1, *fini_notes]
    assert handle.removed
    handle.remove()
    ln.close()
    assert notes == [1, *fini_notes]


def test_remove_unpublishes_and_releases(ln, maps):
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    ln.add_module(ir("cycle.ll"), name="cycle")
    handle = ln.finalize()
    alloc = handle.batch.allocation
    base, size = alloc.target_base, alloc.size
    assert (base, size) in ln.snapshot()["allocations"]
    text = maps.mapping_of(ln.lookup("cycle_step"))
    assert text is not None and text.perms == "r-xp"

    handle.remove()
    for name in ("answer", "shared_value", "cycle_step", "cycle_bias"):
        with pytest.raises(rtdyld.UndefinedSymbolError, match=name):
            ln.lookup(name)
    assert alloc.state == "released"
    assert (base, size) not in ln.snapshot()["allocations"]
    assert all(a.target_base != base for a in ln.memory.live_allocations())
    over = mappings_over(base, base + size)
    assert over and all(perms == "---p" for _, _, perms in over), over
    assert handle not in ln.handles
    assert ln.snapshot()["handles"] == []


def test_removed_memory_is_reused(private_ln):
    ln = private_ln
    ln.add_module(ir("cycle.ll"), name="first")
    first = ln.finalize()
    base, size = first.batch.allocation.target_base, first.batch.allocation.size
    first.remove()
    free = ln.memory.free_blocks() + ln.memory.free_blocks(low=True)
    assert sorted(free) == sorted(ln.memory.reservations())

    ln.add_module(ir("cycle.ll"), name="second")
    second = ln.finalize()
    assert (second.batch.allocation.target_base, second.batch.allocation.size) == (base, size)
    # Fresh data, not the first batch's: the counter starts at zero again.
    step = ln.function("cycle_step", "int64_t(int64_t)")
    assert [step(4), step(4)] == [cycle_step(4, 0), cycle_step(4, 1)]


def test_removed_symbols_can_be_defined_again(ln):
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    ln.finalize().remove()
    ln.add_module(ir("provider_two.ll"), name="provider_two")
    ln.finalize()
    assert ln.function("answer", "int(void)")() == 202


def test_remove_is_refused_while_referenced(ln):
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    provider = ln.finalize()
    ln.add_module(ir("consumer.ll"), name="consumer_one")
    ln.add_module(ir("cycle.ll"), name="cycle")
    consumer = ln.finalize()
    assert provider.dependents == {consumer}
    assert consumer.dependents == set()
    before = ln.snapshot()

    with pytest.raises(rtdyld.LinkError) as exc:
        provider.remove()
    msg = str(exc.value)
    assert "consumer_one" in msg and "cycle" in msg and "provider_one" in msg
    assert "force=True" in msg
    assert not provider.removed
    assert ln.snapshot() == before
    assert ln.function("ask", "int(void)")() == 101 * 10 + 5

    consumer.remove()
    provider.remove()
    assert ln.handles == []


def test_forced_remove_of_a_referenced_batch(ln):
    ln.add_module(ir("provider_one.ll"), name="provider_one")
    provider = ln.finalize()
    ln.add_module(ir("consumer.ll"), name="consumer_one")
    consumer = ln.finalize()

    provider.remove(force=True)
    assert provider.removed and not consumer.removed
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("answer")
    assert ln.lookup("ask") == consumer.symbols["ask"].address
    consumer.remove()


def test_handle_as_context_manager(ln):
    with _finalized(ln, "cycle.ll") as handle:
        assert ln.function("cycle_step", "int64_t(int64_t)")(5) == cycle_step(5)
        alloc = handle.batch.allocation
    assert handle.removed
    assert alloc.state == "released"
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("cycle_step")


def test_handle_as_context_manager_removes_on_error(ln):
    with pytest.raises(KeyError), _finalized(ln, "provider_one.ll") as handle:
        raise KeyError("inside the with block")
    assert handle.removed
    with pytest.raises(rtdyld.UndefinedSymbolError):
        ln.lookup("answer")


def _finalized(ln: rtdyld.Linker, name: str) -> rtdyld.Handle:
    ln.add_module(ir(name), name=name)
    return ln.finalize()


def test_dropped_handle_stays_loaded(ln):
    handle = _finalized(ln, "cycle.ll")
    number = handle.number
    del handle
    gc.collect()
    step = ln.function("cycle_step", "int64_t(int64_t)")
    assert step(6) == cycle_step(6, 0)
    assert ln.snapshot()["handles"] == [number]
    gc.collect()
    assert step(6) == cycle_step(6, 1)


# --- no leaks ---------------------------------------------------------------------------

CYCLES = 300
WARM_UP = 20
MAPPING_SLACK = 2
RSS_SLACK = 8 << 20


def test_load_call_remove_cycles_do_not_leak(ln):
    source = ir("cycle.ll")

    def one_cycle(i: int) -> None:
        ln.add_module(source, name=f"cycle{i}")
        handle = ln.finalize()
        step = ln.function("cycle_step", "int64_t(int64_t)")
        assert (step(i), step(i)) == (cycle_step(i, 0), cycle_step(i, 1))
        handle.remove()

    for i in range(WARM_UP):
        one_cycle(i)
    gc.collect()
    lo, hi = ln.memory.reach_range()
    reserved_maps = mappings_over(lo, hi)
    maps_before, rss_before = mapping_count(), rss_bytes()
    free_before = ln.memory.free_blocks()
    for i in range(CYCLES):
        one_cycle(i)
    gc.collect()

    assert mappings_over(lo, hi) == reserved_maps
    assert ln.memory.free_blocks() == free_before
    assert mapping_count() - maps_before <= MAPPING_SLACK
    assert rss_bytes() - rss_before < RSS_SLACK
    assert ln.handles == []


# --- freed by reference counting ------------------------------------------------------
#
# A closed session or a removed batch must leave no reference cycle among
# rtdyld's objects: a cycle keeps the batch's tables, sections and archive
# bytes in memory until a garbage collection finds it, and every collection
# until then traces it, inside whatever the process (often the next link)
# is doing.


def left_for_the_collector(scenario) -> Counter:
    """rtdyld's and memmgr's objects, by type, that ``scenario`` left in
    reference cycles: found by a collection after it, with none allowed
    during it (a collection there would free a cycle before it is counted)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        scenario()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return Counter(type(o).__qualname__ for o in gc.garbage
                       if type(o).__module__.split(".")[0] in ("rtdyld", "memmgr"))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()


def test_a_closed_session_is_freed_by_reference_counting(answer_archive):
    def scenario() -> None:
        linker = rtdyld.Linker()
        linker.add_archive(answer_archive)
        linker.add_module(ir("arch_user.ll"), name="arch_user")
        linker.add_module(ir("provider_one.ll"), name="provider_one")
        linker.finalize()
        assert linker.function("use_arch", "int(void)")() == 78
        assert linker.symbol("answer").batch is linker.handles[0]
        linker.close()

    assert left_for_the_collector(scenario) == Counter()


def test_removed_batches_are_freed_by_reference_counting(ln):
    def scenario(force: bool) -> None:
        ln.add_module(ir("provider_one.ll"), name="provider_one")
        provider = ln.finalize()
        ln.add_module(ir("consumer.ll"), name="consumer_one")
        consumer = ln.finalize()
        assert provider.dependents == {consumer}
        answer = ln.symbol("answer")
        assert ln.function("ask", "int(void)")() == 101 * 10 + 5
        if force:
            provider.remove(force=True)
            consumer.remove()
        else:
            consumer.remove()
            provider.remove()
        # What the caller still holds is still attributed to its batch.
        assert answer.batch is provider
        assert provider.symbols["answer"].batch is provider
        assert ln.handles == []

    assert left_for_the_collector(lambda: scenario(force=False)) == Counter()
    assert left_for_the_collector(lambda: scenario(force=True)) == Counter()


def test_a_session_linked_from_the_link_cache_is_freed_by_reference_counting(answer_archive, tmp_path):
    def scenario() -> None:
        for _ in range(2):  # stored, then linked from the cache
            linker = rtdyld.Linker(link_cache=tmp_path / "cache")
            linker.add_archive(answer_archive)
            linker.add_module(ir("arch_user.ll"), name="arch_user")
            linker.finalize()
            assert linker.function("use_arch", "int(void)")() == 78
            linker.close()

    assert left_for_the_collector(scenario) == Counter()


def test_a_lazy_session_is_freed_by_reference_counting():
    def scenario() -> None:
        linker = rtdyld.Linker()
        linker.add_module(ir("cycle.ll"), name="cycle", lazy=True)
        linker.finalize()
        assert linker.function("cycle_step", "int64_t(int64_t)")(2) == cycle_step(2)
        linker.close()

    assert left_for_the_collector(scenario) == Counter()


# --- order independence -----------------------------------------------------------------


def link_ping_pong(order: list[str]) -> dict[str, object]:
    ln = rtdyld.Linker()
    try:
        for name in order:
            ln.add_module(ir(name), name=name)
        handle = ln.finalize()
        call = {n: ln.function(n, "int64_t(int64_t)") for n in ("ping", "pong", "ping_via_table", "pong_via_table")}
        results = {(n, x): f(x) for n, f in call.items() for x in range(6)}
        addr = {n: ln.lookup(n) for n in ("ping", "pong", "ping_data", "pong_data", "ping_table", "pong_table")}
        tables = {n: list(read_words(addr[n], 2)) for n in ("ping_table", "pong_table")}
        return {
            "results": results,
            "symbols": sorted(handle.symbols),
            "ping_table": tables["ping_table"] == [addr["pong"], addr["pong_data"]],
            "pong_table": tables["pong_table"] == [addr["ping"], addr["ping_data"]],
        }
    finally:
        ln.close()


def test_mutually_referencing_modules_in_either_order():
    forward = link_ping_pong(["ping.ll", "pong.ll"])
    backward = link_ping_pong(["pong.ll", "ping.ll"])
    assert forward == backward
    assert forward["ping_table"] and forward["pong_table"]
    for x in range(6):
        assert forward["results"][("ping", x)] == ping(x)
        assert forward["results"][("pong", x)] == pong(x)
        assert forward["results"][("ping_via_table", x)] == pong(x) + 20000
        assert forward["results"][("pong_via_table", x)] == ping(x) + 1000
