"""Link an implementation behind a stub, and hot swap it.

The new definition of ``name`` is linked in a batch of its own under a
private name (``name$implN``): the object's definition is renamed before the
link, so the stub stays the only thing published as ``name`` and the batch
never clashes with it.  References to ``name`` inside that object use the
same symbol table entry, so they bind to the new code directly.

The batch is linked and published at once, apart from whatever else is
pending in the session (a hot swap or a lazy compilation must not finalize
the user's half-built batch).
"""

from __future__ import annotations

import itertools
import os

from . import fieldwise
from .errors import UsageError
from .inputs import parse_object, read_input
from .objfile.model import Bind, ObjectFile
from .symbols import Dylib

_serial = itertools.count(1)


def private_name(name: str) -> str:
    """A fresh name for one implementation of ``name``; '$' keeps it out of C's namespace."""
    return f"{name}$impl{next(_serial)}"


def as_object(src, name: str) -> ObjectFile:
    """An ObjectFile from an object (ObjectFile, path, bytes) or LLVM IR
    (text, bitcode, an llvmlite binding or ``llvmlite.ir`` module)."""
    if isinstance(src, ObjectFile):
        return src
    if isinstance(src, (bytes, bytearray, memoryview)) and bytes(src[:2]) != b"BC":
        return parse_object(bytes(src), f"<{name}>")
    from .irmodule import compile_module

    if isinstance(src, (str, os.PathLike)) and _is_path(src):
        data, display = read_input(src)
        if os.path.splitext(str(src))[1] in (".ll", ".bc"):
            data, display = compile_module(data, display)  # IR text or bitcode, as read
        return parse_object(data, display)
    return parse_object(*compile_module(src, f"<{name}>"))


def _is_path(src) -> bool:
    if isinstance(src, os.PathLike):
        return True
    return "\n" not in src and not src.lstrip().startswith(("define", "declare", ";", "target", "@", "source_filename"))


def renamed(obj: ObjectFile, name: str, new: str) -> ObjectFile:
    """A copy of ``obj`` whose global definition of ``name`` is called ``new``."""
    sym = obj.symbols
    for candidate in dict.fromkeys((name, obj.symbol_prefix + name)):
        hits = [
            i
            for i, n in enumerate(obj.names)
            if n == candidate and sym["bind"][i] != Bind.LOCAL and sym["section"][i] >= 0
        ]
        if hits:
            names = list(obj.names)
            names[hits[0]] = obj.symbol_prefix + new if candidate != name else new
            return fieldwise.replace(obj, names=names)
    raise UsageError(f"{obj.name} does not define {name!r}")


def link_implementation(linker, name: str, src, dylib: Dylib):
    """Link ``src``'s definition of ``name`` privately; returns (address, Handle)."""
    impl = private_name(name)
    obj = renamed(as_object(src, name), name, impl)
    with linker._lock:
        lb = linker._link_group(dylib, [obj], [], [], [])
        handle = linker._publish([(dylib, lb)])
    d = handle.symbols.get(impl) or handle.symbols[obj.symbol_prefix + impl]
    return d.address, handle


def replace(linker, name: str, src, keep_old: bool = False, dylib: Dylib | None = None):
    """Link a new definition of ``name`` and re-point its stub; returns its Handle.

    Existing callers (those bound to the stub) run the new code from their
    next call.  Without ``keep_old`` the batch holding the old definition is
    removed once nothing refers to it any more (see StubsManager.reclaim).
    """
    from .lazy import stubs_of

    d = linker._dylib(dylib)
    stubs = stubs_of(linker)
    if not stubs.has(name, d):
        stubs.create(name, None, d)
    old = stubs.stub(name, d).handle
    address, handle = link_implementation(linker, name, src, d)
    stubs.update(name, address, d, handle=handle)
    if old is not None and not keep_old:
        stubs.retire(old)
    stubs.reclaim()
    return handle
