"""The relocation trace: every fixup of a batch, as it was computed and written.

A trace is built from ``LinkedBatch.tables`` — the very arrays the fixup pass
used for P, S, G, the value and the relaxation — and from the allocation's
working memory, so it cannot disagree with what is in memory.  The bytes
"before" are the section's bytes as the object holds them (exactly what the
fixup pass found in working memory, so it keeps no copy); "after" is working
memory.  Instructions are decoded (capstone, AT&T syntax) from the nearest
preceding symbol or the section start, so instruction boundaries are the
real ones.
"""

from __future__ import annotations

import bisect
import fnmatch
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from .batch import LinkedBatch
from .objfile.model import SectionFlags, SymType
from .symmap import BatchSymbols, matches_object
from .x86_64 import scan
from .x86_64.edges import WIDTH, Edge

RELAX_NAMES = {
    scan.RELAX_MOV: "mov *GOT -> lea",
    scan.RELAX_CALL: "call *GOT -> addr32 call",
    scan.RELAX_JMP: "jmp *GOT -> jmp; nop",
}
# How many bytes before the field a relaxation rewrites (opcode, ModRM).
_RELAX_LEAD = {scan.RELAX_MOV: 2, scan.RELAX_CALL: 2, scan.RELAX_JMP: 1}


@dataclass
class FixupRecord:
    """One relocation applied.  ``P`` is the address of the field written
    (for a relaxed ``jmp`` one byte before the original field), ``bytes_at``
    the address of the first byte of ``bytes_before``/``bytes_after``."""

    object: str
    section: str
    offset: int
    P: int
    type: str
    symbol: str
    S: int
    A: int
    value: int  # as stored: the low ``width`` bytes
    width: int
    bytes_at: int
    bytes_before: str
    bytes_after: str
    insn_before: str
    insn_after: str
    target: int | None  # the target's own address (S is the stub's when one is used)
    source: str  # who supplied the target: an object, a library, "process", "user definition"
    stub: int | None = None
    got: int | None = None
    relax: str = ""

    def to_json(self) -> dict:
        return {"record": "fixup", **asdict(self)}


@dataclass
class GotRecord:
    address: int
    symbol: str
    value: int  # the slot's contents in memory
    source: str

    def to_json(self) -> dict:
        return {"record": "got", **asdict(self)}


@dataclass
class StubRecord:
    address: int
    symbol: str
    got: int
    insn: str

    def to_json(self) -> dict:
        return {"record": "stub", **asdict(self)}


@dataclass
class ExternalRecord:
    symbol: str
    address: int
    source: str

    def to_json(self) -> dict:
        return {"record": "external", **asdict(self)}


@dataclass
class PullRecord:
    member: str
    symbol: str
    referrer: str

    def to_json(self) -> dict:
        return {"record": "pull", **asdict(self)}


@dataclass
class Trace:
    fixups: list[FixupRecord] = field(default_factory=list)
    got: list[GotRecord] = field(default_factory=list)
    stubs: list[StubRecord] = field(default_factory=list)
    externals: list[ExternalRecord] = field(default_factory=list)
    pulls: list[PullRecord] = field(default_factory=list)

    def filter(
        self,
        symbol: str | None = None,
        section: str | None = None,
        object: str | None = None,
        type: str | None = None,
    ) -> Trace:
        """The fixups matching every given filter (shell wildcards allowed;
        ``--type PLT32`` matches ``R_X86_64_PLT32``), and the GOT slots,
        stubs and externals of the symbols they use."""
        fixups = [
            f
            for f in self.fixups
            if (symbol is None or fnmatch.fnmatchcase(f.symbol, symbol))
            and (section is None or fnmatch.fnmatchcase(f.section, section))
            and (object is None or _object_matches(f.object, object))
            and (type is None or _type_matches(f.type, type))
        ]
        if symbol is section is object is type is None:
            return Trace(fixups, self.got, self.stubs, self.externals, self.pulls)
        used = {f.symbol for f in fixups}
        return Trace(
            fixups,
            [g for g in self.got if g.symbol in used],
            [s for s in self.stubs if s.symbol in used],
            [e for e in self.externals if e.symbol in used],
            [p for p in self.pulls if object is None or _object_matches(p.member, object)],
        )

    def records(self) -> Iterator:
        yield from self.fixups
        yield from self.got
        yield from self.stubs
        yield from self.externals
        yield from self.pulls


