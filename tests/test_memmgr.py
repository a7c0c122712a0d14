"""memmgr against real mappings: protections, reuse, placement, execution."""

from __future__ import annotations

import cffi
import numpy as np
import pytest

import memmgr
from memmgr import (
    PAGE_SIZE,
    AllocationError,
    MemMgrError,
    MemoryManager,
    Prot,
    SegmentRequest,
    VirtualMemory,
    placement,
    read_maps,
)
from memmgr.procmaps import Mapping, parse_maps
from memmgr.reservation import Reservation

RET42 = bytes.fromhex("b82a000000c3")  # mov eax, 42; ret

_ffi = cffi.FFI()
_ffi.cdef("extern void *stdout;")
_process = _ffi.dlopen(None)


def stdout_address() -> int:
    return int(_ffi.cast("uintptr_t", _ffi.addressof(_process, "stdout")))


def call_int(addr: int) -> int:
    return _ffi.cast("int(*)(void)", addr)()


def perms_at(addr: int) -> str:
    for m in read_maps():
        if m.start <= addr < m.end:
            return m.perms
    raise AssertionError(f"0x{addr:x} is not mapped")


def assert_no_wx(mm: MemoryManager) -> None:
    for base, size in mm.reservations():
        for m in read_maps():
            if m.start < base + size and base < m.end:
                assert not (m.writable and m.executable), m


@pytest.fixture
def mm():
    manager = MemoryManager(reserve_size=64 << 20, low_reserve_size=16 << 20)
    yield manager
    manager.close()


def test_package_docstring_describes_life_cycle():
    for word in ("in-flight", "finalized", "released"):
        assert word in memmgr.__doc__


