"""Indirect stubs: a fixed address for a function whose code is replaced.

A stub is ``jmp *slot(%rip)``.  The stubs manager publishes the stub's
address as the name's definition in its dylib, so every batch linked
afterwards, whatever it holds, resolves calls to the name through the
ordinary resolver chain to the stub.  The implementation behind the stub is
linked under a private name (see :mod:`rtdyld.hotswap`) and changes by one
aligned 8-byte store into the stub's slot.

Stubs are allocated in chunks from the Linker's memory manager, each chunk
one allocation: a read-execute segment of stub code followed by a
read-write segment of slots, so the rel32 of every ``jmp`` reaches its slot
and W^X holds without ever flipping a page.  Stub code for a whole chunk is
written while the chunk is in flight; after that only slots change.

A batch a stub jumps into cannot be removed by accident: ``Linker.remove``
refuses, or with ``force=True`` first points the stub at its fallback or at
a trap that names the function and aborts (:meth:`StubsManager.before_remove`).
``Linker.close`` releases stubs, trampolines and the resolver with the
batches (:func:`release_indirection`).
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

import numpy as np

from . import host, stub_slots
from .errors import UsageError
from .objfile.model import Bind, SymType
from .symbols import Dylib, SymbolDef
from .x86_64 import indirection

STUBS_PER_CHUNK = 512  # one page of code (8 bytes a stub), one page of slots
STUB_ORIGIN = "indirect stub"

# Old implementations are released this long after they were replaced at the
# earliest: a thread that was inside the old code when the slot changed must
# have left it by then.  Code that can stay inside one call longer than this
# should be replaced with ``keep_old=True``.
GRACE_SECONDS = 1.0


@dataclass
class Stub:
    name: str
    dylib: Dylib
    address: int
    slot_address: int
    definition: SymbolDef  # what the dylib publishes for the name
    chunk: _Chunk
    index: int  # of the stub in its chunk
    handle: object | None = None  # the batch holding the current target, when rtdyld linked it
    fallback: object = None  # where a forced remove of its target points it, if not at a trap

    @property
    def target(self) -> int:
        """Where the stub jumps now (read back from its slot)."""
        return int(self.chunk.slots[self.index])

    def point(self, address: int, handle) -> None:
        """Re-point the stub: one aligned 8-byte store into its slot."""
        self.chunk.slots[self.index] = address
        self.handle = handle


# Every allocation made for stubs, trampolines and resolvers, with its Linker:
# ``release_indirection`` releases by this table, so nothing made through
# ``allocate`` can be missed, and the test suite's invariants check it.
_owned: dict[int, tuple[object, weakref.ref]] = {}
_closed: weakref.WeakSet = weakref.WeakSet()
_owned_lock = threading.Lock()


def allocate(linker, requests):
    """An allocation for the Linker's indirection code, released by ``Linker.close``."""
    alloc = linker.memory.allocate(requests)
    with _owned_lock:
        _owned[id(alloc)] = (alloc, weakref.ref(linker))
    return alloc


def leaked_allocations() -> list:
    """Indirection allocations still live although their Linker was closed."""
    with _owned_lock:
        return [a for a, ref in _owned.values() if ref() in _closed and a.state != "released"]


class _Chunk:
    def __init__(self, linker):
        size = STUBS_PER_CHUNK * indirection.STUB_SIZE
        from memmgr import Prot, SegmentRequest

        self.allocation = allocate(
            linker,
            [SegmentRequest("stubs", size, Prot.RX), SegmentRequest("stub slots", STUBS_PER_CHUNK * 8, Prot.RW)],
        )
        try:
            code_seg = self.allocation.segment("stubs")
            slot_seg = self.allocation.segment("stub slots")
            base = self.allocation.target_base
            self.code_base = base + code_seg.offset
            self.slot_base = base + slot_seg.offset
            code = b"".join(indirection.stub(self.code_base + i * indirection.STUB_SIZE, self.slot_base + 8 * i)
                            for i in range(STUBS_PER_CHUNK))
            self.allocation.view(code_seg)[:] = np.frombuffer(code, dtype=np.uint8)
            self.allocation.finalize()
        except BaseException:
            self.allocation.release()
            raise
        # The slot segment stays writable after finalize: its uint64 view is
        # where ``update`` stores, one aligned 8-byte store per update.
        self.slots = self.allocation.view(slot_seg).view(np.uint64)
        self.used = 0


