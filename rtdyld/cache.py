"""A persistent cache of objects compiled from LLVM IR.

Compiling IR is the slow part of adding a module; the cache keeps the object
of every module it has compiled, keyed by what determines the object's bytes:
the module's bitcode, the target triple, CPU and features, the optimisation
level, relocation and code models, and the LLVM, llvmlite and cache format
versions.  Entries are written atomically, so any number of processes can
share a directory, and are checked on every read (lengths and a sha256), so a
damaged entry is deleted and recompiled rather than linked.

The cache also remembers which module defined each global symbol of a cached
object.  When a later link misses one of those symbols — typically because the
module that defines it was not added this time — :func:`explain_undefined`
names that module.

    cache = ObjectCache("~/.cache/myjit")
    data, name, hit = cache.compile(ir_text, name="kernels.ll")
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from . import irmodule
from .cache_entry import FORMAT_VERSION, TEMP_PREFIX, CorruptEntry, Entry, atomic_write, decode, encode
from .errors import LinkError, UndefinedSymbolError, UsageError
from .objfile.model import SEC_DISCARDED, SEC_UNDEF, Bind

ENTRY_SUFFIX = ".obj"
INDEX_NAME = "index.json"
LOCK_NAME = ".lock"
_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.obj$")

Notify = Callable[[object, bytes], None]
GetBuffer = Callable[[object], "bytes | None"]


def cache_key(bitcode: bytes, settings: dict) -> str:
    """The hex key of the object compiled from ``bitcode`` with ``settings``."""
    import llvmlite

    llvm = irmodule._llvm()
    head = {
        "format": FORMAT_VERSION,
        "llvm": list(llvm.llvm_version_info),
        "llvmlite": llvmlite.__version__,
        **settings,
    }
    h = hashlib.sha256(b"rtdyld object cache\0")
    h.update(json.dumps(head, sort_keys=True).encode())
    h.update(b"\0")
    h.update(bitcode)
    return h.hexdigest()


def defined_symbols(data: bytes, name: str) -> list[str]:
    """The global names an object defines (none if it cannot be read)."""
    from .inputs import parse_object

    try:
        obj = parse_object(data, name)
    except LinkError:
        return []
    sec = obj.symbols["section"]
    bind = obj.symbols["bind"]
    return sorted({
        obj.names[i]
        for i in range(len(obj.names))
        if obj.names[i] and bind[i] != Bind.LOCAL and sec[i] not in (SEC_UNDEF, SEC_DISCARDED)
    })


class ObjectCache:
    """Compiled objects in ``directory``, shared safely between processes.

    ``hits``, ``misses``, ``corrupt`` (damaged entries found and deleted),
    ``compiles`` and ``write_errors`` count this instance's work.
    """

    def __init__(self, directory) -> None:
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        os.makedirs(self.directory, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self.corrupt = 0
        self.compiles = 0
        self.write_errors = 0
        self._lock = threading.Lock()
        self._index_seen: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"<rtdyld.ObjectCache {self.directory}>"

    # --- compiling through the cache ------------------------------------------

    def compile(self, module, name: str | None = None, reloc: str = "pic", code_model: str = "small",
                opt: int = 2, triple: str | None = None, cpu: str = "", features: str = "",
                ) -> tuple[bytes, str, bool]:
        """Object bytes for a module (IR text, bitcode or llvmlite module), the
        name to show for it, and whether they came from the cache.  LLVM
        compiles only on a miss; the result is then stored."""
        mod = irmodule.parse_module(module, name)
        display = name or mod.name or "<module>"
        settings = _object_settings(mod, reloc, code_model, opt, triple, cpu, features)
        key = cache_key(mod.as_bitcode(), settings)
        entry = self._load(key)
        if entry is not None:
            self._remember(entry.symbols, display, key)
            return entry.data, display, True
        tm = irmodule.target_machine(settings["triple"], reloc, code_model, opt, cpu, features)
        if not mod.triple:
            mod.triple = tm.triple
        data = tm.emit_object(mod)
        self._count("compiles")
        self._store(key, data, display, settings)
        return data, display, False

    def key(self, module, name: str | None = None, reloc: str = "pic", code_model: str = "small",
            opt: int = 2, triple: str | None = None, cpu: str = "", features: str = "") -> str:
        """The key :meth:`compile` would use for these arguments."""
        mod = irmodule.parse_module(module, name)
        return cache_key(mod.as_bitcode(), _object_settings(mod, reloc, code_model, opt, triple, cpu, features))

    def llvmlite_hooks(self, triple: str | None = None, **machine) -> tuple[Notify, GetBuffer]:
        """``(notify, getbuffer)`` for ``ExecutionEngine.set_object_cache``.

        Pass the triple of the engine's target machine (default: LLVM's default
        triple) and the keyword arguments given to
        ``Target.create_target_machine`` for it (``opt``, ``reloc``,
        ``codemodel``, ``cpu``, ``features``, ...): they are part of the key,
        and an engine whose target machine differs from them would be handed
        objects built for another machine.

        A module is keyed by its bitcode when the engine asks for it, before
        code generation rewrites the IR; the object the engine then compiles
        is stored under that same key.
        """
        settings = _machine_settings(triple, machine)
        pending: dict[int, str] = {}

        def getbuffer(module) -> bytes | None:
            key = cache_key(module.as_bitcode(), settings)
            entry = self._load(key)
            if entry is None:
                pending[id(module)] = key
                return None
            self._remember(entry.symbols, module.name or "<module>", key)
            return entry.data

        def notify(module, buffer: bytes) -> None:
            self._count("compiles")
            key = pending.pop(id(module), None)
            if key is not None:
                self._store(key, bytes(buffer), module.name or "<module>", settings)

        return notify, getbuffer

    # --- what the cache knows -----------------------------------------------------

    def definer_of(self, symbol: str) -> str | None:
        """The module whose cached object last defined ``symbol``, if any."""
        rec = self._read_index().get(symbol)
        return rec[0] if rec else None

    def stats(self) -> dict:
        """On-disk ``entries``, their total ``bytes`` and the ``directory``,
        with this instance's counters."""
        entries = 0
        size = 0
        for path in self._entry_paths():
            try:
                size += os.stat(path).st_size
            except FileNotFoundError:
                continue
            entries += 1
        with self._lock:
            return {
                "directory": self.directory,
                "entries": entries,
                "bytes": size,
                "hits": self.hits,
                "misses": self.misses,
                "corrupt": self.corrupt,
                "compiles": self.compiles,
                "write_errors": self.write_errors,
            }

    def clear(self) -> int:
        """Delete every entry and the symbol index; returns the entries removed.
        Files the cache did not write are left alone."""
        removed = 0
        with self._index_locked():
            for path in self._entry_paths():
                if _unlink(path):
                    removed += 1
            _unlink(self._index_path)
            for fn in os.listdir(self.directory):
                if fn.startswith(TEMP_PREFIX):
                    _unlink(os.path.join(self.directory, fn))
            with self._lock:
                self._index_seen = {}
        return removed

    # --- entries --------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key + ENTRY_SUFFIX)

    def _entry_paths(self) -> Iterator[str]:
        for fn in sorted(os.listdir(self.directory)):
            if _ENTRY_NAME.match(fn):
                yield os.path.join(self.directory, fn)

    def _load(self, key: str) -> Entry | None:
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                blob = f.read()
        except OSError:
            self._count("misses")
            return None
        try:
            entry = decode(blob, bytes.fromhex(key))
        except CorruptEntry:
            self._count("corrupt")
            self._count("misses")
            _unlink(path)
            return None
        self._count("hits")
        return entry

    def _store(self, key: str, data: bytes, module: str, settings: dict) -> None:
        symbols = defined_symbols(data, module)
        try:
            atomic_write(self._path(key), encode(bytes.fromhex(key), data, module, symbols, settings))
        except FileNotFoundError:
            # A concurrent clear() took the temporary file or the directory.
            return
        except OSError as e:
            self._count("write_errors")
            warnings.warn(f"object cache {self.directory}: cannot store {module}: {e}", RuntimeWarning,
                          stacklevel=3)
            return
        self._remember(symbols, module, key)

    def _count(self, counter: str) -> None:
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)

    # --- the symbol index -------------------------------------------------------

    @property
    def _index_path(self) -> str:
        return os.path.join(self.directory, INDEX_NAME)

    @contextmanager
    def _index_locked(self) -> Iterator[None]:
        # Writers read, update and replace the index under an advisory lock so
        # no process's update is lost; readers need no lock, the replace is atomic.
        with open(os.path.join(self.directory, LOCK_NAME), "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, list[str]]:
        try:
            with open(self._index_path, "rb") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_VERSION or not isinstance(doc.get("symbols"), dict):
            return {}
        return doc["symbols"]

    def _remember(self, symbols: Iterable[str], module: str, key: str) -> None:
        rec = [module, key]
        with self._lock:
            todo = [s for s in symbols if self._index_seen.get(s) != rec]
        if not todo:
            return
        try:
            with self._index_locked():
                index = self._read_index()
                stale = [s for s in todo if index.get(s) != rec]
                for s in stale:
                    index[s] = rec
                if stale:
                    doc = {"format": FORMAT_VERSION, "symbols": index}
                    atomic_write(self._index_path, json.dumps(doc, sort_keys=True).encode())
        except OSError as e:
            self._count("write_errors")
            warnings.warn(f"object cache {self.directory}: cannot update the symbol index: {e}", RuntimeWarning,
                          stacklevel=3)
            return
        with self._lock:
            self._index_seen = index


def _object_settings(mod, reloc: str, code_model: str, opt: int, triple: str | None, cpu: str,
                     features: str) -> dict:
    llvm = irmodule._llvm()
    return {
        "producer": "emit_object",
        "triple": triple or mod.triple or llvm.get_default_triple(),
        "cpu": cpu,
        "features": features,
        "opt": opt,
        "reloc": reloc,
        "code_model": code_model,
    }


def _machine_settings(triple: str | None, machine: dict) -> dict:
    llvm = irmodule._llvm()
    params = inspect.signature(llvm.Target.create_target_machine).parameters
    unknown = sorted(set(machine) - set(params))
    if unknown:
        raise UsageError(f"llvmlite_hooks: not an argument of create_target_machine: {', '.join(unknown)}")
    settings = {n: p.default for n, p in params.items() if n != "self"}
    settings.update(machine)
    settings["producer"] = "mcjit"
    settings["triple"] = triple or llvm.get_default_triple()
    return settings


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


# --- hooks for the linker and the command line ------------------------------------


def explain_undefined(error: UndefinedSymbolError, caches: Iterable[ObjectCache]) -> UndefinedSymbolError:
    """``error`` with a line for each missing symbol a cached module used to
    define, naming that module; ``error`` itself when the caches know none."""
    caches = list(caches)
    notes = []
    for name in sorted(error.missing):
        for cache in caches:
            module = cache.definer_of(name)
            if module is not None:
                notes.append(f"  {name!r} used to be defined by module {module!r} "
                             f"(object cache {cache.directory}): add that module to the link")
                break
    if not notes:
        return error
    return UndefinedSymbolError(f"{error}\n" + "\n".join(notes), error.missing)


def _entries(n: int) -> str:
    return f"{n} entry" if n == 1 else f"{n} entries"


def cache_stats_main(directory) -> str:
    """``rtdyld cache stats DIR``: the text to print."""
    if not os.path.isdir(directory):
        raise UsageError(f"{directory}: no object cache there")
    s = ObjectCache(directory).stats()
    return f"{s['directory']}: {_entries(s['entries'])}, {s['bytes']} bytes"


def cache_clear_main(directory) -> str:
    """``rtdyld cache clear DIR``: empty the cache; the text to print."""
    if not os.path.isdir(directory):
        return f"{directory}: no object cache there, nothing to clear"
    cache = ObjectCache(directory)
    return f"{cache.directory}: removed {_entries(cache.clear())}"