def test_in_flight_is_rw_and_finalize_sets_protections(mm):
    alloc = mm.allocate(
        [
            SegmentRequest("text", len(RET42), Prot.RX),
            SegmentRequest("rodata", 3 * PAGE_SIZE + 1, Prot.R),
            SegmentRequest("data", 10, Prot.RW),
            SegmentRequest("bss", 2 * PAGE_SIZE, Prot.RW, zero_fill=True),
        ]
    )
    assert alloc.state == "in-flight"
    assert alloc.size == (1 + 4 + 1 + 2) * PAGE_SIZE
    assert [s.offset // PAGE_SIZE for s in alloc.segments] == [0, 1, 5, 6]
    assert alloc.target_base % PAGE_SIZE == 0
    assert mm.live_allocations() == [alloc]
    for page in range(0, alloc.size, PAGE_SIZE):
        assert perms_at(alloc.target_base + page) == "rw-p"
    assert_no_wx(mm)

    mem = alloc.memory
    assert mem.dtype == np.uint8 and len(mem) == alloc.size and mem.flags.writeable
    text, rodata, data, bss = alloc.segments
    mem[text.offset : text.offset + text.size] = np.frombuffer(RET42, np.uint8)
    mem[rodata.offset : rodata.offset + rodata.size] = 0x5A
    alloc.view("data")[:] = np.arange(10, dtype=np.uint8)
    assert not alloc.memory[bss.offset : bss.offset + bss.size].any()

    alloc.finalize()
    assert alloc.state == "finalized"
    assert perms_at(alloc.target_base + text.offset) == "r-xp"
    for page in range(4):
        assert perms_at(alloc.target_base + rodata.offset + page * PAGE_SIZE) == "r--p"
    assert perms_at(alloc.target_base + data.offset) == "rw-p"
    assert perms_at(alloc.target_base + bss.offset + PAGE_SIZE) == "rw-p"
    assert_no_wx(mm)

    ro = alloc.memory
    assert not ro.flags.writeable
    assert bytes(ro[: len(RET42)]) == RET42
    assert (ro[rodata.offset : rodata.offset + rodata.size] == 0x5A).all()
    assert list(alloc.view(data)) == list(range(10))
    assert alloc.view("data").flags.writeable
    assert not alloc.view(0).flags.writeable
    assert not alloc.view("bss").any()
    alloc.finalize()  # a second finalize is harmless
    assert alloc.state == "finalized"



def _finalize_recording_mprotect(alloc, monkeypatch) -> list[tuple[int, int, int]]:
    """Finalize ``alloc``; the mprotect calls it made, as (offset, length, protection)."""
    calls = []
    real = memmgr.libc.mprotect

    def recording(addr, length, prot):
        calls.append((addr - alloc.target_base, length, prot))
        real(addr, length, prot)

    monkeypatch.setattr(memmgr.libc, "mprotect", recording)
    alloc.finalize()
    return calls

def test_finalize_changes_only_what_is_not_already_rw_code_last(mm, monkeypatch):
    """In flight every page is RW: sealing costs one mprotect per read-only or code run, none for data."""
    alloc = mm.allocate(
        [
            SegmentRequest("text", len(RET42), Prot.RX),
            SegmentRequest("rodata", 2 * PAGE_SIZE, Prot.R),
            SegmentRequest("data", 10, Prot.RW),
            SegmentRequest("bss", PAGE_SIZE, Prot.RW, zero_fill=True),
        ]
    )
    calls = _finalize_recording_mprotect(alloc, monkeypatch)
    assert calls == [(PAGE_SIZE, 2 * PAGE_SIZE, int(Prot.R)), (0, PAGE_SIZE, int(Prot.RX))]
    _, rodata, data, bss = alloc.segments
    assert perms_at(alloc.target_base + data.offset) == "rw-p"
    assert perms_at(alloc.target_base + bss.offset) == "rw-p"
    assert perms_at(alloc.target_base + rodata.offset + PAGE_SIZE) == "r--p"
    assert perms_at(alloc.target_base) == "r-xp"
    alloc.release()


def test_finalize_merges_adjacent_runs_of_one_protection(mm, monkeypatch):
    """Neighbours with one final protection are sealed by one call; an empty segment
    takes no pages and parts nothing, a segment staying RW does."""
    alloc = mm.allocate(
        [
            SegmentRequest("ro1", PAGE_SIZE, Prot.R),
            SegmentRequest("empty", 0, Prot.RX),
            SegmentRequest("ro2", PAGE_SIZE + 1, Prot.R),
            SegmentRequest("code1", 10, Prot.RX),
            SegmentRequest("code2", PAGE_SIZE, Prot.RX),
            SegmentRequest("data", 10, Prot.RW),
            SegmentRequest("ro3", 10, Prot.R),
        ]
    )
    calls = _finalize_recording_mprotect(alloc, monkeypatch)
    R, RX = int(Prot.R), int(Prot.RX)
    assert calls == [(0, 3 * PAGE_SIZE, R), (6 * PAGE_SIZE, PAGE_SIZE, R), (3 * PAGE_SIZE, 2 * PAGE_SIZE, RX)]
    assert [perms_at(alloc.target_base + page * PAGE_SIZE) for page in range(7)] == (
        ["r--p"] * 3 + ["r-xp"] * 2 + ["rw-p", "r--p"]
    )
    alloc.release()


def test_working_memory_of_each_allocation_is_its_own_block(mm):
    first = mm.allocate([SegmentRequest("data", 3 * PAGE_SIZE, Prot.RW)])
    second = mm.allocate([SegmentRequest("data", PAGE_SIZE, Prot.RW)])
    first.memory[:] = 1
    second.memory[:] = 2
    assert len(first.memory) == 3 * PAGE_SIZE and len(second.memory) == PAGE_SIZE
    for alloc, value in ((first, 1), (second, 2)):
        ptr = _ffi.cast("unsigned char *", alloc.target_base)
        assert ptr[0] == value and ptr[alloc.size - 1] == value
    first.release()
    assert (second.memory == 2).all()
    again = mm.allocate([SegmentRequest("data", PAGE_SIZE, Prot.RW)])
    assert again.target_base == first.target_base and not again.memory.any()
    again.release()
    second.release()


def test_buffer_is_the_working_memory_as_bytes_under_the_same_rules(mm):
    alloc = mm.allocate([SegmentRequest("text", len(RET42), Prot.RX), SegmentRequest("data", 8, Prot.RW)])
    buf = alloc.buffer
    assert (buf.format, buf.readonly, len(buf)) == ("B", False, alloc.size)
    buf[: len(RET42)] = RET42  # written as bytes, seen by the array and at the target address
    assert bytes(alloc.memory[: len(RET42)]) == RET42
    alloc.memory[-1] = 9
    assert buf[-1] == 9 and _ffi.cast("unsigned char *", alloc.target_base)[alloc.size - 1] == 9
    alloc.finalize()
    sealed = alloc.buffer
    assert sealed.readonly and bytes(sealed[: len(RET42)]) == RET42
    with pytest.raises(TypeError):
        sealed[0] = 0
    assert call_int(alloc.target_base) == 42
    alloc.release()
    with pytest.raises(MemMgrError, match="released"):
        alloc.buffer  # noqa: B018


def test_buffer_of_a_virtual_allocation_is_its_working_copy():
    vm = VirtualMemory()
    alloc = vm.allocate([SegmentRequest("data", 16, Prot.RW)])
    alloc.buffer[:4] = b"\x01\x02\x03\x04"
    assert alloc.memory[:4].tolist() == [1, 2, 3, 4] and alloc.target_base == vm.reach_range()[0]


def test_finalized_code_runs(mm):
    alloc = mm.allocate([SegmentRequest("text", len(RET42), Prot.RX)])
    alloc.memory[: len(RET42)] = np.frombuffer(RET42, np.uint8)
    alloc.finalize()
    assert call_int(alloc.target_base) == 42


def test_finalize_segments_seals_code_first_then_the_rest(mm):
    """Code can run while data is still writable (IFUNC resolvers); never W and X at once."""
    alloc = mm.allocate([SegmentRequest("text", len(RET42), Prot.RX), SegmentRequest("got", 8, Prot.R)])
    alloc.memory[: len(RET42)] = np.frombuffer(RET42, np.uint8)
    text, got = alloc.segments
    alloc.finalize_segments(["text"])
    assert alloc.state == "in-flight"
    assert perms_at(alloc.target_base + text.offset) == "r-xp"
    assert perms_at(alloc.target_base + got.offset) == "rw-p"
    assert not alloc.view("text").flags.writeable
    assert_no_wx(mm)
    alloc.view("got")[:] = np.frombuffer(call_int(alloc.target_base).to_bytes(8, "little"), np.uint8)
    alloc.finalize()
    assert perms_at(alloc.target_base + got.offset) == "r--p"
    assert perms_at(alloc.target_base + text.offset) == "r-xp"
    assert bytes(alloc.view("got")) == (42).to_bytes(8, "little")
    with pytest.raises(MemMgrError, match="not in flight"):
        alloc.finalize_segments(["got"])
    fresh = mm.allocate([SegmentRequest("text", 1, Prot.RX)])
    with pytest.raises(MemMgrError, match="no segment 'nope'"):
        fresh.finalize_segments(["nope"])
    fresh.release()
    alloc.release()


def test_release_hooks_run_once_newest_first(mm):
    calls = []
    alloc = mm.allocate([SegmentRequest("data", 8, Prot.RW)])
    alloc.add_release_hook(lambda: calls.append("first"))
    alloc.add_release_hook(lambda: calls.append("second"))
    alloc.finalize()
    assert calls == []
    alloc.release()
    alloc.release()
    assert calls == ["second", "first"]
    closed = mm.allocate([SegmentRequest("data", 8, Prot.RW)])
    closed.add_release_hook(lambda: calls.append("at close"))
    mm.close()
    assert calls[-1] == "at close"


def test_release_drops_pages_and_reuses_range(mm):
    first = mm.allocate([SegmentRequest("data", 2 * PAGE_SIZE, Prot.RW)])
    first.memory[:] = 0xAB
    first.finalize()
    base = first.target_base
    first.release()
    assert first.state == "released"
    assert mm.live_allocations() == []
    assert perms_at(base) == "---p" and perms_at(base + PAGE_SIZE) == "---p"
    with pytest.raises(MemMgrError):
        _ = first.memory

    again = mm.allocate([SegmentRequest("data", 2 * PAGE_SIZE, Prot.RW)])
    assert again.target_base == base
    assert not again.memory.any()
    again.release()


def test_abandon_double_release_and_finalize_after_release(mm):
    alloc = mm.allocate([SegmentRequest("text", 100, Prot.RX)])
    alloc.memory[:100] = 0xCC
    alloc.release()  # abandoned while in flight
    assert perms_at(alloc.target_base) == "---p"
    alloc.release()  # no-op
    assert alloc.state == "released"
    with pytest.raises(MemMgrError, match="released"):
        alloc.finalize()
    assert mm.free_blocks() == [mm.reservations()[0]]


def test_free_list_coalesces(mm):
    a = mm.allocate([SegmentRequest("a", PAGE_SIZE, Prot.RW)])
    b = mm.allocate([SegmentRequest("b", 3 * PAGE_SIZE, Prot.RW)])
    c = mm.allocate([SegmentRequest("c", PAGE_SIZE, Prot.RW)])
    assert b.target_base == a.target_base + PAGE_SIZE
    assert c.target_base == b.target_base + 3 * PAGE_SIZE
    a.release()
    b.release()
    merged = mm.allocate([SegmentRequest("ab", 4 * PAGE_SIZE, Prot.RW)])
    assert merged.target_base == a.target_base
    merged.release()
    c.release()
    ((base, size),) = mm.reservations()
    assert mm.free_blocks() == [(base, size)]
    whole = mm.allocate([SegmentRequest("all", size, Prot.RW)])
    assert whole.target_base == base
    whole.release()


def test_allocation_too_big(mm):
    lo, hi = mm.reach_range()
    size = hi - lo
    held = mm.allocate([SegmentRequest("x", size - PAGE_SIZE, Prot.RW)])
    with pytest.raises(AllocationError) as info:
        mm.allocate([SegmentRequest("y", 2 * PAGE_SIZE, Prot.RW)])
    message = str(info.value)
    assert f"{2 * PAGE_SIZE} bytes" in message
    assert f"largest free block {PAGE_SIZE} bytes" in message
    held.release()
    with pytest.raises(AllocationError, match=f"{size + PAGE_SIZE} bytes"):
        mm.allocate([SegmentRequest("z", size + PAGE_SIZE, Prot.RW)])
    assert mm.live_allocations() == []


def test_small_and_empty_segments_take_their_page_rounded_size(mm):
    requests = [SegmentRequest(f"s{i}", i + 1, Prot.R) for i in range(100)]
    requests.insert(50, SegmentRequest("empty", 0, Prot.RX))
    alloc = mm.allocate(requests)
    assert alloc.size == 100 * PAGE_SIZE
    offsets = [s.offset for s in alloc.segments if s.size]
    assert offsets == [i * PAGE_SIZE for i in range(100)]
    assert alloc.segment("empty").offset == alloc.segment("s50").offset
    assert [s.size for s in alloc.segments if s.name != "empty"] == list(range(1, 101))
    alloc.finalize()
    assert_no_wx(mm)
    assert perms_at(alloc.target_base + alloc.segment("s50").offset) == "r--p"
    alloc.release()

    empty = mm.allocate([SegmentRequest("nothing", 0, Prot.RX)])
    assert empty.size == 0 and len(empty.memory) == 0
    assert mm.contains(empty.target_base)
    empty.finalize()
    empty.release()
    assert empty.state == "released" and mm.live_allocations() == []


def test_rejects_writable_and_executable(mm):
    with pytest.raises(MemMgrError, match="writable and executable"):
        mm.allocate([SegmentRequest("jit", 10, Prot.R | Prot.W | Prot.X)])
    with pytest.raises(MemMgrError, match="bad size"):
        mm.allocate([SegmentRequest("neg", -1, Prot.R)])
    with pytest.raises(MemMgrError, match="bad size"):
        mm.allocate([SegmentRequest("float", 1.5, Prot.R)])
    alloc = mm.allocate([SegmentRequest("np", np.int64(10), 1)])  # numpy sizes, int prots
    assert alloc.segments[0].size == 10 and type(alloc.segments[0].size) is int
    assert alloc.segments[0].prot is Prot.R
    alloc.release()


def test_reservation_is_near_stdout():
    near = stdout_address()
    manager = MemoryManager(near=near)
    try:
        assert manager.near_ok is None
        alloc = manager.allocate([SegmentRequest("text", 1, Prot.RX)])
        assert manager.near_ok is True
        ((base, size),) = manager.reservations()
        # 1 GiB, or a halving of it when the process has already filled the
        # space around libc (a late manager in a long test run).
        assert size in [(1 << 30) >> k for k in range(7)], size
        assert manager.reach_range() == (base, base + size)
        limit = (1 << 31) - (16 << 20)
        assert abs(base - near) <= limit
        assert abs(base + size - 1 - near) <= limit
        assert manager.contains(alloc.target_base)
        assert not manager.contains(base + size)
        alloc.release()
    finally:
        manager.close()
    assert manager.reservations() == []
    with pytest.raises(MemMgrError, match="closed"):
        manager.allocate([SegmentRequest("text", 1, Prot.RX)])


def test_unreachable_near_falls_back(monkeypatch):
    # Pretend the whole address space is taken: no gap can be within reach.
    full = [Mapping(0, placement.USER_TOP, "r--p", "")]
    monkeypatch.setattr(placement, "read_maps", lambda: full)
    manager = MemoryManager(reserve_size=16 << 20, near=0x10000)
    try:
        lo, hi = manager.reach_range()
        assert hi - lo == 16 << 20
        assert manager.near_ok is False
    finally:
        manager.close()


def test_low_allocation_below_2gib(mm):
    alloc = mm.allocate([SegmentRequest("text", len(RET42), Prot.RX)], low=True)
    assert alloc.target_base + alloc.size <= 1 << 31
    lo, hi = mm.reach_range(low=True)
    assert hi <= 1 << 31 and lo <= alloc.target_base < hi
    assert len(mm.reservations()) == 1  # the main reservation is still untouched
    assert mm.near_ok is None
    alloc.memory[: len(RET42)] = np.frombuffer(RET42, np.uint8)
    alloc.finalize()
    assert_no_wx(mm)
    assert call_int(alloc.target_base) == 42
    alloc.release()
    again = mm.allocate([SegmentRequest("data", 1, Prot.RW)], low=True)
    assert again.target_base == alloc.target_base


def test_low_reservation_failure_is_explained(monkeypatch, mm):
    monkeypatch.setattr(placement, "reserve_low", lambda size: None)
    with pytest.raises(AllocationError, match="below 2 GiB could not be reserved"):
        mm.allocate([SegmentRequest("text", 1, Prot.RX)], low=True)


def test_virtual_memory_is_deterministic():
    def run():
        vm = VirtualMemory(base=0x10000, page_size=4096)
        a = vm.allocate([SegmentRequest("text", 5000, Prot.RX), SegmentRequest("d", 1, Prot.RW)])
        b = vm.allocate([SegmentRequest("text", 0, Prot.RX)])
        c = vm.allocate([SegmentRequest("text", 1, Prot.RX)])
        return vm, a, b, c

    vm1, a1, b1, c1 = run()
    _, a2, b2, c2 = run()
    assert [x.target_base for x in (a1, b1, c1)] == [0x10000, 0x13000, 0x13000]
    assert [x.target_base for x in (a2, b2, c2)] == [0x10000, 0x13000, 0x13000]
    assert a1.size == 3 * 4096 and [s.offset for s in a1.segments] == [0, 2 * 4096]
    a1.memory[:] = 7
    a1.finalize()
    assert not a1.memory.flags.writeable and (a1.memory == 7).all()
    assert not (a2.memory == 7).any()
    a1.release()
    a1.release()
    with pytest.raises(MemMgrError):
        a1.finalize()
    assert vm1.live_allocations() == [b1, c1]
    d1 = vm1.allocate([SegmentRequest("x", 1, Prot.R)])
    assert d1.target_base == 0x14000  # never reused
    assert vm1.contains(0x10000) and vm1.reach_range() == (0x10000, 0x10000 + (1 << 30))
    assert vm1.near_ok is True


def test_virtual_memory_low_and_limits():
    vm = VirtualMemory(base=0x7F00_0000_0000, reserve_size=1 << 20, low_base=0x400000)
    high = vm.allocate([SegmentRequest("text", 1, Prot.RX)])
    low = vm.allocate([SegmentRequest("text", 1, Prot.RX)], low=True)
    assert high.target_base == 0x7F00_0000_0000
    assert low.target_base == 0x400000
    with pytest.raises(AllocationError, match=f"{2 << 20} bytes"):
        vm.allocate([SegmentRequest("big", 2 << 20, Prot.RW)])
    with pytest.raises(MemMgrError, match="writable and executable"):
        vm.allocate([SegmentRequest("jit", 1, Prot.W | Prot.X)])


def test_reservation_free_list_bookkeeping():
    r = Reservation(0x100000, 16 * 4096, 4096, "test")
    a = r.take(4096)
    b = r.take(2 * 4096)
    c = r.take(4096)
    assert (a, b, c) == (0x100000, 0x101000, 0x103000)
    r.give(b, 2 * 4096)
    assert r.take(4096) == b  # first fit
    r.give(b, 4096)
    with pytest.raises(MemMgrError, match="already free"):
        r.give(b, 4096)
    r.give(a, 4096)
    r.give(c, 4096)
    assert r.free_blocks() == [(0x100000, 16 * 4096)]
    with pytest.raises(AllocationError, match="largest free block 65536 bytes"):
        r.take(17 * 4096)


def test_placement_prefers_the_closest_gap():
    gaps = [(0x10000, 0x20000), (0x100000, 0x200000), (0x400000, 0x500000)]
    near = 0x2F0000
    bases = placement.candidates(0x10000, 0, 1 << 40, near, gaps, page=0x1000)
    assert bases == [0x1F0000, 0x400000, 0x10000]
    assert placement.candidates(0x10000, 0x380000, 1 << 40, near, gaps, page=0x1000) == [0x400000]
    assert placement.distance(0x1F0000, 0x10000, near) == near - 0x1FFFFF


def test_parse_maps():
    text = "7f00-8f00 r-xp 00000000 fe:00 12   /usr/lib/lib with space.so\n9000-a000 rw-p 00000000 00:00 0 \n"
    assert parse_maps(text) == [
        Mapping(0x7F00, 0x8F00, "r-xp", "/usr/lib/lib with space.so"),
        Mapping(0x9000, 0xA000, "rw-p", ""),
    ]
    maps = read_maps()
    assert any(m.path == "[stack]" for m in maps)
    assert all(m.start < m.end for m in maps)
