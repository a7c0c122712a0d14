"""What the process must learn when a batch is loaded and forget when it goes.

A sealed batch is announced to the unwinder (so exceptions and
``backtrace()`` cross its frames) and, when asked for, to a debugger (GDB's
JIT interface) and a profiler (perf's map file).  Removal undoes it in the
reverse order: C++ static destructors (``__cxa_finalize`` on the batch's
``__dso_handle``) run while everything is still in place, then the batch's
finalizers, then the debugger and the unwinder forget the code, and only
then is the memory released.

Debugger registration is opt-in (``Linker(debugger=True)`` or
``RTDYLD_GDB=1``) and automatic for batches loaded while the process is being
traced (checked again at least every ``TRACE_CHECK_INTERVAL`` seconds, so a
debugger attached later sees the batches loaded after it attached); the perf
map is opt-in (``Linker(perf_map=True)`` or ``RTDYLD_PERF_MAP=1``).  Neither
costs anything, nor imports anything, when off.
"""

from __future__ import annotations

import os
import time

from . import cxxabi, unwind


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "true", "on")


# The kernel writes all of /proc/self/status for every read (some 30 us,
# more than the rest of publishing a small batch), so the answer is reused
# for this long.  A person attaching a debugger takes longer than that
# before the process loads anything again.
TRACE_CHECK_INTERVAL = 0.5

_traced: tuple[float, bool] | None = None  # (when it was read, answer)


def _forget_tracer() -> None:
    global _traced
    _traced = None  # a forked child has a tracer of its own (usually none)


os.register_at_fork(after_in_child=_forget_tracer)


def being_traced() -> bool:
    """True when a debugger (or strace) is attached: TracerPid is not 0.

    Read at most once per ``TRACE_CHECK_INTERVAL`` seconds per process."""
    global _traced
    now = time.monotonic()
    cached = _traced
    if cached is not None and now - cached[0] < TRACE_CHECK_INTERVAL:
        return cached[1]
    answer = _read_tracer_pid() != b"0"
    _traced = (now, answer)
    return answer


def _read_tracer_pid() -> bytes:
    """The TracerPid field of /proc/self/status (b"0" when there is none or it cannot be read)."""
    # One raw read, not a text file walked line by line (half the cost).
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY)
        try:
            status = os.read(fd, 1 << 16)
        finally:
            os.close(fd)
    except OSError:
        return b"0"
    at = status.find(b"\nTracerPid:")
    if at < 0:
        return b"0"
    end = status.find(b"\n", at + 1)
    return status[at + 11 : end if end >= 0 else len(status)].strip()


class BatchRuntime:
    """The per-session hooks; ``None`` options come from the environment."""

    def __init__(self, debugger: bool | None = None, perf_map: bool | None = None):
        if debugger is None and _env_flag("RTDYLD_GDB"):
            debugger = True
        if perf_map is None:
            perf_map = _env_flag("RTDYLD_PERF_MAP")
        self.debugger = debugger  # None: whenever the process is traced
        self.perf_map = bool(perf_map)
        if debugger is None:
            # Asked as the session starts; a load within TRACE_CHECK_INTERVAL
            # of it reuses the answer instead of reading /proc again.
            being_traced()
        self._registered: dict[int, list] = {}  # id(LinkedBatch) -> undo actions, newest last

    def loaded(self, lb) -> None:
        """The batch is sealed; its initializers have not run yet."""
        undo = []
        if unwind.register(lb.eh_frame):
            undo.append(lambda: unwind.deregister(lb.eh_frame))
        if self.debugging():
            from . import gdb_jit

            entry = gdb_jit.register(lb)
            if entry is not None:
                undo.append(lambda: gdb_jit.unregister(entry))
        if self.perf_map:
            from . import perfmap

            perfmap.append(lb)
        if undo:
            self._registered[id(lb)] = undo

    def debugging(self) -> bool:
        return self.debugger if self.debugger is not None else being_traced()

    def unloading(self, lb) -> None:
        """Before the batch's finalizers: its C++ static destructors."""
        cxxabi.finalize(lb.dso_handle)

    def unloaded(self, lb) -> None:
        """After the finalizers, before the memory is released."""
        for action in reversed(self._registered.pop(id(lb), [])):
            action()
