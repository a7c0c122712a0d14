"""Compile callbacks: functions compiled and linked when first called.

``add_lazy(name, compile_fn)`` publishes an indirect stub for ``name`` whose
slot first points at a trampoline of its own.  The trampoline enters the
resolver (:func:`rtdyld.x86_64.indirection.resolver`), which saves the
argument registers and calls :func:`_resolve` in Python through one cffi
callback with the function's id.  That runs ``compile_fn`` once, links the
result privately (:mod:`rtdyld.hotswap`), re-points the stub and returns the
implementation's address; the resolver restores the registers and jumps
there, so the first call completes as if it had been direct and later calls
go through the stub alone.

Threads: cffi takes the GIL for the callback, and a per-function lock makes
the first callers of one function wait for a single compilation (the GIL is
released while they wait and while LLVM compiles).  The compiling thread
takes the Linker lock *before* the per-function lock and holds both while
``compile_fn`` runs and the result is linked: the one lock order there is,
so an initializer running inside ``finalize`` (which holds the Linker lock)
may call a lazy function that another thread has begun compiling — that
thread either holds the Linker lock already, and the initializer waits for
it, or waits for the Linker lock without holding the function's.  The price
is that compilations, like initializers, run one at a time per Linker, and a
compile function must not wait for another thread that uses the Linker.

A function whose ``compile_fn`` calls that same function again would need
its own code to exist; that is reported as a compilation failure instead of
recursing.

Failures: the call must never jump into garbage.  If ``compile_fn`` raises,
the function's name and the traceback are printed to stderr and, if a
fallback was registered, the stub is pointed at the fallback (later calls go
straight there) and the call proceeds into it; otherwise the process aborts.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field

import numpy as np

from . import host
from .errors import UsageError
from .symbols import Dylib
from .x86_64 import indirection

TRAMPOLINES_PER_CHUNK = 256  # one page at 16 bytes each


@dataclass
class LazyFunction:
    id: int
    name: str
    dylib: Dylib
    compile_fn: object
    fallback: object
    linker: object
    trampoline: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    compiling: int | None = None  # thread ident while compile_fn runs
    address: int = 0  # the implementation, once linked
    trap: str | None = None  # set for a trap: calling it prints this and aborts


# One cffi callback serves every resolver in the process: each callback costs a
# libffi closure, and ids are unique process-wide.
_functions: dict[int, LazyFunction] = {}
_ids = itertools.count(1)
_registry_lock = threading.Lock()
_callback = None


def callback_address() -> int:
    """Address of the cffi callback the resolvers call (made on first use)."""
    global _callback
    with _registry_lock:
        if _callback is None:
            _callback = host.ffi.callback("uint64_t(uint64_t)", _resolve, onerror=_escaped)
        return int(host.ffi.cast("uintptr_t", _callback))


def _resolve(function_id: int) -> int:
    fn = _functions.get(function_id)
    if fn is None:  # only reachable if code jumped into a trampoline it was never given
        _die(f"rtdyld: lazy call with unknown function id {function_id}\n")
    if fn.trap is not None:
        _die(f"rtdyld: {fn.trap}; aborting\n")
    if fn.address:
        return fn.address
    me = threading.get_ident()
    if fn.compiling == me:
        return _failed(fn, UsageError(f"{fn.name!r} was called while its compile function was running"))
    with fn.linker._lock, fn.lock:
        if fn.address:  # another thread compiled it while we waited
            return fn.address
        fn.compiling = me
        try:
            address, handle = materialise(fn.linker, fn.name, fn.compile_fn(), fn.dylib)
        except BaseException as e:  # noqa: BLE001 - it cannot cross machine code: fall back or abort
            return _failed(fn, e)
        finally:
            fn.compiling = None
        stubs = fn.linker.stubs
        with stubs._lock:
            current = stubs.target(fn.name, fn.dylib)
            if current == fn.trampoline:
                stubs.update(fn.name, address, fn.dylib, handle=handle)
            else:
                # Replaced (Linker.replace, stubs.update) while compiling: the
                # newer definition wins; this call goes there too.
                stubs.retire(handle)
                address = current
        fn.address = address
        return address


def materialise(linker, name: str, result, dylib: Dylib) -> tuple[int, object | None]:
    """(address, Handle or None) for what a compile function returned: an
    address or cffi function pointer, or something that defines ``name``
    (an object, LLVM IR, an llvmlite module), which is linked privately."""
    if isinstance(result, (int, host.ffi.CData)) and not isinstance(result, bool):
        address = host.callback_address(result)
        if not address:
            raise UsageError(f"the compile function of {name!r} returned a null address")
        return address, None
    if result is None:
        raise UsageError(f"the compile function of {name!r} returned None")
    from .hotswap import link_implementation

    return link_implementation(linker, name, result, dylib)


def _failed(fn: LazyFunction, error: BaseException) -> int:
    lines = traceback.format_exception(type(error), error, error.__traceback__)
    head = f"rtdyld: compiling lazy function {fn.name!r} failed:\n"
    if fn.fallback is None:
        _die(head + "".join(lines) + "rtdyld: no fallback registered; aborting\n")
    try:
        address, _ = fn.linker.stubs._target(fn.fallback, fn.dylib)
    except BaseException as e:  # noqa: BLE001 - as above: nothing may propagate back into the caller's machine code
        _die(head + "".join(lines) + f"rtdyld: the fallback {fn.fallback!r} cannot be used ({e}); aborting\n")
    sys.stderr.write(head + "".join(lines) + f"rtdyld: calling the fallback of {fn.name!r} instead\n")
    sys.stderr.flush()
    # The stub now goes to the fallback, so later calls neither retry the
    # compilation nor print the traceback again.
    fn.linker.stubs.update(fn.name, address, fn.dylib)
    fn.address = address
    return address


def _escaped(exc_type, exc, tb) -> None:
    # cffi would return 0 from the callback, and the resolver would jump to it.
    _die("rtdyld: internal error in the lazy resolver:\n" + "".join(traceback.format_exception(exc_type, exc, tb)))


def _die(message: str) -> None:
    try:
        sys.stderr.write(message)
        sys.stderr.flush()
    finally:
        os.abort()


def _sealed_code(linker, what: str, size: int, code_at):
    """A read-execute allocation of ``size`` bytes holding ``code_at(its address)``, sealed."""
    from memmgr import Prot, SegmentRequest

    from .lazy import allocate

    alloc = allocate(linker, [SegmentRequest(what, size, Prot.RX)])
    alloc.view(0)[:] = np.frombuffer(code_at(alloc.target_base), dtype=np.uint8)
    alloc.finalize()
    return alloc


class CompileCallbacks:
    """One Linker's resolver and trampolines (they must lie in its reservation)."""

    def __init__(self, linker):
        self.linker = linker
        code = indirection.resolver(callback_address())
        self.resolver_allocation = _sealed_code(linker, "lazy resolver", len(code), lambda _: code)
        self.resolver_address = self.resolver_allocation.target_base
        self._free: list[tuple[int, int]] = []  # (id, address) of the trampolines not handed out yet
        self._lock = threading.Lock()

    def trampoline(self) -> tuple[int, int]:
        """(id, address) of a fresh trampoline.

        A chunk's trampolines are all written, with ids reserved for them,
        before it is sealed: none is ever patched later.
        """
        with self._lock:
            if not self._free:
                with _registry_lock:
                    ids = [next(_ids) for _ in range(TRAMPOLINES_PER_CHUNK)]
                size = indirection.TRAMPOLINE_SIZE

                def code_at(base):
                    return b"".join(indirection.trampoline(base + k * size, fid, self.resolver_address)
                                    for k, fid in enumerate(ids))

                base = _sealed_code(self.linker, "lazy trampolines", len(ids) * size, code_at).target_base
                self._free = [(fid, base + k * size) for k, fid in enumerate(ids)]
            return self._free.pop(0)

    def close(self) -> None:
        """Forget the Linker's lazy functions; their memory goes with ``release_indirection``."""
        with _registry_lock:
            for fid in [fid for fid, fn in _functions.items() if fn.linker is self.linker]:
                del _functions[fid]
        self._free.clear()


