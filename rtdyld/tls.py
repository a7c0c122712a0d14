"""Thread-local storage for a batch: the TLS image, its GOT entries, the TLS fixups.

Scheme.  The batch's TLS sections (.tdata, then .tbss) are laid out as one
image at the start of the read-only data segment, so the ordinary fixup
pass can address them and relocate pointers inside .tdata.  That image is
only the template: each thread's copy lives in a block the process's loader
owns (see :mod:`rtdyld.tls_module` for why), which gives the batch a module
id for the dynamic models and, when the batch uses the static ones, a fixed
offset from the thread pointer.

No instruction is rewritten: every model gcc and clang emit works as
compiled.  General and local dynamic call the process's real
``__tls_get_addr`` with a GOT pair ``{module id, offset}`` (``{module id,
0}`` for local dynamic, whose DTPOFF offsets are then added to the block
address).  Initial exec loads the offset from the thread pointer from a GOT
slot; local exec has it as an immediate.  Sequences may be padded
(``data16``, ``rex64``), call ``__tls_get_addr`` directly, through a stub, or
as ``call *__tls_get_addr@GOTPCREL(%rip)``, or in the large code model
through ``@PLTOFF``: since nothing is rewritten, all of them behave alike.

Each TLS edge kind names an entry (a GOT pair, a slot, an offset); before
the formulas run, :func:`resolve` replaces S by that entry, as a stub
replaces S for a branch.

Links that do not run (``rtdyld trace``/``check``) never load a module: the
image is placed as a static executable's would be (module 1, the block
right below the thread pointer), so the values shown are those a
statically linked program would have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LinkError, RelocationOverflowError
from .objfile.model import SectionFlags
from .x86_64 import fixup
from .x86_64.edges import TLS_KINDS, Edge

_TLS_KINDS = [int(k) for k in TLS_KINDS]
_STATIC = [int(Edge.TPOffset32), int(Edge.TPOffset64), int(Edge.GOTTPOffDelta32)]


class TlsReferenceError(LinkError):
    """A TLS relocation whose target is not a thread-local variable of the batch."""


def _is_tls(batch, p) -> bool:
    return bool(batch.objects[p.obj].sections[p.index].flags & SectionFlags.TLS)


def image_first(batch, placed: list) -> list:
    """``placed`` in layout order: TLS data, then TLS zero-fill, then the rest.

    Laid out first in their segment, the TLS sections form one contiguous
    image, initialised bytes before zero-fill as PT_TLS requires.
    """

    def rank(p) -> int:
        s = batch.objects[p.obj].sections[p.index]
        if not s.flags & SectionFlags.TLS:
            return 2
        return 1 if s.flags & SectionFlags.ZERO_FILL else 0

    return sorted(placed, key=rank)


def keep_tls_calls(batch, scanned):
    """Never relax the ``call *__tls_get_addr@GOTPCREL(%rip)`` of a TLS sequence.

    gcc pads the general-dynamic call with ``data16 rex64`` prefixes; turned
    into ``addr32 call rel32`` those would leave a 0x66 prefix on a direct
    call, which AMD processors honour (a 16-bit call).  The psABI only lets a
    linker rewrite such a call together with its TLSGD/TLSLD instruction,
    so the call keeps its GOT slot.
    """
    r = batch.relocs
    if len(r) < 2:
        return scanned
    prev = np.zeros(len(r), dtype=bool)
    prev[1:] = (
        np.isin(r["kind"][:-1], [int(Edge.TLSGDDelta32), int(Edge.TLSLDDelta32)])
        & (r["section"][:-1] == r["section"][1:])
        & (r["obj"][:-1] == r["obj"][1:])
    )
    stop = prev & (scanned.relax != 0)
    if not np.any(stop):
        return scanned
    relax = scanned.relax.copy()
    relax[stop] = 0
    got = np.unique(np.concatenate([scanned.got_targets, batch.target[stop]]))
    return type(scanned)(got_targets=got, stub_targets=scanned.stub_targets, use_stub=scanned.use_stub, relax=relax)


@dataclass
class TlsPlan:
    sections: np.ndarray  # global section ids of the TLS sections
    gd_targets: np.ndarray  # canonical targets with a general-dynamic GOT pair
    ie_targets: np.ndarray  # canonical targets with an initial-exec GOT slot
    local_dynamic: bool  # the batch needs the {module, 0} pair
    static: bool  # the batch uses initial or local exec
    got_off: int  # of the TLS GOT entries within the read-only data segment
    got_size: int
    module: object = None  # TlsModule once loaded (or the static stand-in)
    got_address: int = 0


@dataclass
class StaticPlacement:
    """The TLS block as a static executable would have it: module 1, just below %fs."""

    modid: int
    tp_offset: int

    def close(self) -> None:
        pass


def plan(batch, rodata) -> TlsPlan | None:
    """Reserve the batch's TLS GOT entries in ``rodata`` (a SegmentPlan); None without TLS."""
    kind = batch.relocs["kind"]
    tls = np.isin(kind, _TLS_KINDS)
    sections = np.array([i for i, p in enumerate(batch.placed) if _is_tls(batch, p)], dtype=np.int64)
    if not np.any(tls) and not len(sections):
        return None
    tgt = batch.target
    gd = np.unique(tgt[kind == Edge.TLSGDDelta32])
    ie = np.unique(tgt[kind == Edge.GOTTPOffDelta32])
    ld = bool(np.any(kind == Edge.TLSLDDelta32))
    size = 16 * (len(gd) + ld) + 8 * len(ie)
    got_off = rodata.place("<TLS GOT>", size, 16)
    return TlsPlan(sections, gd, ie, ld, bool(np.any(np.isin(kind, _STATIC))), got_off, size)


