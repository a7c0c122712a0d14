"""The check environment of a finished link: answers a check expression's
questions (symbol, section, GOT entry and stub addresses, memory contents)
from a :class:`~rtdyld.linker.Linker` and the batch it just linked.

Every address is a target address.  Memory is read from working memory,
which is where the linker wrote (for an in-process link the same pages).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from .batch import LinkedBatch
from .check import CheckError, evaluate, extract_checks
from .errors import UsageError
from .symmap import GOT_SYMBOL, BatchSymbols


class LinkCheckEnv:
    """A :class:`rtdyld.check.model.CheckEnv` over one linked batch.

    The GOT and the stubs are the batch's: one slot and one stub per target,
    shared by every object and section of the batch, so ``file`` (and
    ``section``) must name a loaded object (section) but do not select
    among several entries.
    """

    def __init__(self, linker, batch: LinkedBatch):
        self.linker = linker
        self.batch = batch
        self.view = BatchSymbols(batch)

    def symbol_address(self, name: str) -> int:
        if name == GOT_SYMBOL:
            return self.batch.got_base
        try:
            return self.view.symbol_address(name)
        except KeyError:
            pass
        except LookupError as e:
            raise CheckError(str(e)) from None
        d = self.linker.resolver.lookup(name)
        if d is not None:
            return d.address
        raise CheckError(f"unknown symbol {name!r}")

    def read_memory(self, addr: int, size: int) -> bytes:
        for batch in self._batches():
            alloc = batch.allocation
            mem = alloc.memory
            for p in batch.sections:
                length = batch.objects[p.obj].sections[p.index].size
                if p.address <= addr < p.address + length:
                    start = p.work + addr - p.address
                    return bytes(mem[start : min(start + size, p.work + length)])
            for seg in alloc.segments:
                lo = alloc.target_base + seg.offset
                if lo <= addr < lo + seg.size:
                    start = addr - alloc.target_base
                    return bytes(mem[start : min(start + size, seg.offset + seg.size)])
        raise CheckError(f"cannot read {size} byte{'s' if size != 1 else ''} at {addr:#x}: not in linked memory")

    def _batches(self) -> list[LinkedBatch]:
        out = [self.batch]
        out.extend(h.batch for h in self.linker.handles if h.batch is not self.batch)
        return out

    def section_address(self, file: str, section: str) -> int:
        oi = self._object(file)
        try:
            return self.view.placed_section(oi, section).address
        except KeyError:
            raise CheckError(f"no section {section!r} loaded from {file}") from None

    def got_address(self, file: str, symbol: str) -> int:
        self._object(file)
        for t in self.view.targets_named(symbol):
            if t in self.batch.got:
                return self.batch.got[t]
        raise CheckError(f"no GOT entry for {symbol!r} in {file}{self._why_none(symbol, 'direct or relaxed')}")

    def stub_address(self, file: str, section: str | None, symbol: str) -> int:
        oi = self._object(file)
        if section is not None:
            try:
                self.view.placed_section(oi, section)
            except KeyError:
                raise CheckError(f"no section {section!r} loaded from {file}") from None
        for t in self.view.targets_named(symbol):
            if t in self.batch.stubs:
                return self.batch.stubs[t]
        raise CheckError(f"no stub for {symbol!r} in {file}{self._why_none(symbol, 'in reach')}")

    def _object(self, file: str) -> int:
        try:
            return self.view.object_index(file)
        except KeyError:
            names = ", ".join(o.name for o in self.batch.objects)
            raise CheckError(f"no object {file!r} in the link (objects: {names})") from None

    def _why_none(self, symbol: str, reason: str) -> str:
        if not self.view.targets_named(symbol):
            return ": no relocation refers to it"
        return f": every reference to it is {reason}"


def run_checks(linker, batch: LinkedBatch, files: Iterable[str], prefixes: Iterable[str],
               verbose: bool = False, out=None) -> int:
    """Evaluate the checks of ``files`` against a linked batch, print each
    failure (each pass too with ``verbose``) and a summary line; return the
    exit status: 0 if every check passed and every file had checks, else 1."""
    out = out if out is not None else sys.stdout
    prefixes = list(prefixes)
    env = LinkCheckEnv(linker, batch)
    passed = failed = 0
    empty: list[str] = []
    files = list(files)
    for path in files:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError as e:
            raise UsageError(f"cannot read check file {path}: {e.strerror or e}") from None
        checks = extract_checks(text, prefixes, source=str(path))
        if not checks:
            empty.append(str(path))
            print(f"{path}: error: no checks (no line with {' or '.join(p + ':' for p in prefixes)})", file=out)
            continue
        for check in checks:
            try:
                result = evaluate(check, env)
            except CheckError as e:
                failed += 1
                print(f"{e}", file=out)
                continue
            if result.passed:
                passed += 1
                if verbose:
                    print(result.message, file=out)
            else:
                failed += 1
                print(result.message, file=out)
    total = passed + failed
    summary = (f"{total} check{'s' if total != 1 else ''} in {len(files)} file{'s' if len(files) != 1 else ''}: "
               f"{passed} passed, {failed} failed")
    if empty:
        summary += f"; {len(empty)} file{'s' if len(empty) != 1 else ''} without checks"
    print(summary, file=out)
    return 0 if not failed and not empty else 1


__all__ = ["LinkCheckEnv", "run_checks"]
