"""The functions a linked batch placed, for debuggers and profilers.

Every defined function symbol of the batch's objects, local ones included
(a backtrace through a ``static`` function should name it too), at its
placed address.  Symbols in dropped COMDAT copies are skipped: the kept copy
names that code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .objfile.model import SymType


@dataclass(frozen=True)
class CodeSymbol:
    address: int
    size: int
    name: str
    local: bool


def function_symbols(lb) -> list[CodeSymbol]:
    """Sorted by address."""
    placed: dict[int, dict[int, int]] = {}
    for p in lb.sections:
        placed.setdefault(p.obj, {})[p.index] = p.address
    out: list[CodeSymbol] = []
    for oi, obj in enumerate(lb.objects):
        where = placed.get(oi)
        if not where or not len(obj.symbols):
            continue
        sec_addr = np.full(len(obj.sections) or 1, -1, dtype=np.int64)
        for index, address in where.items():
            sec_addr[index] = address
        syms = obj.symbols
        sec = syms["section"].astype(np.int64)
        ok = (syms["type"] == SymType.FUNC) & (sec >= 0)
        ok[ok] &= sec_addr[sec[ok]] >= 0
        idx = np.flatnonzero(ok)
        addrs = (sec_addr[sec[idx]] + syms["value"][idx].astype(np.int64)).tolist()
        for i, address, size, bind in zip(idx.tolist(), addrs, syms["size"][idx].tolist(), syms["bind"][idx].tolist()):
            name = obj.names[i]
            if name:
                out.append(CodeSymbol(address, size, name, bind == 0))
    out.sort(key=lambda s: s.address)
    return out
