"""Symbol namespaces (dylibs) and the resolver chain behind them.

A :class:`Dylib` is one namespace, like an ORC JITDylib: the definitions its
batches published, the user's ``define`` calls, and a *link order* saying
where else to look.  An undefined name in a batch is looked up in order:
this batch → the dylib's earlier batches → its user definitions → archives
(pulled on demand, see :mod:`rtdyld.archives`) → each entry of the link
order (other dylibs, libraries loaded by name, the process).  For Mach-O
objects, whose C names carry a leading underscore, user definitions and the
host are also tried with exactly one leading underscore removed.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, MutableMapping

from . import host
from .fieldwise import field_repr

PROCESS = "process"


# A record the link cache stores by field (rtdyld.fieldwise).  Compared by identity.
class SymbolDef:
    """A definition: where a name lives and who put it there."""

    FIELDS = ("name", "address", "size", "type", "bind", "vis", "origin", "section", "batch")

    # The defaults are class attributes too: ProcessSymbolDef sets two fields and keeps the rest.
    name: str
    address: int
    size: int = 0
    type: int = 0
    bind: int = 1
    vis: int = 0
    origin: str = ""  # defining object, "user definition", a library path, "process"
    section: str = ""
    batch: object | None = None  # the Handle whose memory holds it

    def __init__(self, name: str, address: int, size: int = 0, type: int = 0, bind: int = 1, vis: int = 0,
                 origin: str = "", section: str = "", batch: object | None = None) -> None:
        self.name = name
        self.address = address
        self.size = size
        self.type = type
        self.bind = bind
        self.vis = vis
        self.origin = origin
        self.section = section
        self.batch = batch

    def __repr__(self) -> str:
        return field_repr(self)


class PublishedSymbols(MutableMapping):
    """A dylib's published names: name -> SymbolDef, in publication order.

    ``update`` with a batch's definitions records, for each name, the mapping
    that holds it (``holders()``, one dict update at C speed) rather than its
    SymbolDef, so publishing thousands of names makes no SymbolDef: the
    batch's mapping makes one when the name is first looked up (see
    :mod:`rtdyld.definitions`).
    """

    def __init__(self) -> None:
        self._holder: dict[str, object] = {}  # name -> its SymbolDef, or the mapping holding it

    def __getitem__(self, name: str) -> SymbolDef:
        v = self._holder[name]
        return v if isinstance(v, SymbolDef) else v[name]

    def get(self, name: str, default=None):
        v = self._holder.get(name)
        if v is None:
            return default
        return v if isinstance(v, SymbolDef) else v[name]

    def __contains__(self, name) -> bool:
        return name in self._holder

    def __setitem__(self, name: str, d: SymbolDef) -> None:
        self._holder[name] = d

    def __delitem__(self, name: str) -> None:
        del self._holder[name]

    def __iter__(self):
        return iter(self._holder)

    def __len__(self) -> int:
        return len(self._holder)

    def keys(self):
        return self._holder.keys()

    def update(self, other=(), /, **kwargs) -> None:
        if not kwargs:
            holders = getattr(other, "holders", None)
            if holders is not None:  # a batch's definitions (BatchDefinitions): by reference
                if self._holder:
                    self._holder.update(holders())
                else:  # the first publication: its mapping becomes the table, with no second pass
                    self._holder = holders()
                return
        super().update(other, **kwargs)

    def withdraw(self, definitions: Mapping) -> None:
        """Unpublish the names of ``definitions`` that still resolve to them."""
        holder = self._holder
        for name in definitions:
            v = holder.get(name)
            if v is definitions or (isinstance(v, SymbolDef) and v is definitions.get(name)):
                del holder[name]

    def __repr__(self) -> str:
        return f"<PublishedSymbols: {len(self._holder)} names>"


class Library:
    # A plain class: a dataclass decoration execs generated code at import (start-up).
    def __init__(self, name: str, path: str, handle: object) -> None:
        self.name = name
        self.path = path
        self.handle = handle

    def __repr__(self) -> str:
        return f"Library(name={self.name!r}, path={self.path!r})"


def host_names(name: str, prefix: str) -> list[str]:
    """``name``, then ``name`` without the object's symbol prefix (``"_"`` for Mach-O) if it has one."""
    if prefix and name.startswith(prefix) and len(name) > len(prefix):
        return [name, name[len(prefix) :]]
    return [name]


