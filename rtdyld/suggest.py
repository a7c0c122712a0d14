"""The fix an error message suggests, where there is an obvious one.

Only ever called on the error path: finding which system library provides a
missing symbol dlopens that library (locally, so that nothing it defines
joins the process's global scope and changes later links).
"""

from __future__ import annotations

import functools

from . import host
from .symbols import host_names

# ``-l`` name and soname of the libraries a C or C++ program most often
# forgets to link.  dlsym on a library searches its dependencies too, as the
# linker does once the library is loaded, so libstdc++ also provides libm's
# and libgcc_s's symbols: the list goes from the fewest dependencies to the
# most, and each symbol is credited to the first library that provides it.
SYSTEM_LIBRARIES = (
    ("m", "libm.so.6"),
    ("pthread", "libpthread.so.0"),
    ("dl", "libdl.so.2"),
    ("rt", "librt.so.1"),
    ("z", "libz.so.1"),
    ("bz2", "libbz2.so.1.0"),
    ("atomic", "libatomic.so.1"),  # gcc's runtime: __atomic_* calls for wide types
    ("gomp", "libgomp.so.1"),  # gcc's runtime: code built with -fopenmp
    ("stdc++", "libstdc++.so.6"),
)

_RTLD_LAZY = 0x1  # RTLD_LOCAL is 0: the library's symbols stay out of the global scope


@functools.cache
def _open(soname: str):
    handle = host.libc.dlopen(soname.encode(), _RTLD_LAZY)
    return None if handle == host.ffi.NULL else handle


def library_defining(name: str, prefix: str = "") -> tuple[str, str] | None:
    """``(l_name, soname)`` of the first common system library that provides ``name``, or None.

    ``prefix`` is the object's symbol prefix (``"_"`` for Mach-O); the name is
    also tried without it.
    """
    names = host_names(name, prefix)
    for lname, soname in SYSTEM_LIBRARIES:
        handle = _open(soname)
        if handle is None:
            continue
        for n in names:
            if host.library_symbol(handle, n):
                return lname, soname
    return None


def undefined_hints(names: list[str], prefix_of=lambda name: "") -> list[str]:
    """One hint line per fix for the undefined ``names``, each naming the symbols it fixes."""
    by_library: dict[tuple[str, str], list[str]] = {}
    elsewhere = []
    for name in names:
        lib = library_defining(name, prefix_of(name))
        if lib is None:
            elsewhere.append(name)
        else:
            by_library.setdefault(lib, []).append(name)
    hints = []
    for (lname, soname), found in by_library.items():
        hints.append(
            f"link with -l {lname} (Linker.load_library({lname!r})): {soname} provides {_names(found)}"
        )
    if elsewhere:
        it = "it" if len(elsewhere) == 1 else "them"
        hints.append(
            f"define {_names(elsewhere)} with Linker.define(name, address_or_callback) "
            f"or add an object or archive that defines {it}"
        )
    return hints


def duplicate_hint(name: str, in_earlier_batch: str | None = None) -> str:
    """How to resolve two strong definitions of ``name``."""
    if in_earlier_batch is not None:
        return (
            f"remove {in_earlier_batch} first (Handle.remove), link this batch into another dylib "
            f"(Linker.create_dylib), or drop one definition of {name!r}"
        )
    return (
        f"keep one definition of {name!r}: drop the other, make it static, "
        "or mark one __attribute__((weak))"
    )


def overflow_hint(kinds) -> str:
    """What to change when relocations of edge ``kinds`` overflowed; "" if nothing obvious."""
    from .x86_64.edges import Edge

    kinds = {Edge(int(k)) for k in kinds}
    if kinds & {Edge.Pointer32, Edge.Pointer32Signed}:
        return (
            "absolute 32-bit relocations need their targets below 4 GiB (below 2 GiB when "
            "sign-extended); rebuild with -fPIC or -fPIE, or place the target below 2 GiB"
        )
    if kinds & {Edge.Delta32, Edge.Branch32, Edge.GOTDelta32, Edge.GOTBaseDelta32}:
        return (
            "32-bit PC-relative references reach only ±2 GiB; rebuild with -mcmodel=large, or "
            "place the batch near its target (MemoryManager(near=address))"
        )
    return ""


def allocation_hint(low: bool) -> str:
    """What to do when a batch does not fit in what is left of the reservation."""
    size = "low_reserve_size" if low else "reserve_size"
    return f"remove batches no longer needed, or give the Linker a MemoryManager({size}=...) with more room"


def listing(objects, most: int = 3) -> str:
    """The names of ``objects`` (anything with ``.name``), the first ``most`` of them."""
    names = [o.name for o in objects[:most]]
    more = f" and {len(objects) - most} more" if len(objects) > most else ""
    return ", ".join(names) + more


# Beyond this many published names, finding near misses costs more than a
# failed look-up should.
_MAX_NEAR_MISS_CANDIDATES = 20000


def lookup_hint(name: str, dylib, dylibs) -> str:
    """``"; ..."`` naming the dylibs that do publish ``name``, or published names close to it; else ""."""
    elsewhere = [d.name for d in dylibs if d is not dylib and d.lookup(name) is not None]
    if elsewhere:
        return f"; dylib {_names(elsewhere)} publishes it: pass dylib=linker.dylibs[{elsewhere[0]!r}]"
    known = dylib.published
    if len(known) > _MAX_NEAR_MISS_CANDIDATES:
        return ""
    import difflib  # error path only

    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.8)
    return f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""


def _names(names: list[str]) -> str:
    return ", ".join(repr(n) for n in names)


__all__ = [
    "SYSTEM_LIBRARIES",
    "allocation_hint",
    "duplicate_hint",
    "library_defining",
    "listing",
    "lookup_hint",
    "overflow_hint",
    "undefined_hints",
]
