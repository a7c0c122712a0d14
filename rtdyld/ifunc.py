"""STT_GNU_IFUNC symbols defined in a batch: run each resolver once, use its result everywhere.

A resolver is code of the batch itself, so it can only run once that code
is executable — and its result must reach places that are sealed with the
rest of the batch.  The scheme is glibc's IRELATIVE, in process:

* at scan time, every reference from code goes through a stub (``jmp
  *slot``), whatever its kind — calls, ``lea``, ``movabs``, ``@PLTOFF`` —
  and GOT loads of an IFUNC are never relaxed, so no code byte depends on
  the result;
* at publish time the code segment alone is sealed RX, the resolvers run
  (no page is ever writable and executable), their results go into the GOT
  slots and into every pointer in data (read-only data and the GOT are still
  writable then), and only then is the rest sealed.

So direct calls, GOT loads and pointers in data all see the resolved
function; an address taken in code (``lea foo(%rip)``) is the stub's, which
jumps to it.  Symbols published for later batches and ``lookup`` carry the
resolved address.  IFUNCs of the host (libc's ``memcpy``) come resolved from
``dlsym`` and need none of this.
"""

from __future__ import annotations

import numpy as np

from . import layout as L
from . import tls
from .errors import LinkError, RelocationOverflowError
from .objfile.model import SymType
from .x86_64 import fixup, scan
from .x86_64.edges import NEEDS_GOT_SLOT, Edge

_GOT_KINDS = [int(k) for k in NEEDS_GOT_SLOT]
# Kinds whose value is S plus something: moving S moves the value by as much.
_S_PLUS = [
    int(k)
    for k in (
        Edge.Pointer64,
        Edge.Pointer32,
        Edge.Pointer32Signed,
        Edge.Pointer16,
        Edge.Pointer8,
        Edge.Delta64,
        Edge.Delta32,
        Edge.Delta16,
        Edge.Delta8,
        Edge.Branch32,
        Edge.GOTBaseOffset64,
    )
]


# A plain int: numpy probes an enum operand's attributes on every comparison.
_IFUNC = int(SymType.IFUNC)


class IfuncError(LinkError):
    """An IFUNC resolver gave no usable address."""


class IfuncPlan:
    # A plain class: a dataclass decoration execs generated code at import (start-up).
    def __init__(self, targets: np.ndarray, deferred: np.ndarray, names: dict[str, int] | None = None,
                 resolver: np.ndarray | None = None, slot_work: dict[int, int] | None = None) -> None:
        self.targets = targets  # canonical symbol ids of the batch's IFUNC symbols
        self.deferred = deferred  # bool per relocation: written again once resolved
        self.names = {} if names is None else names  # published name -> target id
        self.resolver = resolver  # resolver address per target
        self.slot_work = {} if slot_work is None else slot_work  # target -> GOT slot work offset


def plan(batch, scanned: scan.ScanResult) -> tuple[scan.ScanResult, IfuncPlan | None]:
    """Route code references to the batch's IFUNCs through stubs; None when it has none."""
    n = batch.nsyms
    ifunc_def = batch.stype == _IFUNC
    if not np.count_nonzero(ifunc_def):
        return scanned, None  # no IFUNC symbol here: nothing defined nor referred to
    ifunc_def &= batch.gsec >= 0
    if not np.count_nonzero(ifunc_def):
        return scanned, None
    defined = [i for i in batch.defs.values() if ifunc_def[i]]
    tgt = batch.target
    kind = batch.relocs["kind"]
    is_if = np.zeros(len(tgt), dtype=bool)
    internal = tgt < n
    is_if[internal] = ifunc_def[tgt[internal]]
    if not defined and not np.any(is_if):
        return scanned, None
    seg = np.array([p.segment == L.TEXT for p in batch.placed] or [False])
    in_code = seg[batch.relocs["section"]] if len(tgt) else np.zeros(0, dtype=bool)
    got_kind = np.isin(kind, _GOT_KINDS)
    relax = scanned.relax.copy()
    relax[is_if] = scan.RELAX_NONE
    use_stub = scanned.use_stub | (is_if & in_code & ~got_kind)
    needs_slot = got_kind & (relax == scan.RELAX_NONE)
    got_targets = np.unique(np.concatenate([tgt[needs_slot], tgt[use_stub]]))
    stub_targets = np.unique(tgt[use_stub])
    deferred = is_if & ~in_code & np.isin(kind, _S_PLUS)
    tls_sec = np.zeros(max(1, len(batch.placed)), dtype=bool)
    tls_sec[tls.tls_sections(batch)] = True
    in_tls = deferred & tls_sec[batch.relocs["section"]] if len(tgt) else deferred
    if np.any(in_tls):
        # The TLS image is handed to the loader before any resolver can run.
        k = int(np.flatnonzero(in_tls)[0])
        raise IfuncError(
            f"{batch.where(k)}: {batch.rtype_name(k)} against the IFUNC "
            f"{batch.name_of(int(batch.relocs['sym'][k]))!r}: a thread-local initialiser cannot hold "
            "a resolved IFUNC address"
        )
    targets = np.unique(np.concatenate([tgt[is_if], np.array(defined, dtype=np.int64)]))
    wanted = set(targets.tolist())
    names = {name: i for name, i in batch.defs.items() if i in wanted}
    out = scan.ScanResult(got_targets=got_targets, stub_targets=stub_targets, use_stub=use_stub, relax=relax)
    return out, IfuncPlan(targets=targets, deferred=deferred, names=names)


