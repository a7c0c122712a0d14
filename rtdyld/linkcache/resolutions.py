"""Outside names a cached batch resolved to the process, resolved again cheaply.

Most names a batch leaves undefined (``malloc``, ``memcpy``) resolve to the
process.  A cold link describes each such definition with the library that
holds it (``dladdr``, for traces and messages); a warm load needs only the
address.  The entry marks the externals the process defined; a warm load
resolves every outside name again in one walk of the chain
(:meth:`rtdyld.symbols.Dylib.resolve_many`), and where the process still
defines a marked one, takes its address alone: its External and definition
are made only if something reads the batch's externals (:func:`made`), and
its description only if something asks for that
(:class:`rtdyld.symbols.ProcessSymbolDef`).
"""

from __future__ import annotations

from ..linked import External
from ..symbols import ProcessSymbolDef


def found_in_process(host_name: str, address: int) -> tuple[str, int]:
    """What a warm load's walk of the chain keeps of a name the process defines."""
    return host_name, address


class ProcessExternal(External):
    """An :class:`External` the process defines, resolved again by a warm load:
    its ``source``, its definition's origin, is described when first read."""


ROLES = ("resolved", "got", "dso", "none")  # see rtdyld.linkcache.image.external_roles


def check_recorded(recorded: list) -> None:
    """Raise ValueError unless an entry's rows of externals are of the shape
    a capture writes: ``[name, role, origin, size, bind, type, reach,
    via_process]``, with a role the load knows (any other would be taken
    for a resolved name)."""
    for name, role, origin, size, bind, stype, reach, via_process in recorded:
        if (type(name) is not str or role not in ROLES or type(origin) is not str or type(size) is not int
                or type(bind) is not int or type(stype) is not int or type(reach) is not int
                or type(via_process) is not bool):
            raise ValueError(f"an external {name!r} of the wrong shape")


def made(recorded: list, parts: list, own: dict) -> list[External]:
    """A warm batch's externals from the entry's ``recorded`` rows and what the
    load found for each (``parts``): an External, a :func:`found_in_process`
    pair, or None for the batch's own (``own``: role -> (address, source))."""
    out = []
    for row, part in zip(recorded, parts, strict=True):
        if part is None:
            out.append(External(row[0], *own[row[1]]))
        elif type(part) is tuple:
            host_name, address = part
            out.append(ProcessExternal(row[0], address, "", 0, ProcessSymbolDef(host_name, address)))
        else:
            out.append(part)
    return out
