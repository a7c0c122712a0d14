"""Which loaded shared object holds an address, without dladdr's symbol scan.

``dladdr`` finds the object holding an address and then scans that object's
whole dynamic symbol table for the nearest symbol: 10-20 µs for libc, paid
for every process symbol a link resolves, although only the object's file
name is wanted (a definition's origin).  glibc 2.35 added
``_dl_find_object``, the look-up unwinders use: lock-free, it returns the
object's link map, whose ``l_name`` is the very string dladdr reports as
``dli_fname``.  Where it is missing, for an address it does not place, and
for the main program (whose ``l_name`` is empty; dladdr names it after
``argv[0]``) the caller asks dladdr as before.
"""

from __future__ import annotations

import os
from functools import cache

import cffi

_CDEF = """
    struct link_map { uintptr_t l_addr; char *l_name; void *l_ld; struct link_map *l_next, *l_prev; };
    struct dl_find_object { unsigned long long dlfo_flags; void *dlfo_map_start; void *dlfo_map_end;
                            struct link_map *dlfo_link_map; void *dlfo_eh_frame;
                            unsigned long long reserved[16]; };
    int _dl_find_object(void *pc, struct dl_find_object *result);
"""


@cache
def _finder():
    """(ffi, _dl_find_object), or None; set up on first use, not at import."""
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        find = ffi.dlopen(None)._dl_find_object
    except AttributeError:  # glibc before 2.35, or another C library
        return None
    ffi.typeof("struct dl_find_object *")
    return ffi, find


def object_file_name(addr: int) -> str | None:
    """The file name (as the loader knows it) of the shared object holding
    ``addr``, or None when dladdr must be asked instead."""
    finder = _finder() if addr else None
    if finder is None:
        return None
    ffi, find = finder
    out = ffi.new("struct dl_find_object *")
    if find(ffi.cast("void *", addr), out) != 0 or out.dlfo_link_map == ffi.NULL:
        return None
    name = out.dlfo_link_map.l_name
    if name == ffi.NULL:
        return None
    text = ffi.string(name)
    return text.decode(errors="replace") if text else None


def describe(addr: int) -> str | None:
    """``os.path.basename`` of :func:`object_file_name`, or None."""
    name = object_file_name(addr)
    return os.path.basename(name) if name else None
