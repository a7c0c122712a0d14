"""The C++ ABI's per-object pieces: ``__dso_handle`` and ``__cxa_finalize``.

g++ registers the destructor of every static object with
``__cxa_atexit(dtor, obj, &__dso_handle)``.  In a shared object,
``crtbegin.o`` defines ``__dso_handle`` (hidden) so each object has its own
address, and unloading it calls ``__cxa_finalize(&__dso_handle)``, which runs
and forgets exactly that object's destructors.  A batch is our shared object:
the linker gives each batch that refers to ``__dso_handle`` a private 8-byte
definition in its read-only segment.  It is never published, so every batch
gets its own, and it is gone with the batch.

Removal calls ``__cxa_finalize`` on that address before the batch's
``.fini_array``, the order ``exit()`` uses for a program (atexit handlers,
then the loader's fini arrays), and before the memory is released, so no
destructor can run after its code is gone: glibc marks the entries it ran,
and the process's own ``exit()`` later skips them.  The session's atexit
hook removes every live batch before the interpreter exits.
"""

from __future__ import annotations

import threading

from . import host

DSO_HANDLE = "__dso_handle"
DSO_HANDLE_SIZE = 8

_lock = threading.Lock()
_finalize = None


def _cxa_finalize():
    global _finalize
    with _lock:
        if _finalize is None:
            addr = host.process_symbol("__cxa_finalize")
            _finalize = host.ffi.cast("void (*)(void *)", addr) if addr else False
        return _finalize


def finalize(dso_handle: int) -> None:
    """Run (once) every ``__cxa_atexit`` destructor registered with ``dso_handle``."""
    if not dso_handle:
        return
    fn = _cxa_finalize()
    if fn:
        fn(host.ffi.cast("void *", dso_handle))