class StubsManager:
    """Create, re-point and look up indirect stubs of one Linker.

    Thread safe.  ``update`` never stops a thread: one that already jumped
    through the old slot value runs the old code to the end of that call.
    """

    def __init__(self, linker):
        if not linker._executable():
            raise UsageError("indirect stubs need a Linker whose memory runs in this process")
        self.linker = linker
        self._chunks: list[_Chunk] = []
        self._stubs: dict[tuple[int, str], Stub] = {}
        self._retired: list[tuple[object, float]] = []  # (Handle, time it was replaced)
        self._lock = threading.RLock()

    # --- the three operations ---------------------------------------------------

    def create(self, name: str, target=None, dylib: Dylib | None = None) -> int:
        """Make a stub for ``name`` pointing at ``target`` and publish it as ``name``;
        returns the stub's address.

        ``target`` is an address, a cffi function pointer or callback, the name
        of a defined symbol, or None for the name's current definition.
        Callers linked from now on, in any batch, bind to the stub; earlier
        batches keep the address they were linked against.
        """
        d = self.linker._dylib(dylib)
        with self._lock:
            if (id(d), name) in self._stubs:
                raise UsageError(f"{name!r} already has an indirect stub in dylib {d.name!r}")
            address, handle = self._target(target if target is not None else name, d)
            chunk = self._chunk()
            i = chunk.used
            chunk.used += 1
            stub_address = chunk.code_base + i * indirection.STUB_SIZE
            definition = SymbolDef(
                name=name,
                address=stub_address,
                size=indirection.STUB_SIZE,
                type=SymType.FUNC,
                bind=Bind.GLOBAL,
                origin=STUB_ORIGIN,
                section="stubs",
            )
            stub = Stub(name, d, stub_address, chunk.slot_base + 8 * i, definition, chunk, i)
            stub.point(address, handle)
            self._stubs[(id(d), name)] = stub
            stub_slots.register(stub_address, stub.slot_address)
            d.published[name] = definition
            return stub_address

    def update(self, name: str, new_target, dylib: Dylib | None = None, handle=None) -> None:
        """Point the stub of ``name`` at ``new_target`` (as for :meth:`create`).

        One aligned 8-byte store: a concurrent caller jumps either to the old
        target or to the new one, never to a torn address.
        """
        stub = self.stub(name, dylib)
        with self._lock:
            address, found = self._target(new_target, stub.dylib)
            stub.point(address, handle if handle is not None else found)

    def address(self, name: str, dylib: Dylib | None = None) -> int:
        """The stub's address: what callers of ``name`` are linked against."""
        return self.stub(name, dylib).address

    # --- queries ------------------------------------------------------------------------

    def stub(self, name: str, dylib: Dylib | None = None) -> Stub:
        d = self.linker._dylib(dylib)
        stub = self._stubs.get((id(d), name))
        if stub is None:
            raise UsageError(f"{name!r} has no indirect stub in dylib {d.name!r}; create one with stubs.create")
        return stub

    def has(self, name: str, dylib: Dylib | None = None) -> bool:
        return (id(self.linker._dylib(dylib)), name) in self._stubs

    def target(self, name: str, dylib: Dylib | None = None) -> int:
        """Where the stub of ``name`` jumps now (read back from its slot)."""
        return self.stub(name, dylib).target

    def __iter__(self):
        return iter(list(self._stubs.values()))

    def __len__(self) -> int:
        return len(self._stubs)

    # --- old implementations ----------------------------------------------------------

    def retire(self, handle) -> None:
        """Remove ``handle`` once no stub targets it, no live batch refers to it,
        and GRACE_SECONDS have passed (see :meth:`reclaim`)."""
        with self._lock:
            if handle is not None and all(h is not handle for h, _ in self._retired):
                self._retired.append((handle, time.monotonic()))

    def reclaim(self, grace: float = GRACE_SECONDS) -> list:
        """Remove the retired batches that are no longer needed; returns them.

        Called on every hot swap; call it yourself (``grace=0`` once you know no
        thread is still inside old code) to release memory sooner.
        """
        removed = []
        now = time.monotonic()
        with self.linker._lock, self._lock:
            keep = []
            for handle, since in self._retired:
                if handle.removed:
                    continue
                busy = bool(self.pointing_into(handle))
                users = [h for h in handle.dependents if not h.removed]
                if busy or users or now - since < grace:
                    keep.append((handle, since))
                    continue
                self.linker.remove(handle)
                removed.append(handle)
            self._retired = keep
        return removed

    # --- batches going away -----------------------------------------------------------

    def pointing_into(self, handle) -> list[Stub]:
        """The stubs whose slot holds an address inside ``handle``'s memory."""
        ranges = _ranges(handle)
        with self._lock:
            return [s for s in self._stubs.values() if s.handle is handle or _inside(s.target, ranges)]

    def before_remove(self, handle, force: bool) -> None:
        """Called by ``Linker.remove`` (under the Linker lock) before ``handle`` goes.

        A stub must never jump into released memory: unless ``force``, refuse
        while a stub targets the batch; with ``force``, point each such stub
        at its fallback, or at a trap that names the function and aborts.
        """
        with self._lock:
            stubs = self.pointing_into(handle)
            if not stubs:
                return
            if not force:
                names = ", ".join(repr(s.name) for s in stubs)
                raise UsageError(
                    f"cannot remove batch #{handle.number} ({', '.join(handle.objects)}): the indirect stub(s) of "
                    f"{names} still jump into it; re-point them first (Linker.replace or stubs.update) or pass "
                    "force=True, which points them at their fallback or else at a trap that aborts when called"
                )
            ranges = _ranges(handle)
            for s in stubs:
                self._disarm(s, handle, ranges)

    def _disarm(self, stub: Stub, handle, ranges) -> None:
        if stub.fallback is not None:
            try:
                address, found = self._target(stub.fallback, stub.dylib)
            except UsageError:
                address, found = 0, None
            if address and found is not handle and not _inside(address, ranges):
                stub.point(address, found)
                return
        from .compile_callbacks import trap

        why = (f"{stub.name!r} was called after batch #{handle.number} ({', '.join(handle.objects)}), "
               "which held its code, was removed with force=True")
        stub.point(trap(self.linker, stub.name, stub.dylib, why), None)

    def close(self) -> None:
        """Unpublish every stub; ``release_indirection`` then releases their memory."""
        with self._lock:
            for stub in self._stubs.values():
                stub_slots.unregister(stub.address)
                if stub.dylib.published.get(stub.name) is stub.definition:
                    del stub.dylib.published[stub.name]
            self._stubs.clear()
            self._chunks.clear()
            self._retired.clear()

    # --- internals ---------------------------------------------------------------------

    def _chunk(self) -> _Chunk:
        if not self._chunks or self._chunks[-1].used == STUBS_PER_CHUNK:
            self._chunks.append(_Chunk(self.linker))
        return self._chunks[-1]

    def _target(self, target, dylib: Dylib) -> tuple[int, object | None]:
        """(address, Handle holding it or None) for an address, callback or name."""
        if isinstance(target, str):
            stub = self._stubs.get((id(dylib), target))
            if stub is not None:
                return stub.target, stub.handle
            d = dylib.resolve(target)
            if d is None:
                raise UsageError(f"cannot point a stub at {target!r}: no such symbol in dylib {dylib.name!r}")
            return d.address, d.batch
        try:
            address = host.callback_address(target)
        except TypeError as e:
            raise UsageError(f"bad stub target: {e}") from None
        if address <= 0 or address >= 1 << 64:
            raise UsageError(f"bad stub target address {address:#x}")
        return address, None


