"""rtdyld: a runtime linker for x86-64 ELF and Mach-O objects, in Python.

    import rtdyld
    ln = rtdyld.Linker()
    ln.add_object("prog.o")
    ln.finalize()
    add = ln.function("add", "int(int, int)")
"""

from .errors import (
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
from .host import LibraryNotFoundError
from .linker import Handle, Linker
from .symbols import Dylib

__version__ = "0.1.0"


def __getattr__(name: str):
    # The object cache pulls in hashing, JSON and file locking: only for sessions that use it.
    if name == "ObjectCache":
        from .cache import ObjectCache

        return ObjectCache
    raise AttributeError(f"module 'rtdyld' has no attribute {name!r}")


__all__ = [
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
