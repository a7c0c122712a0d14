"""x86-64 instruction operands numbered as in LLVM's ``MCInst``.

``decode_operand(label, N)`` in a check means operand ``N`` of the ``MCInst``
LLVM's disassembler builds.  Capstone decodes the bytes; this module lays its
operands out the way LLVM does:

* defs first, then uses; a register is one operand, an immediate one, and a
  memory reference five: base, scale, index, displacement, segment;
* the destination of a two-address instruction appears twice, as the def and
  as the tied use (``addq foo(%rip), %rax`` is ADD64rm: ``rax, rax, rip, 1,
  -, disp, -``);
* registers the encoding implies are not operands (``addq $1, %rax`` in its
  short form ADD64i32 has only the immediate, ``shlq %cl, %rax`` has no
  ``cl``);
* conditional jumps, ``setcc`` and ``cmovcc`` end with the condition code
  (X86::CondCode: 0 = o … 4 = e, 5 = ne … 15 = g);
* a pc-relative branch's immediate is the encoded displacement (target −
  next pc), not the target;
* immediates have the value LLVM gives them: an 8-bit immediate is
  sign-extended unless the instruction takes an unsigned byte (shift counts,
  shuffle masks, ``int``), a 16- or 32-bit one is sign-extended only when it
  is narrower than the operation;
* a ``lock`` prefix decodes as an instruction of its own (LOCK_PREFIX, no
  operands), as LLVM's disassembler does.

Verified against LLVM 14's disassembler for calls, jumps, conditional jumps,
loads and stores (including SSE and AVX moves), ``lea``, ``movabs``, moves of
immediates, ALU operations with memory, register and immediate operands,
shifts, ``imul``, ``cmov``, ``setcc``, conversions, x87 and string
instructions, and for the code of a C library (about 20,000 distinct
instruction forms).  Instructions outside those follow the same rules but are not
guaranteed; LLVM itself renumbers a few of them between releases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from rtdyld.check.model import CheckError

MAX_INSTRUCTION_SIZE = 15

# capstone's operand types, access flags and the group of pc-relative
# branches (capstone.x86 and capstone constants, kept here so that importing
# this module does not load capstone).
_X86_OP_REG, _X86_OP_IMM, _X86_OP_MEM = 1, 2, 3
_CS_AC_READ, _CS_AC_WRITE = 1, 2
_CS_GRP_BRANCH_RELATIVE = 7

_LOCK = 0xF0
_PREFIXES = frozenset([_LOCK, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65, 0x66, 0x67])
_VEX_OR_EVEX = frozenset([0xC4, 0xC5, 0x62])
# Opcodes (first byte, legacy map) whose accumulator operand is implicit.
_ACCUMULATOR_IMM = frozenset([op for base in range(0x00, 0x40, 0x08) for op in (base + 4, base + 5)] + [0xA8, 0xA9])
_STRING = frozenset([0x6C, 0x6D, 0x6E, 0x6F, *range(0xA4, 0xA8), *range(0xAA, 0xB0)])
_IN_OUT_IMM = frozenset([0xE4, 0xE5, 0xE6, 0xE7])
_IN_OUT_DX = frozenset([0xEC, 0xED, 0xEE, 0xEF])
_MOFFS = frozenset([0xA0, 0xA1, 0xA2, 0xA3])
_SHIFT_BY_ONE = frozenset([0xD0, 0xD1])
_SHIFT_BY_CL = frozenset([0xD2, 0xD3])
# One-byte-map opcodes whose 8-bit immediate LLVM reads as unsigned.
_UNSIGNED_IMM8 = frozenset([0xC0, 0xC1, 0xCD, *_IN_OUT_IMM])
# Legacy SSE scalar operations that merge into their destination, so LLVM's
# disassembler picks the tied "_Int" form although the register is only
# written as far as capstone is concerned.
_MERGING_SSE = frozenset(
    ["sqrtss", "sqrtsd", "rcpss", "rsqrtss", "cvtsi2ss", "cvtsi2sd", "cvtss2sd", "cvtsd2ss", "roundss", "roundsd"]
)
_DEST_INDEX = ("rdi", "edi")
_ACCUMULATORS = ("rax", "eax", "ax")
_PREDICATED = ("cmp", "pcmp", "pclmul")


@dataclass(frozen=True)
class Operand:
    """One ``MCInst`` operand.

    ``kind`` is ``"imm"`` (``value`` is the immediate as LLVM's signed 64-bit
    integer) or ``"reg"`` (``register`` is capstone's name for it, ``""`` for
    LLVM's "no register").
    """

    kind: str
    value: int = 0
    register: str = ""

    def __str__(self) -> str:
        if self.kind == "imm":
            return f"imm {self.value:#x}" if self.value >= 0 else f"imm -{-self.value:#x}"
        return f"reg {self.register or '<none>'}"


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction: where it is, how long, its AT&T text and its
    operands in ``MCInst`` order."""

    address: int
    size: int
    text: str
    operands: tuple[Operand, ...]

    @property
    def next_pc(self) -> int:
        return self.address + self.size


def _imm(value: int) -> Operand:
    return Operand("imm", value)


def _reg(name: str) -> Operand:
    return Operand("reg", register=name)


@cache
def _disassemblers():
    import capstone

    intel = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    intel.detail = True
    att = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    att.syntax = capstone.CS_OPT_SYNTAX_ATT
    return intel, att


def decode(code: bytes, address: int = 0) -> Instruction:
    """Decode the instruction at the start of ``code`` (which sits at
    ``address``) into LLVM's operand numbering; raise :class:`CheckError`
    when the bytes are not a valid x86-64 instruction."""
    code = bytes(code[:MAX_INSTRUCTION_SIZE])
    if code[:1] == bytes([_LOCK]):
        return Instruction(address, 1, "lock", ())
    if code[:2] in (b"\xf2\xf0", b"\xf3\xf0"):
        return Instruction(address, 1, "xacquire" if code[0] == 0xF2 else "xrelease", ())
    intel, att = _disassemblers()
    insn = next(intel.disasm(code, address, 1), None)
    if insn is None:
        raise CheckError(f"cannot decode an instruction at {address:#x} (bytes {code.hex(' ') or 'none'})")
    printed = next(att.disasm(code, address, 1), None)
    text = f"{printed.mnemonic} {printed.op_str}".strip() if printed else insn.mnemonic
    return Instruction(address, insn.size, text, tuple(_mcinst_operands(insn)))


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _raw_immediate(insn) -> int:
    raw = bytes(insn.bytes)
    return int.from_bytes(raw[insn.imm_offset : insn.imm_offset + insn.imm_size], "little")


def _opcode(raw: bytes) -> tuple[str, int]:
    """The opcode map ("" for the one-byte map, "0f", "0f38", "0f3a", or
    "vex" for VEX/EVEX) and the opcode byte within it (for "vex", the
    VEX/EVEX lead byte)."""
    i = 0
    while i < len(raw) and raw[i] in _PREFIXES:
        i += 1
    if i < len(raw) and 0x40 <= raw[i] <= 0x4F:
        i += 1
    lead = raw[i]
    if lead in _VEX_OR_EVEX:
        return "vex", lead
    if lead != 0x0F:
        return "", lead
    if raw[i + 1] in (0x38, 0x3A):
        return f"0f{raw[i + 1]:02x}", raw[i + 2]
    return "0f", raw[i + 1]


def _immediate(insn, op, opmap: str, opcode: int) -> int:
    size = insn.imm_size
    if size == 0 or sum(1 for o in insn.operands if o.type == _X86_OP_IMM) > 1:
        return op.imm
    value = _raw_immediate(insn)
    if size == 1:
        unsigned = opmap != "" or opcode in _UNSIGNED_IMM8
        return value if unsigned else _signed(value, 8)
    if size < op.size or size == 8:
        return _signed(value, size * 8)
    return value


def _memory(insn, op) -> list[Operand]:
    mem = op.mem
    return [
        _reg(insn.reg_name(mem.base) if mem.base else ""),
        _imm(mem.scale),
        _reg(insn.reg_name(mem.index) if mem.index else ""),
        _imm(mem.disp),
        _reg(insn.reg_name(mem.segment) if mem.segment else ""),
    ]


def _string_operands(insn) -> list[Operand]:
    # MOVS/CMPS/STOS/LODS/SCAS/INS/OUTS take a destination index (one
    # register) and a source index (register and segment), destination first.
    dest: list[Operand] = []
    src: list[Operand] = []
    for op in insn.operands:
        if op.type != _X86_OP_MEM:
            continue
        base = insn.reg_name(op.mem.base) if op.mem.base else ""
        if base in _DEST_INDEX:
            dest = [_reg(base)]
        else:
            seg = insn.reg_name(op.mem.segment) if op.mem.segment else ""
            src = [_reg(base), _reg(seg)]
    return dest + src


def _mcinst_operands(insn) -> list[Operand]:
    opmap, opcode = _opcode(bytes(insn.bytes))
    first = opcode if opmap == "" else None
    second = opcode if opmap == "0f" else None
    ops = list(insn.operands)

    if _CS_GRP_BRANCH_RELATIVE in insn.groups and insn.imm_size:
        out = [_imm(_signed(_raw_immediate(insn), insn.imm_size * 8))]
        if first is not None and 0x70 <= first <= 0x7F:
            out.append(_imm(first & 0xF))
        elif second is not None and 0x80 <= second <= 0x8F:
            out.append(_imm(second & 0xF))
        return out
    if first in _ACCUMULATOR_IMM or first in _IN_OUT_IMM:
        return [_imm(_immediate(insn, o, opmap, opcode)) for o in ops if o.type == _X86_OP_IMM]
    if first in _IN_OUT_DX:
        return []
    if first in _MOFFS:
        mem = next(o for o in ops if o.type == _X86_OP_MEM).mem
        seg = insn.reg_name(mem.segment) if mem.segment else ""
        return [_imm(mem.disp), _reg(seg)]
    if first in _STRING:
        return _string_operands(insn)
    if first is not None and 0x90 <= first <= 0x97 and insn.mnemonic == "xchg":
        names = [insn.reg_name(o.reg) for o in ops]
        name = next((n for n in names if n not in _ACCUMULATORS), names[0])
        return [_reg(name), _reg(name)]
    if first in (0x86, 0x87) and all(o.type == _X86_OP_REG for o in ops):
        # XCHG64rr: two defs, then the two uses tied to them.
        a, b = insn.reg_name(ops[1].reg), insn.reg_name(ops[0].reg)
        return [_reg(a), _reg(b), _reg(a), _reg(b)]
    if first is not None and 0xD8 <= first <= 0xDF:
        # x87: fnstsw's ax is implicit, and so is st(0) when a second stack
        # register is named.
        names = [insn.reg_name(o.reg) if o.type == _X86_OP_REG else None for o in ops]
        if "ax" in names:
            del ops[names.index("ax")]
            del names[names.index("ax")]
        if sum(n is not None for n in names) == 2 and "st(0)" in names:
            del ops[names.index("st(0)")]
    if first in _SHIFT_BY_ONE:
        ops = [o for o in ops if o.type != _X86_OP_IMM]
    elif first in _SHIFT_BY_CL or second in (0xA5, 0xAD):
        ops = [o for o in ops if not (o.type == _X86_OP_REG and insn.reg_name(o.reg) == "cl")]

    out: list[Operand] = []
    if (
        len(ops) >= 2
        and ops[0].type == _X86_OP_MEM
        and ops[1].type == _X86_OP_REG
        and ops[0].access == ops[1].access == _CS_AC_READ | _CS_AC_WRITE
    ):
        # xchg/xadd with memory: the register is both a def and a tied use,
        # and comes before the memory operand.
        name = insn.reg_name(ops[1].reg)
        out += [_reg(name), _reg(name)]
        ops = [ops[0], *ops[2:]]
    elif ops and ops[0].type == _X86_OP_REG and ops[0].access & _CS_AC_WRITE:
        name = insn.reg_name(ops[0].reg)
        out.append(_reg(name))
        cmov = second is not None and 0x40 <= second <= 0x4F
        merging = opmap != "vex" and insn.mnemonic in _MERGING_SSE
        if ops[0].access & _CS_AC_READ or cmov or merging:
            out.append(_reg(name))
        ops = ops[1:]

    for op in ops:
        if op.type == _X86_OP_REG:
            out.append(_reg(insn.reg_name(op.reg)))
        elif op.type == _X86_OP_IMM:
            out.append(_imm(_immediate(insn, op, opmap, opcode)))
        elif op.type == _X86_OP_MEM:
            out.extend(_memory(insn, op))

    predicate = insn.mnemonic.removeprefix("v").startswith(_PREDICATED)
    if predicate and insn.imm_size and not any(o.type == _X86_OP_IMM for o in insn.operands):
        # A predicate folded into the mnemonic (cmpltps) is still an operand.
        out.append(_imm(_raw_immediate(insn)))
    if second is not None and (0x40 <= second <= 0x4F or 0x90 <= second <= 0x9F):
        out.append(_imm(second & 0xF))
    return out


__all__ = ["MAX_INSTRUCTION_SIZE", "Instruction", "Operand", "decode"]
