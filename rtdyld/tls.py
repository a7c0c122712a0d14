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

A later batch may reach the variables of an earlier one (same memory
manager) by general dynamic, and by initial exec when that block is static:
a batch that exports thread-local symbols asks for static TLS when it fits,
for the -fPIE code that reaches them by initial exec.  Local models stay
within their batch, as they do within a shared object; variables of shared
libraries are refused (``dlsym`` gives one thread's copy, not a module).

Each TLS edge kind names an entry (a GOT pair, a slot, an offset); before
the formulas run, :func:`resolve` replaces S by that entry, as a stub
replaces S for a branch.

Links that do not run (``rtdyld trace``/``check``) never load a module: the
image is placed as a static executable's would be (module 1, the block
right below the thread pointer), so the values shown are those a
statically linked program would have.
"""

from __future__ import annotations

import numpy as np

from .errors import LinkError, RelocationOverflowError
from .objfile.model import SectionFlags, SymType
from .x86_64 import fixup
from .x86_64.edges import TLS_KINDS, Edge, kind_mask

# Kind tables: np.isin costs some 15 us a call, a gather one.
_TLS_MASK = kind_mask(TLS_KINDS)
_STATIC = kind_mask([Edge.TPOffset32, Edge.TPOffset64, Edge.GOTTPOffDelta32])
_GD_LD = kind_mask([Edge.TLSGDDelta32, Edge.TLSLDDelta32])


class TlsReferenceError(LinkError):
    """A TLS relocation whose target no batch's TLS block holds, or one its model cannot reach."""


_TLS_FLAG, _ZERO_FILL_FLAG = int(SectionFlags.TLS), int(SectionFlags.ZERO_FILL)
_TLS_SYM = int(SymType.TLS)


def tls_sections(batch) -> list[int]:
    """Batch-wide numbers of the placed TLS sections, found once per batch:
    IntFlag arithmetic costs microseconds per section."""
    found = getattr(batch, "_tls_sections", None)
    if found is None:
        sections = batch.placed_sections
        # A batch has a handful of distinct flag values: test those, not every
        # section, and walk the sections again only when one is TLS.
        tls_flags = {f for f in {s.flags for s in sections} if int(f) & _TLS_FLAG}
        found = batch._tls_sections = [i for i, s in enumerate(sections) if s.flags in tls_flags] if tls_flags else []
    return found


