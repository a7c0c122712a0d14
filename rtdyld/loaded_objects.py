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

from ._libc_ffi import ffi as _ffi


@cache
def _finder():
    """_dl_find_object, or None; looked up on first use, not at import."""
    try:
        return _ffi.dlopen(None)._dl_find_object
    except (AttributeError, _ffi.error):  # glibc before 2.35, or another C library
        return None


def object_file_name(addr: int) -> str | None:
    """The file name (as the loader knows it) of the shared object holding
    ``addr``, or None when dladdr must be asked instead."""
    find = _finder() if addr else None
    if find is None:
        return None
    ffi = _ffi
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