def _ranges(handle) -> list[tuple[int, int]]:
    """[start, end) of each allocation of ``handle``."""
    return [(lb.allocation.target_base, lb.allocation.target_base + lb.allocation.size) for _, lb in handle.parts]


def _inside(address: int, ranges) -> bool:
    return any(lo <= address < hi for lo, hi in ranges)


def stubs_of(linker) -> StubsManager:
    """The Linker's stubs manager, made on first use."""
    with linker._lock:
        mgr = getattr(linker, "_stubs_manager", None)
        if mgr is None:
            mgr = linker._stubs_manager = StubsManager(linker)
        return mgr


def release_indirection(linker) -> None:
    """For ``Linker.close``, once every batch is gone: unpublish the stubs and
    release the memory of stubs, lazy trampolines and the lazy resolver."""
    with linker._lock:
        mgr = linker.__dict__.pop("_stubs_manager", None)
        if mgr is not None:
            mgr.close()
        callbacks = linker.__dict__.pop("_compile_callbacks", None)
        if callbacks is not None:
            callbacks.close()
        with _owned_lock:
            allocations = [a for a, ref in _owned.values() if ref() is linker]
            _closed.add(linker)
        for alloc in allocations:
            alloc.release()
        with _owned_lock:
            for alloc in allocations:
                if alloc.state == "released":  # what is kept stays listed, for leaked_allocations
                    del _owned[id(alloc)]
