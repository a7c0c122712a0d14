"""The fuzz oracle: link one input and check that the session survives it.

An input either links (its code is never run: initializers are off and
nothing is called) or is rejected with a :class:`rtdyld.errors.LinkError`.
Any other exception is a failure, and so is a session that differs
afterwards: the published symbols, live allocations, reservations and the
mappings inside them must be as before a rejected batch, and as before a
successful one once it is removed.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from rtdyld import host
from rtdyld.errors import LinkError, MalformedObjectError, UnsupportedRelocationError
from rtdyld.linker import Linker
from rtdyld.objfile.model import SEC_UNDEF, Bind


class OracleFailure(AssertionError):
    """The input crashed the reader or linker in a way it must not."""


# Where undefined names of a fuzzed object are defined, so the link goes on
# to layout and relocation instead of stopping at resolution.
_DUMMY = "stdout"


class Oracle:
    """Links inputs in fresh sessions sharing the process's memory manager.

    ``workdir`` holds ``driver.o`` (it pulls archive members) and the
    members of the thin seed archive; archive inputs are written there.
    """

    def __init__(self, workdir: Path, memory=None):
        self.workdir = Path(workdir)
        self.memory = memory
        self.driver = (self.workdir / "driver.o").read_bytes()
        self._count = itertools.count()

    def check(self, kind: str, data: bytes, whole: bool = False) -> str:
        """Link ``data``; return "linked" or the LinkError class name, else raise OracleFailure."""
        ln = Linker(memory=self.memory, run_initializers=False)
        before = ln.snapshot()
        path = None
        try:
            try:
                if kind == "archive":
                    path = self.workdir / f"case-{os.getpid()}-{next(self._count)}.a"
                    path.write_bytes(data)
                    if whole:
                        ln.add_archive(path, whole=True)
                    else:
                        ln.add_object(self.driver, name="driver.o")
                        ln.add_archive(path)
                else:
                    obj = ln.add_object(data, name=f"fuzz.{kind}")
                    _define_undefined(ln, obj)
                handle = ln.finalize()
            except LinkError as e:
                _check_message(e, path.name if path is not None else f"fuzz.{kind}")
                outcome = type(e).__name__
            except Exception as e:
                raise OracleFailure(f"{type(e).__name__} escaped: {e}") from e
            else:
                handle.remove(force=True)
                outcome = "linked"
            after = ln.snapshot()
            if outcome == "linked":
                del before["archives"], after["archives"]
            if after != before:
                diff = {k: (before[k], after[k]) for k in before if before[k] != after.get(k)}
                raise OracleFailure(f"session changed after {outcome}: {diff}")
            return outcome
        finally:
            ln.abort()
            _close_archives(ln)
            if path is not None:
                path.unlink(missing_ok=True)


def _close_archives(ln: Linker) -> None:
    """Unmap the archives a successful batch registered (a failed one registers none)."""
    for d in ln.dylibs.values():
        registered = getattr(d, "archives", None)
        for ar in registered.archives if registered is not None else ():
            ar.close()


def _define_undefined(ln: Linker, obj) -> None:
    """Give every strong undefined name the host cannot resolve a dummy address."""
    s = obj.symbols
    undefined = (s["section"] == SEC_UNDEF) & (s["bind"] == Bind.GLOBAL)
    address = host.process_symbol(_DUMMY)
    for i in undefined.nonzero()[0].tolist():
        name = obj.names[i]
        if not name or not name.isascii() or "\0" in name:
            continue  # left to the linker: how it treats odd names is under test
        if ln.main.resolve(name, obj.symbol_prefix) is None:
            ln.define(name, address)


def _check_message(e: LinkError, name: str) -> None:
    """A rejection names the input: an object's errors name the object, an
    archive's name the archive (and the member, when it is one)."""
    text = str(e)
    if not text.strip():
        raise OracleFailure(f"{type(e).__name__} with an empty message")
    if isinstance(e, (MalformedObjectError, UnsupportedRelocationError)) and name not in text:
        raise OracleFailure(f"{type(e).__name__} does not name {name!r}: {text}")
