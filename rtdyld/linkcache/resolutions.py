"""Outside names a cached batch resolved to the process, resolved again cheaply.

Most names a batch leaves undefined (``malloc``, ``memcpy``) resolve to the
process.  A cold link describes each such definition with the library that
holds it (``dladdr``, for traces and messages); a warm load needs only the
address, so it looks the name up with one ``dlsym`` and leaves the
description until something asks for it (:class:`rtdyld.symbols.ProcessSymbolDef`).

:func:`process_definition` decides only where the answer is certain: the
name is defined nowhere that comes before the process in the dylib's chain
(its own and user definitions, the dylibs of its link order, and what the
batches linked in the same finalize offer them), the chain names no library
(a library's ``dlsym`` could answer first), and the process defines it.
Anything else gets None, and the caller resolves the name the full way.
"""

from __future__ import annotations

from .. import host
from ..batch import External
from ..symbols import PROCESS, Dylib, ProcessSymbolDef, SymbolDef, host_names


class ProcessExternal(External):
    """An :class:`External` whose ``source`` is its :class:`~rtdyld.symbols.ProcessSymbolDef`'s
    origin, described when first read."""

    def __init__(self, name: str, definition: ProcessSymbolDef) -> None:
        self.name = name
        self.address = definition.address
        self.size = definition.size
        self.definition = definition

    @property
    def source(self) -> str:
        return self.definition.origin


def process_definition(dylib: Dylib, name: str, prefix: str, pending) -> ProcessSymbolDef | None:
    """The process's definition of ``name`` when ``dylib.resolve(name, prefix,
    pending)`` certainly returns it; None when it may not (resolve in full)."""
    if dylib.own(name, prefix) is not None:
        return None
    for entry in dylib.order():
        if isinstance(entry, Dylib):
            if (pending is not None and pending(entry, name)) or entry.own(name, prefix) is not None:
                return None
        elif isinstance(entry, str) and entry == PROCESS:
            for n in host_names(name, prefix):
                address = host.process_symbol(n)
                if address:
                    return ProcessSymbolDef(n, address)
            return None
        else:
            return None  # a library, loaded or named: its own dlsym comes first
    return None


def is_process_definition(d: SymbolDef, dylib: Dylib, name: str, prefix: str, pending) -> bool:
    """Whether ``d``, which ``name`` resolved to, is what :func:`process_definition` finds."""
    found = process_definition(dylib, name, prefix, pending)
    return (found is not None and (found.name, found.address) == (d.name, d.address)
            and (d.size, d.type, d.bind, d.vis, d.section) == (0, 0, 1, 0, "") and d.batch is None)