def resolve(batch, kind, S, P, G, Z, S2, where) -> np.ndarray:
    """Load the batch's TLS block, fill its GOT entries, return S with TLS targets replaced."""
    tp: TlsPlan | None = batch.tls
    if tp is None:
        return S
    tls = np.isin(kind, _TLS_KINDS)
    lo, filesz, memsz, align = _image_extent(batch, tp)
    img_addr = batch.allocation.target_base + lo
    if not np.any(tls):
        # Nothing reaches the variables (another batch cannot): no thread needs a copy.
        return S
    _check_targets(batch, tls, tp)
    memsz = max(memsz, 1)  # the loader ignores an empty PT_TLS; zero-sized variables still need a module
    off = S - np.uint64(img_addr)  # meaningful where tls
    init = _relocated_image(batch, tp, kind, S, P, G, Z, S2, where, lo, filesz)
    tp.module = _load(batch, init, memsz, align, tp.static)
    batch.allocation.add_release_hook(tp.module.close)
    mem = batch.allocation.memory
    base_work = batch.seg_offset["rodata"] + tp.got_off
    tp.got_address = batch.allocation.target_base + base_work
    base_addr = batch.allocation.target_base + base_work
    modid = np.uint64(tp.module.modid)
    tpoff = np.int64(tp.module.tp_offset or 0).view(np.uint64) if tp.static else np.uint64(0)
    # The offset of each target symbol in the block (A belongs to the formula, not the entry).
    target_off = dict(zip(batch.target[tls].tolist(), off[tls].tolist()))
    words = []
    for t in tp.gd_targets.tolist():
        words += [modid, np.uint64(target_off[t])]
    if tp.local_dynamic:
        words += [modid, np.uint64(0)]
    for t in tp.ie_targets.tolist():
        words.append(tpoff + np.uint64(target_off[t]))
    if words:
        mem[base_work : base_work + 8 * len(words)] = np.array(words, dtype="<u8").view(np.uint8)
    S = S.copy()
    gd = kind == Edge.TLSGDDelta32
    pair = np.searchsorted(tp.gd_targets, batch.target[gd]).astype(np.uint64)
    S[gd] = np.uint64(base_addr) + pair * np.uint64(16)
    ld = kind == Edge.TLSLDDelta32
    S[ld] = np.uint64(base_addr + 16 * len(tp.gd_targets))
    ie = kind == Edge.GOTTPOffDelta32
    ie_base = base_addr + 16 * (len(tp.gd_targets) + tp.local_dynamic)
    slot = np.searchsorted(tp.ie_targets, batch.target[ie]).astype(np.uint64)
    S[ie] = np.uint64(ie_base) + slot * np.uint64(8)
    le = (kind == Edge.TPOffset32) | (kind == Edge.TPOffset64)
    S[le] = off[le] + tpoff
    dtp = (kind == Edge.DTPOffset32) | (kind == Edge.DTPOffset64)
    S[dtp] = off[dtp]
    return S


