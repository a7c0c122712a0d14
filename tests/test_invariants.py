"""The invariant checks run after every test can fail, and pass when they should."""

from __future__ import annotations

import pytest
from cffi import FFI
from invariants import abandoned_allocations, unreleased_memory

import rtdyld
from memmgr import PAGE_SIZE, MemoryManager, Prot, SegmentRequest, libc, live_managers, read_maps

SMALL = 16 << 20
ffi = FFI()


def _rw(mm: MemoryManager, pages: int = 2):
    alloc = mm.allocate([SegmentRequest("data", pages * PAGE_SIZE, Prot.RW)])
    alloc.memory[:] = 0xA5  # commit every page
    return alloc


def test_managers_are_registered_while_alive():
    with MemoryManager(reserve_size=SMALL, low_reserve_size=SMALL) as mm:
        assert mm in live_managers()


def test_released_allocation_is_given_back():
    with MemoryManager(reserve_size=SMALL, low_reserve_size=SMALL) as mm:
        alloc = _rw(mm)
        base = alloc.target_base
        assert unreleased_memory([mm]) == []
        alloc.release()
        assert unreleased_memory([mm]) == []
        (m,) = [m for m in read_maps() if m.start <= base < m.end]
        assert m.perms.startswith("---")


def test_checker_reports_pages_a_release_left_committed(monkeypatch):
    """A release that returns the range but keeps the pages is caught."""
    with MemoryManager(reserve_size=SMALL, low_reserve_size=SMALL) as mm:
        alloc = _rw(mm, pages=3)
        base = alloc.target_base
        monkeypatch.setattr(MemoryManager, "_scrub", staticmethod(lambda base, size: None))
        alloc.release()
        found = unreleased_memory([mm])
        monkeypatch.undo()
        assert any(f"0x{base:x}-0x{base + 3 * PAGE_SIZE:x}: still accessible (rw-)" in v for v in found), found
        assert any(
            f"0x{base:x}-0x{base + 3 * PAGE_SIZE:x}: 3 page(s) of the free range still resident" in v for v in found
        ), found
        # Give the pages back properly so the session stays clean.
        MemoryManager._scrub(base, 3 * PAGE_SIZE)
        assert unreleased_memory([mm]) == []


def test_checker_reports_a_hole_in_a_reservation():
    with MemoryManager(reserve_size=SMALL, low_reserve_size=SMALL) as mm:
        _rw(mm).release()
        base, size = mm.reservations()[0]
        libc.munmap(base + size - PAGE_SIZE, PAGE_SIZE)
        found = unreleased_memory([mm])
        libc.mmap(base + size - PAGE_SIZE, PAGE_SIZE, libc.PROT_NONE, libc.RESERVE_FLAGS | libc.MAP_FIXED)
        hole = f"0x{base + size - PAGE_SIZE:x}-0x{base + size:x}"
        assert found == [f"free range of a memory manager, {hole}: not mapped: the reservation has a hole"]


def test_removed_and_failed_batches_leave_no_memory(build):
    with MemoryManager(reserve_size=SMALL, low_reserve_size=SMALL) as mm:
        ln = rtdyld.Linker(memory=mm)
        ln.add_object(build.cc("errors/ok.c", "-O2", "-fPIE"))
        h = ln.finalize()
        assert ln.function("ok_func", "int(int)")(1) == 43
        h.remove()
        # Overflow is found after the batch's memory was allocated and written.
        buf = ffi.new("char[64]")
        ln.define("ext_buf", int(ffi.cast("uintptr_t", buf)))
        ln.add_object(build.cc("errors/abs32.c", "-O2", "-fno-pic"))
        with pytest.raises(rtdyld.RelocationOverflowError):
            ln.finalize()
        assert mm.live_allocations() == []
        assert unreleased_memory([mm]) == []


def test_checker_reports_an_allocation_left_in_flight():
    with MemoryManager(reserve_size=SMALL, low_reserve_size=SMALL) as mm:
        alloc = _rw(mm)
        assert abandoned_allocations([mm]) == [
            f"allocation still in flight (never finalized nor released): {alloc!r}"
        ]
        alloc.finalize()
        assert abandoned_allocations([mm]) == []


def test_the_guard_after_every_test_reports_a_leak_once(monkeypatch):
    import conftest

    with MemoryManager(reserve_size=SMALL, low_reserve_size=SMALL) as mm:
        alloc = _rw(mm)
        base = alloc.target_base
        monkeypatch.setattr(MemoryManager, "_scrub", staticmethod(lambda base, size: None))
        alloc.release()
        monkeypatch.undo()
        first = conftest.RELEASE_GUARD.report()
        where = f"free range of a memory manager, 0x{base:x}-0x{base + 2 * PAGE_SIZE:x}"
        assert [v for v in first if f"0x{base:x}-" in v] == [
            f"{where}: still accessible (rw-)",
            f"{where}: 2 page(s) of the free range still resident (committed)",
        ]
        assert conftest.RELEASE_GUARD.report() == []  # one leak fails one test
        MemoryManager._scrub(base, 2 * PAGE_SIZE)