class Dylib:
    """An independent symbol namespace with its own search order."""

    def __init__(self, name: str = "main") -> None:
        self.name = name
        self.published = PublishedSymbols()
        self.user: dict[str, SymbolDef] = {}
        self.libraries: list[Library] = []
        self._order: list | None = None  # None: own libraries, then the process
        self._keepalive: dict[str, object] = {}
        self.lock = threading.RLock()

    def __repr__(self) -> str:
        return f"<rtdyld.Dylib {self.name!r}: {len(self.published)} symbols>"

    # --- configuration ----------------------------------------------------------

    def link_order(self, order: list | None = None) -> list:
        """Set (or read) where this dylib looks after itself: other Dylibs, loaded
        library names or paths, and ``"process"``; searched in that order."""
        if order is not None:
            for entry in order:
                if not isinstance(entry, (Dylib, str)):
                    raise TypeError(f"link order entries are Dylibs, library names or 'process', not {entry!r}")
            self._order = list(order)
        return self.order()

    def order(self) -> list:
        if self._order is not None:
            return list(self._order)
        return [*self.libraries, PROCESS]

    def define(self, name: str, target) -> SymbolDef:
        address = host.callback_address(target)
        if not isinstance(target, int):
            self._keepalive[name] = target
        d = SymbolDef(name=name, address=address, origin="user definition")
        self.user[name] = d
        return d

    def add_library(self, lib: Library) -> None:
        self.libraries.append(lib)

    # --- look-ups -----------------------------------------------------------------

    def own(self, name: str, prefix: str = "") -> SymbolDef | None:
        """Published or user-defined here (no link order)."""
        d = self.published.get(name)
        if d is not None:
            return d
        for n in host_names(name, prefix):
            d = self.user.get(n)
            if d is not None:
                return d
        return None

    def defines(self, name: str, prefix: str = "") -> bool:
        """Whether :meth:`own` finds ``name``: without making its SymbolDef."""
        if name in self.published:
            return True
        user = self.user
        return bool(user) and any(n in user for n in host_names(name, prefix))

    def first_defined(self, names: list[str], prefix: str = "") -> str | None:
        """One of ``names`` that :meth:`defines` finds (the first published one,
        else the first user-defined one), or None: one set operation for the
        published names, a pass only if there are user definitions."""
        published = self.published.keys()
        if not published.isdisjoint(names):
            return next(name for name in names if name in published)
        user = self.user
        if user:
            for name in names:
                if any(n in user for n in host_names(name, prefix)):
                    return name
        return None

    def own_many(self, names: list[str], prefix: str = "") -> dict[str, SymbolDef]:
        """:meth:`own` of each of ``names`` found here: name -> definition."""
        found: dict[str, SymbolDef] = {}
        published = self.published
        if published:
            for name in published.keys() & names:  # iterates names, at C speed
                found[name] = published[name]
        user = self.user
        if user:
            for name in names:
                if name not in found:
                    for n in host_names(name, prefix):
                        d = user.get(n)
                        if d is not None:
                            found[name] = d
                            break
        return found

    def resolve(self, name: str, prefix: str = "", pending=None) -> SymbolDef | None:
        """Find ``name`` outside this dylib's batch in flight, or None.

        ``pending(dylib, name)`` lets the batch being linked offer its own
        not-yet-published definitions of other dylibs in the link order.
        """
        # One walk of the chain serves one name and a batch's many alike.
        return self.resolve_many([name], prefix, pending).get(name)

    def resolve_many(self, names: list[str], prefix: str = "", pending=None, process=None) -> dict[str, SymbolDef]:
        """:meth:`resolve` of each of ``names``: name -> definition, for those found.

        Each source of the chain is asked once, for the names no source
        before it defines: a batch's outside names cost one pass over the
        chain (and one over dlsym for the process), not the chain per name.
        ``process(host name, address)`` makes what the process defines
        (default: a :class:`ProcessSymbolDef`).
        """
        found = self.own_many(names, prefix)
        left = [n for n in names if n not in found] if found else names
        for entry in self.order():  # walked once for all the names
            if not left:
                break
            if entry == PROCESS:  # first: the usual last entry, and a Dylib or Library never equals a str
                _found_many(host.process_symbols, process or ProcessSymbolDef, left, prefix, found)
            elif isinstance(entry, Dylib):
                for name in left:
                    d = pending(entry, name) if pending else None
                    d = d or entry.own(name, prefix)
                    if d is not None:
                        found[name] = d
            else:
                lib = entry if isinstance(entry, Library) else next(
                    (x for x in self.libraries if entry in (x.name, x.path)), None)
                if lib is not None:
                    _from_handle_many(lib.handle, lib.path, left, prefix, found)
            left = [n for n in left if n not in found]
        return found

    def lookup(self, name: str) -> SymbolDef | None:
        """A published symbol by its plain or Mach-O-decorated name."""
        return self.published.get(name) or self.published.get("_" + name)


def _unprefixed(names: list[str], prefix: str) -> dict[str, str]:
    """The second of :func:`host_names` of those of ``names`` that have one: name -> host name."""
    n = len(prefix)
    return {name: name[n:] for name in names if name.startswith(prefix) and len(name) > n}


def _from_handle_many(handle, path: str, names: list[str], prefix: str, found: dict) -> None:
    """Each of ``names`` the library ``handle`` defines, into ``found``."""
    _found_many(lambda ns: host.library_symbols(handle, ns),
                lambda n, addr: SymbolDef(name=n, address=addr, origin=path), names, prefix, found)


def _found_many(look_up, make, names: list[str], prefix: str, found: dict) -> None:
    """Each of ``names`` that ``look_up`` (names -> addresses, 0 for none)
    finds, as ``make(host name, address)`` into ``found``: the name itself
    first, then, for those not found, without the object's ``prefix``."""
    for name, addr in zip(names, look_up(names)):
        if addr:
            found[name] = make(name, addr)
    if prefix:
        bare = _unprefixed([n for n in names if n not in found], prefix)
        for (name, n), addr in zip(bare.items(), look_up(list(bare.values()))):
            if addr:
                found[name] = make(n, addr)


class ProcessSymbolDef(SymbolDef):
    """A definition found in the process.  Which library holds it (``origin``)
    costs the loader a look-up (~4 us) that only a message, a map or a trace
    reads, so it is asked for then, once."""

    def __init__(self, name: str, address: int) -> None:
        # The other fields keep SymbolDef's defaults (class attributes): one
        # of these is made per outside name per link, and the dataclass
        # __init__ would also go through the origin property.
        self.name = name
        self.address = address
        self._origin: str | None = None

    @property
    def origin(self) -> str:
        if self._origin is None:
            self._origin = host.describe_address(self.address) or PROCESS
        return self._origin

    @origin.setter
    def origin(self, value: str) -> None:
        self._origin = value


# The name the first design used; a Dylib is the resolver of its batches.
Resolver = Dylib