def _image_extent(batch, tp: TlsPlan) -> tuple[int, int, int, int]:
    """(work offset, initialised size, total size, alignment) of the TLS image."""
    if not len(tp.sections):
        return 0, 0, 0, 1
    secs = [batch.objects[batch.placed[g].obj].sections[batch.placed[g].index] for g in tp.sections.tolist()]
    works = [batch.placed[g].work for g in tp.sections.tolist()]
    lo = min(works)
    end = max(w + s.size for w, s in zip(works, secs))
    init_end = max([w + s.size for w, s in zip(works, secs) if not s.flags & SectionFlags.ZERO_FILL] or [lo])
    return lo, init_end - lo, end - lo, max(s.align for s in secs)


def _check_targets(batch, tls, tp: TlsPlan) -> None:
    tgt = batch.target
    n = batch.nsyms
    internal = tgt < n
    sec = np.full(len(tgt), -1, dtype=np.int64)
    sec[internal] = batch.gsec[tgt[internal]]
    ok = np.isin(sec, tp.sections)
    bad = tls & ~ok
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        t = int(tgt[k])
        name = batch.externals[t - n].name if t >= n else batch.name_of(int(batch.relocs["sym"][k]))
        where = f" (found in {batch.externals[t - n].source})" if t >= n and batch.externals[t - n].source else ""
        raise TlsReferenceError(
            f"{batch.where(k)}: {batch.rtype_name(k)} against {name!r}{where}: not a thread-local variable "
            "of this batch; thread-local variables must be defined in the batch that uses them"
        )
    inside = np.flatnonzero(tls & np.isin(batch.relocs["section"], tp.sections))
    if len(inside):
        k = int(inside[0])
        raise TlsReferenceError(f"{batch.where(k)}: {batch.rtype_name(k)} inside a TLS section is not supported")


def _relocated_image(batch, tp, kind, S, P, G, Z, S2, where, lo: int, filesz: int) -> bytes:
    """The initialised part of the image with the relocations inside it applied."""
    img = batch.allocation.memory[lo : lo + filesz].copy()
    inside = np.isin(batch.relocs["section"], tp.sections) & ~np.isin(kind, _TLS_KINDS)
    if np.any(inside):
        k = kind[inside]
        v = fixup.compute(
            k, S[inside], batch.relocs["addend"][inside], P[inside], batch.got_base, G[inside], Z[inside], S2[inside]
        )
        if np.any(fixup.out_of_range(k, v)):
            j = int(np.flatnonzero(inside)[np.flatnonzero(fixup.out_of_range(k, v))[0]])
            raise RelocationOverflowError(f"{batch.where(j)}: {batch.rtype_name(j)} does not fit its field")
        fixup.write(img, where[inside] - lo, k, v)
    return img.tobytes()


def _load(batch, init: bytes, memsz: int, align: int, static: bool):
    from memmgr import MemoryManager

    if not isinstance(batch.memory, MemoryManager):
        return StaticPlacement(1, -(-memsz // align) * -align)
    from .tls_module import TlsModule

    return TlsModule(
        init,
        memsz,
        align,
        static,
        ", ".join(o.name for o in batch.objects[:3]) + (", ..." if len(batch.objects) > 3 else ""),
    )