def _object_matches(name: str, pattern: str) -> bool:
    return matches_object(name, pattern) or fnmatch.fnmatchcase(name, pattern)


def _type_matches(name: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(name, pattern):
        return True
    return any(fnmatch.fnmatchcase(name, p + pattern) for p in ("R_X86_64_", "X86_64_RELOC_"))


# --- disassembly -------------------------------------------------------------------


class _Decoder:
    """Instruction boundaries and text, decoded once per (image, anchor)."""

    def __init__(self, names: dict[int, str]):
        import capstone

        self._cs = capstone
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.syntax = capstone.CS_OPT_SYNTAX_ATT
        md.skipdata = True
        md.detail = True
        self.md = md
        self.names = names
        self._cache: dict[tuple, tuple[list[int], list]] = {}

    def containing(self, key, image: bytes, base: int, start: int, end: int, offset: int) -> str:
        """``"ADDR: BYTES  TEXT"`` of the instruction of ``image`` holding ``offset``,
        decoding ``image[start:end]`` at address ``base + start``."""
        ck = (key, start)
        if ck not in self._cache:
            insns = list(self.md.disasm(image[start:end], base + start))
            self._cache[ck] = ([i.address - base for i in insns], insns)
        starts, insns = self._cache[ck]
        k = bisect.bisect_right(starts, offset) - 1
        if k < 0 or offset >= starts[k] + insns[k].size:
            return ""
        insn = insns[k]
        text = f"{insn.mnemonic} {insn.op_str}".strip()
        note = self._annotation(insn)
        return f"{insn.address:#x}: {insn.bytes.hex(' ')}  {text}{note}"

    def _annotation(self, insn) -> str:
        x86 = self._cs.x86
        try:
            operands = insn.operands
        except self._cs.CsError:
            return ""
        for op in operands:
            if op.type == x86.X86_OP_MEM and op.mem.base == x86.X86_REG_RIP:
                target = (insn.address + insn.size + op.mem.disp) & 0xFFFFFFFFFFFFFFFF
                return f"  # {target:#x}{self._name(target)}"
            if op.type == x86.X86_OP_IMM and (insn.group(self._cs.CS_GRP_JUMP) or insn.group(self._cs.CS_GRP_CALL)):
                return self._name(op.imm & 0xFFFFFFFFFFFFFFFF)
        return ""

    def _name(self, address: int) -> str:
        name = self.names.get(address)
        return f" <{name}>" if name else ""


# --- building the trace -----------------------------------------------------------------


def _hex(b: bytes) -> str:
    return b.hex(" ")


class _Builder:
    def __init__(self, batch: LinkedBatch, disassemble: bool):
        self.batch = batch
        self.view = BatchSymbols(batch)
        self.memory = batch.allocation.memory
        self.base = batch.allocation.target_base
        self.disassemble = disassemble
        self._anchors: dict[int, list[int]] = {}
        self._decoder: _Decoder | None = None

    def names(self) -> dict[int, str]:
        """Addresses worth naming in disassembly: definitions, externals, stubs, GOT slots."""
        names: dict[int, str] = {}
        for e in self.batch.externals:
            names.setdefault(e.address, e.name)
        for d in self.batch.definitions.values():
            names[d.address] = d.name
        for t, a in self.batch.got.items():
            names[a] = f"GOT[{self.view.target_name(t)}]"
        for t, a in self.batch.stubs.items():
            names[a] = f"stub {self.view.target_name(t)}"
        return names

    def decoder(self) -> _Decoder:
        if self._decoder is None:
            self._decoder = _Decoder(self.names())
        return self._decoder

    def before_image(self, placed: int) -> bytes:
        """A section's bytes before the fixups: the object's bytes (zeros for zero-fill)."""
        p = self.batch.sections[placed]
        s = self.batch.objects[p.obj].sections[p.index]
        return bytes(s.data).ljust(s.size, b"\0")

    def after_image(self, placed: int) -> bytes:
        p = self.batch.sections[placed]
        size = self.batch.objects[p.obj].sections[p.index].size
        return bytes(self.memory[p.work : p.work + size])

    def anchor(self, placed: int, offset: int) -> tuple[int, int]:
        """Where to start decoding for ``offset``: the nearest preceding symbol
        of the section (or its start), and where the next one begins."""
        anchors = self._anchors.get(placed)
        if anchors is None:
            p = self.batch.sections[placed]
            o = self.batch.objects[p.obj]
            s = o.symbols
            m = (s["section"] == p.index) & (s["type"] != SymType.SECTION) & (s["type"] != SymType.FILE)
            anchors = sorted({0, *s["value"][m].astype(np.int64).tolist()})
            self._anchors[placed] = anchors
        k = bisect.bisect_right(anchors, offset) - 1
        if k + 1 < len(anchors):
            return anchors[k], anchors[k + 1]
        p = self.batch.sections[placed]
        return anchors[k], self.batch.objects[p.obj].sections[p.index].size

    def build(self) -> Trace:
        trace = Trace()
        t = self.batch.tables
        view = self.view
        if t:
            self._fixups(t, trace)
        for tgt, address in sorted(self.batch.got.items(), key=lambda kv: kv[1]):
            work = address - self.base
            value = int.from_bytes(bytes(self.memory[work : work + 8]), "little")
            trace.got.append(GotRecord(address, view.target_name(tgt), value, view.target_source(tgt)))
        for tgt, address in sorted(self.batch.stubs.items(), key=lambda kv: kv[1]):
            insn = ""
            if self.disassemble:
                work = address - self.base
                image = bytes(self.memory[work : work + 8])
                insn = self.decoder().containing(("stub", address), image, address, 0, len(image), 0)
            trace.stubs.append(StubRecord(address, view.target_name(tgt), self.batch.got[tgt], insn))
        for e in self.batch.externals:
            trace.externals.append(ExternalRecord(e.name, e.address, e.source))
        for o in self.batch.objects:
            p = self.batch.pulls.get(id(o))
            if p is not None:
                trace.pulls.append(PullRecord(o.name, p.symbol, p.referrer))
        return trace

    def _fixups(self, t: dict, trace: Trace) -> None:
        r = t["relocs"]
        kind, target = t["kind"], t["target"]
        width = WIDTH[kind]
        relax = t["relax"]
        use_stub = t["use_stub"]
        got_kinds = np.isin(kind, [int(k) for k in (Edge.GOTDelta32, Edge.GOTDelta32Relaxable,
                                                     Edge.GOTOffset64, Edge.GOTDelta64)])
        mask = np.where(width >= 8, np.uint64(0xFFFFFFFFFFFFFFFF),
                        (np.uint64(1) << (width.astype(np.uint64) * np.uint64(8))) - np.uint64(1))
        stored = t["value"] & mask
        section = r["section"]
        images = {p: (self.before_image(p), self.after_image(p)) for p in np.unique(section).tolist()}
        view = self.view
        targets = {
            tgt: (view.target_name(tgt), view.target_address(tgt), view.target_source(tgt))
            for tgt in np.unique(target).tolist()
        }
        cols = zip(
            section.tolist(),
            r["offset"].tolist(),
            r["obj"].tolist(),
            r["rtype"].tolist(),
            r["addend"].tolist(),
            target.tolist(),
            t["where"].tolist(),
            t["P"].tolist(),
            t["S"].tolist(),
            stored.tolist(),
            width.tolist(),
            relax.tolist(),
            use_stub.tolist(),
            got_kinds.tolist(),
        )
        for placed, offset, oi, rtype, addend, tgt, w, P, S, value, nbytes, rx, stub, got_kind in cols:
            p = self.batch.sections[placed]
            obj = self.batch.objects[oi]
            sec = obj.sections[p.index]
            before, after = images[placed]
            field_at = w - p.work
            lo = field_at - _RELAX_LEAD.get(rx, 0)
            hi = field_at + nbytes + (1 if rx == scan.RELAX_JMP else 0)
            insn_before = insn_after = ""
            if self.disassemble and sec.flags & SectionFlags.EXEC:
                start, end = self.anchor(placed, offset)
                dec = self.decoder()
                insn_before = dec.containing(("before", placed), before, p.address, start, end, offset)
                insn_after = dec.containing(("after", placed), after, p.address, start, end, offset)
            slot = self.batch.got.get(tgt) if got_kind and rx == scan.RELAX_NONE else None
            name, address, source = targets[tgt]
            trace.fixups.append(
                FixupRecord(
                    object=obj.name,
                    section=sec.name,
                    offset=offset,
                    P=P,
                    type=obj.reloc_type_name(rtype),
                    symbol=name,
                    S=S,
                    A=addend,
                    value=value,
                    width=nbytes,
                    bytes_at=p.address + lo,
                    bytes_before=_hex(before[lo:hi]),
                    bytes_after=_hex(after[lo:hi]),
                    insn_before=insn_before,
                    insn_after=insn_after,
                    target=address,
                    source=source,
                    stub=S if stub else None,
                    got=slot,
                    relax=RELAX_NAMES.get(rx, ""),
                )
            )


def build_trace(batch: LinkedBatch, disassemble: bool = True) -> Trace:
    """The trace of a linked batch (finalized or still in flight, not released)."""
    return _Builder(batch, disassemble).build()


# --- output --------------------------------------------------------------------------


def _signed_hex(v: int) -> str:
    return f"-{-v:#x}" if v < 0 else f"{v:#x}"


FIXUP_COLUMNS = ("OBJECT", "SECTION", "OFFSET", "P", "TYPE", "SYMBOL", "S", "A", "VALUE")


def fixup_cells(f: FixupRecord) -> tuple[str, ...]:
    """The table cells of a fixup, in FIXUP_COLUMNS order."""
    return (
        f.object,
        f.section,
        f"{f.offset:#x}",
        f"{f.P:#x}",
        f.type,
        f.symbol,
        f"{f.S:#x}",
        _signed_hex(f.A),
        f"{f.value:#0{2 + 2 * f.width}x}",
    )


def table_lines(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """The header and rows as lines of left-aligned columns two spaces apart."""
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows)]


