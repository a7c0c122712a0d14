"""The host process as a symbol source: dlsym, dlopen'd libraries, callbacks.

cffi in ABI mode over libc/libdl, so installing rtdyld needs no compiler;
the declarations are in :mod:`rtdyld.cdecls`, pre-parsed into ``rtdyld._libc_ffi``.
"""

from __future__ import annotations

import functools
import os

from . import loaded_objects
from ._libc_ffi import ffi
from .errors import LinkError

libc = ffi.dlopen(None)


def function_pointer(ctype: str, address: int):
    """``address`` as a cdata of the function pointer type ``ctype``.

    The pre-parsed ffi knows every C type except the structs, unions and enums
    it does not declare; a signature naming one (``struct point *(*)(int)``)
    is parsed by an FFI of its own, with pycparser, imported then and only
    then.  A signature neither parses raises that FFI's error, as before."""
    try:
        return ffi.cast(ctype, address)
    except ffi.error:
        return _parsing_ffi().cast(ctype, address)


@functools.cache
def _parsing_ffi():
    import cffi

    return cffi.FFI()

RTLD_NOW = 2
RTLD_GLOBAL = 0x100
RTLD_DEFAULT = ffi.NULL

SYSTEM_LIB_DIRS = (
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
    "/usr/local/lib",
)


class LibraryNotFoundError(LinkError):
    """``load_library`` found no loadable shared library of that name."""


def _c_name(name: str) -> bytes:
    """A symbol name's bytes as the object spelled them: readers decode names
    with surrogate escapes, so any byte string (valid UTF-8 or not) round-trips."""
    return name.encode("utf-8", "surrogateescape")


# dlsym as a function returning an integer: the same symbol, called through
# a pointer type whose result cffi hands back as a Python int, with no
# pointer cdata to make and cast per name (half the cost of a look-up,
# measured: 0.76 us against 1.5 us).
_dlsym_address = ffi.cast("uintptr_t(*)(void *, const char *)", libc.dlsym)


def process_symbol(name: str) -> int:
    """Address of ``name`` in the process (RTLD_DEFAULT), or 0."""
    # Asked of the loader at every link, not remembered: a library the
    # process unloads behind rtdyld's back would leave a remembered address
    # dangling, and a cold link should pay what a first link pays.
    return library_symbol(RTLD_DEFAULT, name)


def process_symbols(names: list[str]) -> list[int]:
    """:func:`process_symbol` of each of ``names``, in one pass."""
    return library_symbols(RTLD_DEFAULT, names)


def library_symbol(handle, name: str) -> int:
    return _dlsym_address(handle, _c_name(name))


def library_symbols(handle, names: list[str]) -> list[int]:
    """:func:`library_symbol` of each of ``names``, in one pass (names
    encoded as :func:`_c_name` does, inline: a call per name costs more)."""
    dlsym = _dlsym_address
    return [dlsym(handle, name.encode("utf-8", "surrogateescape")) for name in names]


# Addresses dladdr has described: it walks the loader's list and scans a symbol
# table (~8-20 us), and every link asks again for the same functions.  Only an unloaded library can
# make an entry wrong, so rtdyld clears it whenever it unloads one.
_described: dict[int, str] = {}


def describe_address(addr: int) -> str:
    """The shared object holding ``addr`` (its file name), or ""."""
    # The loader's own look-up where it can tell; otherwise (the main program,
    # an older glibc) dladdr, remembered.
    known = loaded_objects.describe(addr)
    if known is None:
        known = _described.get(addr)
    if known is not None:
        return known
    info = ffi.new("Dl_info *")
    name = ""
    if addr and libc.dladdr(ffi.cast("void *", addr), info) and info.dli_fname != ffi.NULL:
        name = os.path.basename(ffi.string(info.dli_fname).decode(errors="replace"))
    _described[addr] = name
    return name


def forget_descriptions() -> None:
    """A library was unloaded: its addresses may now hold another."""
    _described.clear()


def _dlopen(path: str):
    h = libc.dlopen(path.encode(), RTLD_NOW | RTLD_GLOBAL)
    if h == ffi.NULL:
        err = libc.dlerror()
        return None, ffi.string(err).decode(errors="replace") if err != ffi.NULL else "dlopen failed"
    return h, ""


def open_library(name: str, search_dirs: tuple[str, ...] | list[str] = ()) -> tuple[object, str]:
    """dlopen a library the way ``-l NAME`` finds one; returns (handle, path).

    NAME may be a path, a file name ("libm.so.6") or a bare name ("m").  The
    user's directories come first, then the system's; Debian's ``libm.so``
    is a linker script, so versioned names and the loader's own search
    (find_library gives the soname) are tried after it.
    """
    errors = []
    if "/" in name or name.endswith(".so") or ".so." in name:
        h, err = _dlopen(name)
        if h is not None:
            return h, name
        raise LibraryNotFoundError(f"cannot load library {name!r}: {err}")
    # Imported here, for bare names only: ctypes.util brings subprocess (~5 ms).
    import ctypes.util
    import glob

    candidates = []
    for d in list(search_dirs) + list(SYSTEM_LIB_DIRS):
        candidates.append(os.path.join(d, f"lib{name}.so"))
        candidates.extend(sorted(glob.glob(os.path.join(d, f"lib{name}.so.*"))))
    soname = ctypes.util.find_library(name)
    if soname:
        candidates.append(soname)
    for path in candidates:
        if "/" in path and not os.path.exists(path):
            continue
        h, err = _dlopen(path)
        if h is not None:
            return h, path
        errors.append(err)
    detail = f" ({errors[-1]})" if errors else ""
    raise LibraryNotFoundError(
        f"cannot find library {name!r} (lib{name}.so) in {', '.join(list(search_dirs) + list(SYSTEM_LIB_DIRS))}"
        f"{detail}"
    )


def callback_address(obj) -> int:
    """An int address, a cffi function pointer/callback, or a ctypes function."""
    if isinstance(obj, int):
        return obj
    if isinstance(obj, ffi.CData):
        return int(ffi.cast("uintptr_t", obj))
    try:
        return int(ffi.cast("uintptr_t", obj))
    except TypeError:
        pass
    import ctypes

    if isinstance(obj, ctypes._CFuncPtr):
        return ctypes.cast(obj, ctypes.c_void_p).value or 0
    raise TypeError(f"cannot take the address of {type(obj).__name__}: pass an int or a cffi callback")


def flush_stdio() -> None:
    libc.fflush(ffi.NULL)
