"""The linker session: add inputs, finalize batches, look up and call, remove."""

from __future__ import annotations

import atexit
import threading
import weakref

from . import host, initfini
from .archives import ArchiveSet, Pull
from .batch import BatchLinker, LinkedBatch
from .errors import LinkError, UndefinedSymbolError, UsageError
from .inputs import parse_object, read_input
from .objfile.model import ObjectFile
from .symbols import Library, Resolver, SymbolDef

_default_memory = None
_default_lock = threading.Lock()


def default_memory():
    """The process-wide memory manager: every session shares one reservation,
    placed near libc so PIE code reaches host data with 32-bit displacements."""
    global _default_memory
    with _default_lock:
        if _default_memory is None:
            from memmgr import MemoryManager

            _default_memory = MemoryManager(near=host.process_symbol("stdout") or None)
        return _default_memory


class Handle:
    """A finalized batch.  Stays loaded until removed (never by garbage collection)."""

    def __init__(self, linker: Linker, batch: LinkedBatch, number: int):
        self._linker = linker
        self.batch = batch
        self.number = number
        self.removed = False

    @property
    def symbols(self) -> dict[str, SymbolDef]:
        return self.batch.definitions

    @property
    def objects(self) -> list[str]:
        return [o.name for o in self.batch.objects]

    def remove(self) -> None:
        """Run finalizers, unpublish the symbols and give the memory back."""
        self._linker.remove(self)

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        if not self.removed:
            self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "loaded"
        return f"<rtdyld.Handle #{self.number} {state}: {', '.join(self.objects)}>"