def format_table(trace: Trace) -> str:
    """The trace as text: the fixup table (each row followed by its bytes,
    instructions and how the target was reached), then GOT slots, stubs,
    externals and pulled archive members."""
    out: list[str] = []
    n = len(trace.fixups)
    out.append(f"{n} relocation{'s' if n != 1 else ''} applied")
    if trace.fixups:
        lines = table_lines(FIXUP_COLUMNS, [fixup_cells(f) for f in trace.fixups])
        out.append(lines[0])
        for f, line in zip(trace.fixups, lines[1:]):
            out.append(line)
            out.append(f"    bytes   {f.bytes_at:#x}: {f.bytes_before} -> {f.bytes_after}")
            if f.insn_before or f.insn_after:
                out.append(f"    before  {f.insn_before or '?'}")
                out.append(f"    after   {f.insn_after or '?'}")
            where = f" = {f.target:#x}" if f.target is not None else ""
            via = [f"{f.symbol}{where} from {f.source}"]
            if f.stub is not None:
                via.append(f"via stub {f.stub:#x}")
            if f.got is not None:
                via.append(f"GOT slot {f.got:#x}")
            if f.relax:
                via.append(f"relaxed: {f.relax}")
            out.append(f"    {'; '.join(via)}")
    if trace.got:
        out.append("")
        out.append(f"GOT slots ({len(trace.got)}):")
        out.extend("  " + line for line in table_lines(
            ("ADDRESS", "SYMBOL", "CONTENTS", "FROM"),
            [(f"{g.address:#x}", g.symbol, f"{g.value:#x}", g.source) for g in trace.got],
        ))
    if trace.stubs:
        out.append("")
        out.append(f"Stubs ({len(trace.stubs)}):")
        out.extend("  " + line for line in table_lines(
            ("ADDRESS", "SYMBOL", "GOT SLOT", "CODE"),
            [(f"{s.address:#x}", s.symbol, f"{s.got:#x}", s.insn) for s in trace.stubs],
        ))
    if trace.externals:
        out.append("")
        out.append(f"Externals ({len(trace.externals)}):")
        out.extend("  " + line for line in table_lines(
            ("SYMBOL", "ADDRESS", "FROM"),
            [(e.symbol, f"{e.address:#x}", e.source) for e in trace.externals],
        ))
    if trace.pulls:
        out.append("")
        out.append(f"Archive members loaded ({len(trace.pulls)}):")
        out.extend("  " + line for line in table_lines(
            ("MEMBER", "FOR", "REFERENCED BY"),
            [(p.member, p.symbol or "(whole archive)", p.referrer) for p in trace.pulls],
        ))
    return "\n".join(out) + "\n"


def format_json(trace: Trace) -> str:
    """One JSON object per line: every record, with a ``record`` field saying its kind."""
    return "".join(json.dumps(r.to_json(), sort_keys=False) + "\n" for r in trace.records())


__all__ = [
    "FIXUP_COLUMNS",
    "ExternalRecord",
    "FixupRecord",
    "GotRecord",
    "PullRecord",
    "StubRecord",
    "Trace",
    "build_trace",
    "fixup_cells",
    "format_json",
    "format_table",
    "table_lines",
]
