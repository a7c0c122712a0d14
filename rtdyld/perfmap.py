"""perf's JIT symbol map: ``/tmp/perf-<pid>.map``.

``perf report`` names samples in anonymous executable memory from this file:
one ``START SIZE name`` line per function, both numbers in hex.  Each
published batch appends its functions (opt-in: ``Linker(perf_map=True)``,
``RTDYLD_PERF_MAP=1`` or ``rtdyld run --perf-map``).

The format has no way to retract a line, and perf reads the file after the
run, when it must still name samples taken while a removed batch was live.
So removal writes nothing: the lines of a removed batch stay, and a later
batch placed at the same addresses appends its own lines after them.
"""

from __future__ import annotations

import os
import threading

from .code_symbols import function_symbols

_lock = threading.Lock()


def path(pid: int | None = None) -> str:
    return f"/tmp/perf-{os.getpid() if pid is None else pid}.map"


def lines(lb) -> list[str]:
    return [f"{s.address:x} {max(s.size, 1):x} {s.name}\n" for s in function_symbols(lb)]


def append(lb) -> None:
    text = "".join(lines(lb))
    if not text:
        return
    with _lock, open(path(), "a") as f:
        f.write(text)
