"""libc's mmap, mprotect, munmap and madvise through cffi in ABI mode.

ABI mode needs no C compiler at install time: the prototypes are declared
by hand (in :mod:`memmgr.cdecls`, pre-parsed into ``memmgr._libc_ffi``) and
the symbols come from the already loaded C library.
Every wrapper raises :class:`MemMgrError` carrying errno and its strerror
text instead of returning the C error convention.
"""

from __future__ import annotations

import mmap as _pymmap
import os

from ._libc_ffi import ffi
from .errors import MemMgrError

libc = ffi.dlopen(None)

PAGE_SIZE: int = _pymmap.PAGESIZE

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4

MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_32BIT = 0x40
MAP_NORESERVE = 0x4000
MAP_FIXED_NOREPLACE = 0x100000

MADV_DONTNEED = 4

MAP_FAILED = (1 << 64) - 1

# Flags of every reservation: address space only, no memory and no swap
# accounted until pages are made writable and touched.
RESERVE_FLAGS = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE


def _error(call: str, err: int, addr: int, length: int) -> MemMgrError:
    return MemMgrError(
        f"{call}(0x{addr:x}, {length:#x}) failed: {os.strerror(err)}", errno=err
    )


def mmap(addr: int, length: int, prot: int, flags: int) -> int:
    """Map ``length`` bytes of anonymous memory; return the address the kernel chose.

    ``addr`` is a hint unless ``flags`` has MAP_FIXED or MAP_FIXED_NOREPLACE;
    callers must check the returned address themselves.
    """
    address = libc.mmap(addr, length, prot, flags, -1, 0)
    err = ffi.errno
    if address == MAP_FAILED:
        raise _error("mmap", err, addr, length)
    return address


def mprotect(addr: int, length: int, prot: int) -> None:
    """Set the protection of the page-aligned range ``[addr, addr+length)``."""
    if libc.mprotect(addr, length, prot) != 0:
        raise _error("mprotect", ffi.errno, addr, length)


def munmap(addr: int, length: int) -> None:
    """Unmap the page-aligned range ``[addr, addr+length)``."""
    if libc.munmap(addr, length) != 0:
        raise _error("munmap", ffi.errno, addr, length)


def madvise(addr: int, length: int, advice: int) -> None:
    """Give the kernel ``advice`` (e.g. MADV_DONTNEED) about a range."""
    if libc.madvise(addr, length, advice) != 0:
        raise _error("madvise", ffi.errno, addr, length)