def callbacks_of(linker) -> CompileCallbacks:
    """The Linker's resolver and trampolines, made on first use."""
    with linker._lock:
        callbacks = getattr(linker, "_compile_callbacks", None)
        if callbacks is None:
            callbacks = linker._compile_callbacks = CompileCallbacks(linker)
        return callbacks


def _register(linker, name: str, dylib: Dylib, compile_fn=None, fallback=None, trap=None) -> LazyFunction:
    """A function on a fresh trampoline of the Linker, known to the resolver's callback."""
    fid, address = callbacks_of(linker).trampoline()
    fn = LazyFunction(fid, name, dylib, compile_fn, fallback, linker, address, trap=trap)
    with _registry_lock:
        _functions[fid] = fn
    return fn


def trap(linker, name: str, dylib: Dylib, why: str) -> int:
    """Address of a fresh trampoline whose caller gets ``why`` on stderr and an abort."""
    return _register(linker, name, dylib, trap=why).trampoline


def add_lazy(linker, name: str, compile_fn, signature: str | None = None, fallback=None,
             dylib: Dylib | None = None):
    """See :meth:`rtdyld.Linker.add_lazy`."""
    if not callable(compile_fn):
        raise UsageError(f"the compile function of {name!r} must be callable")
    d = linker._dylib(dylib)
    with linker._lock:
        fn = _register(linker, name, d, compile_fn, fallback)
        try:
            stub = linker.stubs.create(name, fn.trampoline, d)
        except BaseException:
            with _registry_lock:
                del _functions[fn.id]
            raise
        linker.stubs.stub(name, d).fallback = fallback
    if signature is not None:
        return linker.function(name, signature, dylib)
    return stub
