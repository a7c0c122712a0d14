"""The global symbol table and the resolver chain behind it.

Undefined names are looked up in order: this batch → earlier batches →
user definitions (``Linker.define``) → libraries loaded by name → the
process.  For Mach-O objects, whose C names carry a leading underscore, the
user/library/process steps also try the name with exactly one leading
underscore removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import host


@dataclass
class SymbolDef:
    """A published definition: where a name lives and who put it there."""

    name: str
    address: int
    size: int = 0
    type: int = 0
    bind: int = 1
    vis: int = 0
    origin: str = ""  # defining object, "user definition", a library path, "process"
    section: str = ""
    batch: object | None = None  # the Handle whose memory holds it


@dataclass
class Library:
    name: str
    path: str
    handle: object = field(repr=False)


class Resolver:
    """Symbols visible to new batches: published, user-defined, libraries, process."""

    def __init__(self) -> None:
        self.published: dict[str, SymbolDef] = {}
        self.user: dict[str, SymbolDef] = {}
        self.libraries: list[Library] = []
        self._keepalive: dict[str, object] = {}

    def define(self, name: str, target) -> SymbolDef:
        address = host.callback_address(target)
        if not isinstance(target, int):
            self._keepalive[name] = target
        d = SymbolDef(name=name, address=address, origin="user definition")
        self.user[name] = d
        return d

    def resolve(self, name: str, prefix: str = "") -> SymbolDef | None:
        """Find ``name`` outside the batch being linked, or None."""
        d = self.published.get(name)
        if d is not None:
            return d
        names = [name]
        if prefix and name.startswith(prefix) and len(name) > len(prefix):
            names.append(name[len(prefix) :])
        for n in names:
            d = self.user.get(n)
            if d is not None:
                return d
        for lib in self.libraries:
            for n in names:
                addr = host.library_symbol(lib.handle, n)
                if addr:
                    return SymbolDef(name=n, address=addr, origin=lib.path)
        for n in names:
            addr = host.process_symbol(n)
            if addr:
                return SymbolDef(name=n, address=addr, origin=host.describe_address(addr) or "process")
        return None

    def lookup(self, name: str) -> SymbolDef | None:
        """A published symbol by its plain or Mach-O-decorated name."""
        return self.published.get(name) or self.published.get("_" + name)
