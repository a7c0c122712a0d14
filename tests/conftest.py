"""Session fixtures shared by the test modules, and the W^X guard.

Every test is followed by a scan of /proc/self/maps that fails the test if a
mapping is both writable and executable.  The host makes a few such mappings
that are none of rtdyld's business: ctypes (imported by llvmlite) and cffi's
ABI-mode callbacks place their libffi closures in read-write-execute pages.
Those are recorded as they appear — the ones present before any test runs,
and the page of every callback made through the ``callback`` fixture — and
only an exact match with a recorded range is tolerated, so an rtdyld mapping
that merges with one of them is still caught.

The same fixture checks that released memory was given back: every free byte
of every memory manager's reservations is PROT_NONE and not resident (see
``invariants.py``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import cffi
import llvmlite.binding  # noqa: F401  (its closure page must predate the baseline)
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures_build import Builder
from invariants import ReleaseGuard


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str

    @property
    def writable_and_executable(self) -> bool:
        return "w" in self.perms and "x" in self.perms

    def __contains__(self, addr: int) -> bool:
        return self.start <= addr < self.end

    def __str__(self) -> str:
        return f"{self.start:x}-{self.end:x} {self.perms} {self.path}".rstrip()


def read_maps() -> list[Mapping]:
    """The current process's mappings."""
    maps = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            path = fields[5].strip() if len(fields) > 5 else ""
            maps.append(Mapping(start, end, fields[1], path))
    return maps


def mapping_of(addr: int) -> Mapping | None:
    """The mapping that contains ``addr``, if any."""
    for m in read_maps():
        if addr in m:
            return m
    return None


class WXGuard:
    """Knows which writable+executable mappings belong to the host."""

    def __init__(self) -> None:
        self.host_ranges = {(m.start, m.end) for m in read_maps() if m.writable_and_executable}
        self.reported: set[tuple[int, int]] = set()

    def allow_page_of(self, addr: int) -> None:
        m = mapping_of(addr)
        if m is not None and m.writable_and_executable:
            self.host_ranges.add((m.start, m.end))

    def violations(self) -> list[Mapping]:
        """Writable+executable mappings the host did not make, not yet reported."""
        known = self.host_ranges | self.reported
        return [m for m in read_maps() if m.writable_and_executable and (m.start, m.end) not in known]

    def report(self) -> list[Mapping]:
        """The violations, each returned once, so one leak fails one test."""
        bad = self.violations()
        self.reported.update((m.start, m.end) for m in bad)
        return bad


# Taken at import, before any test module imports rtdyld.
WX_GUARD = WXGuard()

# cffi callbacks handed to linked code must outlive the code: destructors of
# batches a test never removed run at interpreter exit and may still call them.
HOST_FFI = cffi.FFI()
_CALLBACKS: list[object] = []


def make_callback(decl: str, fn):
    """A cffi callback that lives for the whole session, its page recorded as host's."""
    cb = HOST_FFI.callback(decl, fn)
    _CALLBACKS.append(cb)
    WX_GUARD.allow_page_of(int(HOST_FFI.cast("uintptr_t", cb)))
    return cb


RELEASE_GUARD = ReleaseGuard()


@pytest.fixture(autouse=True)
def no_wx_mappings():
    yield
    bad = WX_GUARD.report()
    assert not bad, "writable and executable mappings:\n" + "\n".join(map(str, bad))
    kept = RELEASE_GUARD.report()
    assert not kept, "released memory not given back:\n" + "\n".join(kept)


@pytest.fixture(scope="session")
def wx_guard() -> WXGuard:
    return WX_GUARD


@pytest.fixture(scope="session")
def build(tmp_path_factory) -> Builder:
    """The session's fixture builder (gcc and llvmlite)."""
    return Builder(tmp_path_factory.mktemp("build"))


@pytest.fixture
def ln():
    """A new Linker for the test, closed after it."""
    import rtdyld

    linker = rtdyld.Linker()
    yield linker
    linker.close()


@pytest.fixture(scope="session")
def callback():
    """``callback(decl, fn)``: a cffi callback safe to give to linked code."""
    return make_callback


@pytest.fixture(scope="session")
def maps() -> SimpleNamespace:
    """Helpers over /proc/self/maps: ``maps.read()``, ``maps.mapping_of(addr)``."""
    return SimpleNamespace(read=read_maps, mapping_of=mapping_of)


_LIBC_CDEF = """
    extern void *stdout;
    extern void *stderr;
    extern char **environ;
    int fflush(void *stream);
    void qsort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *));
"""


@pytest.fixture(scope="session")
def libc():
    """``(ffi, lib)`` for the process's libc, in cffi ABI mode."""
    ffi = cffi.FFI()
    ffi.cdef(_LIBC_CDEF)
    return ffi, ffi.dlopen(None)