def finish(batch) -> IfuncPlan | None:
    """Record, after the fixups, what :func:`bind` rewrites (addresses, work offsets)."""
    p: IfuncPlan | None = batch.ifunc
    if p is None:
        return None
    base = batch.allocation.target_base
    p.resolver = batch.addr[p.targets].copy()
    p.slot_work = {t: batch.got[t] - base for t in p.targets.tolist() if t in batch.got}
    return p


def bind(lb, executable: bool, run_code: bool = True) -> None:
    """Seal the code, run the resolvers, write their results; the caller seals the rest.

    ``run_code`` False (``Linker(run_initializers=False)``) promises that no
    code of the batch runs while it is linked; a resolver is such code, so a
    batch that needs one is refused rather than bound to unresolved addresses.
    """
    p: IfuncPlan | None = lb.ifunc
    if p is None or not executable:
        return
    if not run_code:
        name = min(p.names) if p.names else "?"
        raise IfuncError(
            f"the IFUNC {name!r} needs its resolver run at link time, but this Linker runs no linked code "
            "(run_initializers=False); link it with run_initializers=True"
        )
    from .host import ffi

    alloc = lb.allocation
    alloc.finalize_segments([L.TEXT])
    resolved = np.zeros(len(p.targets), dtype=np.uint64)
    by_id = {t: i for i, t in enumerate(p.targets.tolist())}
    names = {t: name for name, t in p.names.items()}
    for i, r in enumerate(p.resolver.tolist()):
        result = int(ffi.cast("uintptr_t", ffi.cast("void *(*)(void)", r)()))
        if not result:
            name = names.get(int(p.targets[i]), f"at {r:#x}")
            raise IfuncError(f"the IFUNC resolver of {name!r} returned a null address")
        resolved[i] = result
    mem = alloc.memory
    for t, work in p.slot_work.items():
        mem[work : work + 8] = np.array([resolved[by_id[t]]], dtype="<u8").view(np.uint8)
    rows = np.flatnonzero(p.deferred)
    if len(rows):
        tab = lb.tables  # what the fixups wrote: rewritten with the resolved addresses
        kind, target = tab["kind"][rows], tab["target"][rows]
        idx = np.searchsorted(p.targets, target)
        value = tab["value"][rows] + (resolved[idx] - p.resolver[idx])
        bad = fixup.out_of_range(kind, value)
        if np.any(bad):
            k = int(np.flatnonzero(bad)[0])
            raise RelocationOverflowError(
                f"a {Edge(int(kind[k])).name} reference to the IFUNC {names.get(int(target[k]), '?')!r} "
                f"does not reach its resolved address {int(resolved[idx[k]]):#x}"
            )
        fixup.write(mem, tab["where"][rows], kind, value)
        tab["value"][rows] = value
        tab["S"][rows] = resolved[idx]
    for name, t in p.names.items():
        d = lb.definitions.get(name)
        if d is not None:
            d.address = int(resolved[by_id[t]])