def image_first(batch, placed: list) -> list:
    """``placed`` in layout order: TLS data, then TLS zero-fill, then the rest.

    Laid out first in their segment, the TLS sections form one contiguous
    image, initialised bytes before zero-fill as PT_TLS requires.
    """
    if not tls_sections(batch):
        return placed

    def rank(p) -> int:
        f = int(batch.objects[p.obj].sections[p.index].flags)
        if not f & _TLS_FLAG:
            return 2
        return 1 if f & _ZERO_FILL_FLAG else 0

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
    if len(r) < 2 or not np.count_nonzero(scanned.relax):
        return scanned
    prev = np.zeros(len(r), dtype=bool)
    prev[1:] = (
        _GD_LD[r["kind"][:-1]]
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


# Plain classes: a dataclass decoration execs generated code at import (start-up).


class TlsPlan:
    def __init__(self, sections: np.ndarray, gd_targets: np.ndarray, ie_targets: np.ndarray, local_dynamic: bool,
                 got_off: int, got_size: int, module: object = None, got_address: int = 0) -> None:
        self.sections = sections  # global section ids of the TLS sections
        self.gd_targets = gd_targets  # canonical targets with a general-dynamic GOT pair
        self.ie_targets = ie_targets  # canonical targets with an initial-exec GOT slot
        self.local_dynamic = local_dynamic  # the batch needs the {module, 0} pair
        self.got_off = got_off  # of the TLS GOT entries within the read-only data segment
        self.got_size = got_size
        self.module = module  # TlsModule once loaded (or the static stand-in)
        self.got_address = got_address


class StaticPlacement:
    """The TLS block as a static executable would have it: module 1, just below %fs."""

    def __init__(self, modid: int, tp_offset: int) -> None:
        self.modid = modid
        self.tp_offset = tp_offset

    def close(self) -> None:
        pass


def plan(batch, rodata) -> TlsPlan | None:
    """Reserve the batch's TLS GOT entries in ``rodata`` (a SegmentPlan); None without TLS."""
    sections = tls_sections(batch)
    if not sections and not batch.has_kind(TLS_KINDS):
        return None
    sections = np.array(sections, dtype=np.int64)
    kind = batch.relocs["kind"]
    tgt = batch.target
    gd = np.unique(tgt[kind == Edge.TLSGDDelta32])
    ie = np.unique(tgt[kind == Edge.GOTTPOffDelta32])
    ld = bool(np.any(kind == Edge.TLSLDDelta32))
    size = 16 * (len(gd) + ld) + 8 * len(ie)
    got_off = rodata.place(size, 16)
    return TlsPlan(sections, gd, ie, ld, got_off, size)


def resolve(batch, kind, S, P, G, Z, S2, where) -> np.ndarray:
    """Load the batch's TLS block, fill its GOT entries, return S with TLS targets replaced."""
    tp: TlsPlan | None = batch.tls
    if tp is None:
        return S
    tls = _TLS_MASK[kind]
    exported = _exports_variables(batch)
    if not np.any(tls) and not exported:
        # Nothing can reach the variables: no thread needs a copy.
        return S
    lo, filesz, memsz, align = _image_extent(batch, tp)
    img_addr = batch.allocation.target_base + lo
    own = _check_targets(batch, tls, tp)
    # Per target: (module id, offset in its block, block's offset from the thread pointer or None).
    where_of: dict[int, tuple[int, int, int | None]] = {}
    if np.any(own) or exported:
        init = _relocated_image(batch, tp, kind, S, P, G, Z, S2, where, lo, filesz)
        tp.module = _load_for(batch, init, memsz, align, bool(np.any(_STATIC[kind[own]])), exported)
        batch.allocation.add_release_hook(tp.module.close)
        _register(batch, tp.module, img_addr, memsz)
        targets, first = np.unique(batch.target[own], return_index=True)
        offsets = (S[own][first] - np.uint64(img_addr)).tolist()
        where_of = {t: (tp.module.modid, o, tp.module.tp_offset) for t, o in zip(targets.tolist(), offsets)}
    where_of.update(_foreign(batch, tls & ~own, kind))
    mem = batch.allocation.memory
    base_work = batch.seg_offset["rodata"] + tp.got_off
    base_addr = batch.allocation.target_base + base_work
    tp.got_address = base_addr
    words = []
    for t in tp.gd_targets.tolist():
        modid, o, _ = where_of[t]
        words += [modid, o]
    if tp.local_dynamic:
        words += [tp.module.modid, 0]
    for t in tp.ie_targets.tolist():
        _, o, tpoff = where_of[t]
        words.append((tpoff + o) & 0xFFFFFFFFFFFFFFFF)
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
    off = S - np.uint64(img_addr)
    le = (kind == Edge.TPOffset32) | (kind == Edge.TPOffset64)
    if np.any(le):
        S[le] = off[le] + np.int64(tp.module.tp_offset).view(np.uint64)
    dtp = (kind == Edge.DTPOffset32) | (kind == Edge.DTPOffset64)
    S[dtp] = off[dtp]
    return S


def resolve_unreferenced(batch) -> None:
    """:func:`resolve` for a batch without relocations, whose variables only later batches can reach."""
    none = np.zeros(0, dtype=np.uint64)
    resolve(batch, np.zeros(0, dtype=np.uint8), none, none, none, none, none, np.zeros(0, dtype=np.int64))


def _exports_variables(batch) -> bool:
    """Does the batch define thread-local variables that later batches may reach?"""
    tls_def = (batch.stype == _TLS_SYM) & (batch.gsec >= 0)
    if not np.any(tls_def):
        return False
    defs = np.fromiter(batch.defs.values(), dtype=np.int64, count=len(batch.defs))
    return bool(np.any(tls_def[defs]))


def _load_for(batch, init: bytes, memsz: int, align: int, static: bool, exported: bool):
    """The batch's module; static when its code needs it, and if it fits, when later batches may
    reach its variables (their -fPIE code does so by initial exec)."""
    from .tls_module import TlsModuleError  # the loader's module: only for batches with TLS

    # The loader ignores an empty PT_TLS; zero-sized variables still need a module.
    memsz = max(memsz, 1)
    if static or not exported:
        return _load(batch, init, memsz, align, static)
    try:
        return _load(batch, init, memsz, align, True)
    except TlsModuleError:
        return _load(batch, init, memsz, align, False)


# Live TLS blocks by the memory they were linked through: (image start, end, module).
# A later batch finds the block of a variable an earlier batch defined here.
_BLOCKS: dict[int, list[tuple[int, int, object]]] = {}


def _register(batch, module, lo: int, size: int) -> None:
    entry = (lo, lo + size, module)
    blocks = _BLOCKS.setdefault(id(batch.memory), [])
    blocks.append(entry)

    def forget() -> None:
        if entry in blocks:
            blocks.remove(entry)

    batch.allocation.add_release_hook(forget)


def _foreign(batch, mask, kind) -> dict[int, tuple[int, int, int | None]]:
    """Where the variables of earlier batches that ``mask`` reaches live; raises for the others."""
    ks = np.flatnonzero(mask)
    if not len(ks):
        return {}
    n = batch.nsyms
    blocks = _BLOCKS.get(id(batch.memory), [])
    targets, per_reloc = np.unique(batch.target[ks], return_inverse=True)
    ext = [batch.externals[t - n] for t in targets.tolist()]
    found = [next(((lo, m) for lo, hi, m in blocks if lo <= e.address < hi), None) for e in ext]
    missing = np.array([f is None for f in found])[per_reloc]
    dynamic = np.array([f is not None and f[1].tp_offset is None for f in found])[per_reloc]
    k_kind = kind[ks]
    ie = k_kind == Edge.GOTTPOffDelta32
    bad = missing | ~((k_kind == Edge.TLSGDDelta32) | ie) | (ie & dynamic)
    if np.any(bad):
        j = int(np.argmax(bad))  # the first relocation, in order, that cannot be served
        _refuse(batch, int(ks[j]), kind, ext[per_reloc[j]], found[per_reloc[j]])
    return {
        t: (m.modid, e.address - lo, m.tp_offset) for t, e, (lo, m) in zip(targets.tolist(), ext, found)
    }


def _refuse(batch, k: int, kind, e, found) -> None:
    """Raise for relocation ``k``, whose target ``e`` (in the block ``found``, if any) it cannot reach."""
    if found is None:
        src = f" (found in {e.source})" if e.source else ""
        why = (
            f"{src}: not a thread-local variable of this batch or of an earlier one; variables of "
            "shared libraries are reached through their own accessors"
        )
    elif kind[k] not in (Edge.TLSGDDelta32, Edge.GOTTPOffDelta32):
        why = " (defined in an earlier batch): a local-exec or local-dynamic reference must stay in its batch"
    else:
        why = (
            " (defined in an earlier batch): initial exec needs that batch's TLS at a fixed offset from "
            "the thread pointer, but it only uses the dynamic models; build this object with -fPIC "
            "(general dynamic) or that one with -ftls-model=initial-exec"
        )
    raise TlsReferenceError(f"{batch.where(k)}: {batch.rtype_name(k)} against {e.name!r}{why}")


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


def _check_targets(batch, tls, tp: TlsPlan) -> np.ndarray:
    """TLS relocations against variables of this batch (the others must be external)."""
    tgt = batch.target
    n = batch.nsyms
    internal = tgt < n
    sec = np.full(len(tgt), -1, dtype=np.int64)
    sec[internal] = batch.gsec[tgt[internal]]
    own = tls & np.isin(sec, tp.sections)
    bad = tls & ~own & internal
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise TlsReferenceError(
            f"{batch.where(k)}: {batch.rtype_name(k)} against {batch.name_of(int(batch.relocs['sym'][k]))!r}: "
            "not a thread-local variable"
        )
    inside = np.flatnonzero(tls & np.isin(batch.relocs["section"], tp.sections))
    if len(inside):
        k = int(inside[0])
        raise TlsReferenceError(f"{batch.where(k)}: {batch.rtype_name(k)} inside a TLS section is not supported")
    return own


def _relocated_image(batch, tp, kind, S, P, G, Z, S2, where, lo: int, filesz: int) -> bytes:
    """The initialised part of the image with the relocations inside it applied."""
    img = batch.allocation.memory[lo : lo + filesz].copy()
    inside = np.isin(batch.relocs["section"], tp.sections) & ~_TLS_MASK[kind]
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

    from .tls_module import TlsModule

    if not isinstance(batch.memory, MemoryManager):
        return StaticPlacement(1, -(-memsz // align) * -align)
    return TlsModule(
        init,
        memsz,
        align,
        static,
        ", ".join(o.name for o in batch.objects[:3]) + (", ..." if len(batch.objects) > 3 else ""),
    )
