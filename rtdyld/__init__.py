"""rtdyld: a runtime linker for x86-64 ELF and Mach-O objects, in Python.

    import rtdyld
    ln = rtdyld.Linker()
    ln.add_object("prog.o")
    ln.finalize()
    add = ln.function("add", "int(int, int)")
"""

from .errors import (
    CorruptCacheEntryError,
    DuplicateSymbolError,
    LayoutError,
    LinkError,
    MalformedObjectError,
    RelocationOverflowError,
    UndefinedSymbolError,
    UnsupportedRelocationError,
    UsageError,
    ValidationError,
)

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that the command line's help, its usage
# errors and ``import rtdyld.errors`` do not load numpy and the linker; the
# object cache (hashing, JSON, file locking) only for sessions that use it.
_LAZY = {
    "Dylib": "symbols",
    "Handle": "linker",
    "LibraryNotFoundError": "host",
    "Linker": "linker",
    "ObjectCache": "cache",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # __import__ (not importlib.import_module) goes through the import statement's
    # path, which ``python -X importtime`` reports on.
    value = getattr(__import__(f"{__name__}.{module}", fromlist=[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "CorruptCacheEntryError",
    "DuplicateSymbolError",
    "Dylib",
    "Handle",
    "LayoutError",
    "LibraryNotFoundError",
    "LinkError",
    "Linker",
    "MalformedObjectError",
    "ObjectCache",
    "RelocationOverflowError",
    "UndefinedSymbolError",
    "UnsupportedRelocationError",
    "UsageError",
    "ValidationError",
]