class Linker:
    """A linking session.

    Objects, modules and archives added since the last :meth:`finalize` form
    one batch.  ``finalize`` links the batch all-or-nothing: on any error the
    session is exactly as it was before it.
    """

    def __init__(self, memory=None, resolver: Resolver | None = None, run_initializers: bool = True):
        self.memory = memory if memory is not None else default_memory()
        self.resolver = resolver if resolver is not None else Resolver()
        self.run_initializers = run_initializers
        self.pending: list[ObjectFile] = []
        self.pending_pulls: list[tuple[ObjectFile, Pull]] = []
        self.archives = ArchiveSet()
        self.handles: list[Handle] = []
        self.kept_groups: set[str] = set()
        self.library_dirs: list[str] = []
        self.pinned: dict[tuple[str, str], int] = {}
        self._lock = threading.RLock()
        self._batches = 0
        _live_linkers.add(self)

    # --- inputs ---------------------------------------------------------------

    def add_object(self, src, name: str | None = None) -> ObjectFile:
        """Add a relocatable object (path, bytes or binary file) to the batch."""
        data, display = read_input(src, name)
        obj = parse_object(data, display)
        with self._lock:
            self.pending.append(obj)
        return obj

    def add_module(self, module, name: str | None = None, reloc: str = "pic", code_model: str = "small",
                   opt: int = 2, triple: str | None = None) -> ObjectFile:
        """Compile LLVM IR (text, bitcode or llvmlite module) and add the object."""
        from .irmodule import compile_module

        data, display = compile_module(module, name, reloc=reloc, code_model=code_model, opt=opt, triple=triple)
        return self.add_object(data, name=display)

    def add_archive(self, path, whole: bool = False) -> None:
        """Register a static archive: members are loaded at finalize only when
        they define a symbol still undefined (all of them with ``whole=True``)."""
        with self._lock:
            ar = self.archives.add(path)
            if whole:
                self.pending_pulls.extend(self.archives.whole(ar))

    def add_file(self, path: str, triple: str | None = None) -> None:
        """Add an input the way the command line does, by its kind:
        LLVM IR (.ll/.bc), assembly (.s), an archive, or an object."""
        import os

        ext = os.path.splitext(str(path))[1]
        if ext in (".ll", ".bc"):
            data, _ = read_input(path)
            self.add_module(data if ext == ".bc" else data.decode(), name=str(path), triple=triple)
        elif ext in (".s", ".S"):
            from .asm import assemble

            data, name = assemble(open(path).read(), name=str(path), triple=triple)
            self.add_object(data, name=name)
        else:
            with open(path, "rb") as f:
                magic = f.read(8)
            if magic in (b"!<arch>\n", b"!<thin>\n"):
                self.add_archive(path)
            else:
                self.add_object(path)

    def link_library(self, name: str, static: bool = False) -> str:
        """``-l NAME``: dlopen libNAME.so, or link libNAME.a lazily when only the
        archive exists or ``static`` is set.  Returns the path used."""
        from .libsearch import find_library

        kind, where = find_library(name, self.library_dirs, static)
        if kind == "archive":
            self.add_archive(where)
            return where
        return self.load_library(where)

    def load_library(self, name: str) -> str:
        """dlopen a shared library (``"m"`` like ``-lm``) as a symbol source; returns its path."""
        handle, path = host.open_library(name, self.library_dirs)
        with self._lock:
            self.resolver.libraries.append(Library(name, path, handle))
        return path

    def define(self, name: str, target) -> None:
        """Make ``name`` resolve to an address or a cffi callback (kept alive)."""
        self.resolver.define(name, target)

    # --- linking ----------------------------------------------------------------

    def finalize(self) -> Handle:
        """Link the pending batch and publish its symbols; returns its handle."""
        with self._lock:
            objects, self.pending = self.pending, []
            whole, self.pending_pulls = self.pending_pulls, []
            pulls = whole + self.archives.pull(objects + [o for o, _ in whole], self._outranks_archives)
            objects = objects + [o for o, _ in pulls]
            linked = BatchLinker(objects, self.resolver, self.memory, self.kept_groups, self.pinned).link()
            linked.pulls = {id(o): p for o, p in pulls}
            handle = self._publish(linked)
            for _, p in pulls:
                self.archives.loaded.add(self.archives.key(p.member))
            return handle

    def _outranks_archives(self, name: str, prefix: str) -> bool:
        """Earlier batches and user definitions come before archives in the chain."""
        r = self.resolver
        if name in r.published or name in r.user:
            return True
        return bool(prefix) and name.startswith(prefix) and name[len(prefix):] in r.user

    def abort(self) -> None:
        """Discard everything added since the last finalize."""
        with self._lock:
            self.pending = []
            self.pending_pulls = []

    def _publish(self, linked: LinkedBatch) -> Handle:
        alloc = linked.allocation
        try:
            alloc.finalize()
        except Exception as e:
            alloc.release()
            raise LinkError(f"cannot apply memory protections: {e}") from None
        self._batches += 1
        handle = Handle(self, linked, self._batches)
        for d in linked.definitions.values():
            d.batch = handle
        if self.run_initializers and self._executable():
            initfini.call_all(initfini.initializer_order(alloc.memory, linked.initializers))
        self.resolver.published.update(linked.definitions)
        self.kept_groups |= linked.kept_groups
        self.handles.append(handle)
        return handle

    def _executable(self) -> bool:
        from memmgr import MemoryManager

        return isinstance(self.memory, MemoryManager)

    def remove(self, handle: Handle) -> None:
        with self._lock:
            if handle.removed:
                return
            linked = handle.batch
            if self.run_initializers and self._executable():
                initfini.call_all(initfini.finalizer_order(linked.allocation.memory, linked.finalizers))
            for name, d in linked.definitions.items():
                if self.resolver.published.get(name) is d:
                    del self.resolver.published[name]
            self.kept_groups -= linked.kept_groups
            for p in linked.pulls.values():
                self.archives.loaded.discard(self.archives.key(p.member))
            linked.allocation.release()
            handle.removed = True
            self.handles.remove(handle)

    def close(self) -> None:
        """Remove every batch, newest first."""
        for h in reversed(list(self.handles)):
            h.remove()

    # --- look-ups -------------------------------------------------------------------

    def lookup(self, name: str) -> int:
        """Address of a symbol published by a finalized batch."""
        d = self.resolver.lookup(name)
        if d is None:
            raise UndefinedSymbolError(f"symbol {name!r} is not defined by any finalized batch", {name: []})
        return d.address

    def symbol(self, name: str) -> SymbolDef:
        d = self.resolver.lookup(name)
        if d is None:
            raise UndefinedSymbolError(f"symbol {name!r} is not defined by any finalized batch", {name: []})
        return d

    def function(self, name: str, signature: str):
        """A cffi callable for ``name`` with a C signature such as ``"int(int, int)"``."""
        addr = self.lookup(name)
        paren = signature.find("(")
        if paren <= 0:
            raise UsageError(f"bad signature {signature!r}: expected e.g. 'int(int, int)'")
        ptype = f"{signature[:paren]}(*){signature[paren:]}"
        try:
            return host.ffi.cast(ptype, addr)
        except Exception as e:
            raise UsageError(f"bad signature {signature!r}: {e}") from None


_live_linkers: weakref.WeakSet[Linker] = weakref.WeakSet()


@atexit.register
def _run_finalizers_at_exit() -> None:
    for ln in list(_live_linkers):
        try:
            ln.close()
        except Exception:
            pass
    host.flush_stdio()
