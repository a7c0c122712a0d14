"""Structure-aware mutation of real objects and archives, for the fuzz tests.

Seeds are real inputs built at test time (gcc objects, llvmlite ELF and
Mach-O objects, ``ar`` and hand-written archives).  Each seed is parsed once
into its *fields* (every header, table entry and index word the readers
look at, with its encoding) and *boundaries* (where each structure starts
and ends).  A mutation then picks a few of: truncate at a boundary, set a
field to an edge value (0, all ones, huge, one past a count, another entry's
value, the file size...), flip bits, or copy one range over another.

Everything here is driven by a ``random.Random``: the pytest module gets one
from hypothesis (``st.randoms``), the long harness seeds its own, so both
share the same mutators.  Nothing here imports rtdyld.
"""

from __future__ import annotations

import random
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
MACHO_TRIPLE = "x86_64-apple-macosx10.15"
ELF_TRIPLE = "x86_64-unknown-linux-gnu"


@dataclass(frozen=True)
class Field:
    """A number stored at ``offset``: little/big-endian (``le``/``be``) or ASCII decimal (``dec``)."""

    offset: int
    width: int
    enc: str
    label: str
    limit: int | None = None  # for an index or count: how many things it may name


@dataclass
class Seed:
    kind: str  # "elf" | "macho" | "archive"
    name: str
    data: bytes
    fields: list[Field] = field(default_factory=list)
    boundaries: list[int] = field(default_factory=list)

    @property
    def whole_only(self) -> bool:
        """An archive the driver object pulls nothing from: link all its members."""
        return "macho" in self.name

    def add(self, offset: int, width: int, label: str, enc: str = "le", limit: int | None = None) -> None:
        if 0 <= offset and offset + width <= len(self.data):
            self.fields.append(Field(offset, width, enc, label, limit))

    def bound(self, *offsets: int) -> None:
        self.boundaries.extend(o for o in offsets if 0 <= o <= len(self.data))


# --- parsing seeds into fields ---------------------------------------------------


def parse_seed(kind: str, name: str, data: bytes) -> Seed:
    seed = Seed(kind, name, data)
    {"elf": _elf_fields, "macho": _macho_fields, "archive": _archive_fields}[kind](seed, data, 0)
    seed.bound(0, len(data))
    seed.boundaries = sorted(set(seed.boundaries))
    return seed


def _elf_fields(seed: Seed, d: bytes, base: int) -> None:
    """Fields of an ELF64 object starting at ``base`` of the seed."""
    (shoff,) = struct.unpack_from("<Q", d, base + 0x28)
    (shnum,) = struct.unpack_from("<H", d, base + 0x3C)
    for off, w, label in (
        (0x10, 2, "e_type"),
        (0x12, 2, "e_machine"),
        (0x28, 8, "e_shoff"),
        (0x3A, 2, "e_shentsize"),
        (0x3C, 2, "e_shnum"),
        (0x3E, 2, "e_shstrndx"),
    ):
        seed.add(base + off, w, label, limit=shnum if label in ("e_shnum", "e_shstrndx") else None)
    seed.add(base + 4, 1, "ei_class")
    seed.add(base + 5, 1, "ei_data")
    seed.bound(base + 64, base + shoff, base + shoff + 64 * shnum)
    for i in range(shnum):
        h = base + shoff + 64 * i
        seed.bound(h)
        stype, _, _, offset, size = struct.unpack_from("<IQQQQ", d, h + 4)
        (entsize,) = struct.unpack_from("<Q", d, h + 56)
        for off, w, label in (
            (0, 4, "sh_name"),
            (4, 4, "sh_type"),
            (8, 8, "sh_flags"),
            (24, 8, "sh_offset"),
            (32, 8, "sh_size"),
            (40, 4, "sh_link"),
            (44, 4, "sh_info"),
            (48, 8, "sh_addralign"),
            (56, 8, "sh_entsize"),
        ):
            seed.add(h + off, w, label, limit=shnum if label in ("sh_link", "sh_info") else None)
        if stype != 8:
            seed.bound(base + offset, base + offset + size)
        if stype == 2 and entsize == 24:  # SHT_SYMTAB
            nsyms = size // 24
            for k in range(nsyms):
                e = base + offset + 24 * k
                seed.bound(e)
                seed.add(e, 4, "st_name")
                seed.add(e + 4, 1, "st_info")
                seed.add(e + 5, 1, "st_other")
                seed.add(e + 6, 2, "st_shndx", limit=shnum)
                seed.add(e + 8, 8, "st_value")
                seed.add(e + 16, 8, "st_size")
        elif stype in (4, 9) and entsize in (16, 24):  # SHT_RELA, SHT_REL
            for k in range(size // entsize):
                e = base + offset + entsize * k
                seed.bound(e)
                seed.add(e, 8, "r_offset")
                seed.add(e + 8, 4, "r_type")
                seed.add(e + 12, 4, "r_sym")
                if entsize == 24:
                    seed.add(e + 16, 8, "r_addend")
        elif stype == 17:  # SHT_GROUP
            for k in range(size // 4):
                seed.add(base + offset + 4 * k, 4, "group_word", limit=shnum)


def _macho_fields(seed: Seed, d: bytes, base: int) -> None:
    ncmds, sizeofcmds = struct.unpack_from("<II", d, base + 16)
    seed.add(base + 4, 4, "cputype")
    seed.add(base + 12, 4, "filetype")
    seed.add(base + 16, 4, "ncmds", limit=ncmds)
    seed.add(base + 20, 4, "sizeofcmds")
    seed.add(base + 24, 4, "mh_flags")
    seed.bound(base + 32, base + 32 + sizeofcmds)
    off = base + 32
    nsect_total = 0
    nsyms = 0
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", d, off)
        seed.bound(off)
        seed.add(off, 4, "cmd")
        seed.add(off + 4, 4, "cmdsize")
        if cmd == 0x19:  # LC_SEGMENT_64
            (nsects,) = struct.unpack_from("<I", d, off + 64)
            for o, w, label in (
                (24, 8, "vmaddr"),
                (32, 8, "vmsize"),
                (40, 8, "fileoff"),
                (48, 8, "filesize"),
                (64, 4, "nsects"),
            ):
                seed.add(off + o, w, label)
            for k in range(nsects):
                s = off + 72 + 80 * k
                seed.bound(s)
                size, offset, _, reloff, nreloc = struct.unpack_from("<QIIII", d, s + 40)
                for o, w, label in (
                    (0, 16, "sectname"),
                    (16, 16, "segname"),
                    (32, 8, "addr"),
                    (40, 8, "size"),
                    (48, 4, "offset"),
                    (52, 4, "align"),
                    (56, 4, "reloff"),
                    (60, 4, "nreloc"),
                    (64, 4, "sect_flags"),
                    (68, 4, "reserved1"),
                ):
                    if w <= 8:
                        seed.add(s + o, w, label)
                seed.bound(base + offset, base + offset + size, base + reloff, base + reloff + 8 * nreloc)
                for r in range(nreloc):
                    e = base + reloff + 8 * r
                    seed.add(e, 4, "r_address")
                    seed.add(e + 4, 3, "r_symbolnum")
                    seed.add(e + 7, 1, "r_bits")
                nsect_total += 1
        elif cmd == 0x2:  # LC_SYMTAB
            symoff, nsyms, stroff, strsize = struct.unpack_from("<IIII", d, off + 8)
            for o, label in ((8, "symoff"), (12, "nsyms"), (16, "stroff"), (20, "strsize")):
                seed.add(off + o, 4, label)
            seed.bound(base + symoff, base + symoff + 16 * nsyms, base + stroff, base + stroff + strsize)
            for k in range(nsyms):
                e = base + symoff + 16 * k
                seed.bound(e)
                seed.add(e, 4, "n_strx")
                seed.add(e + 4, 1, "n_type")
                seed.add(e + 5, 1, "n_sect")
                seed.add(e + 6, 2, "n_desc")
                seed.add(e + 8, 8, "n_value")
        elif cmd == 0xB:  # LC_DYSYMTAB
            for k in range(6):
                seed.add(off + 8 + 4 * k, 4, "dysymtab")
        off += cmdsize
    # Indices the relocations and symbols may name.
    seed.fields = [
        Field(f.offset, f.width, f.enc, f.label, {"n_sect": nsect_total, "r_symbolnum": nsyms}.get(f.label, f.limit))
        for f in seed.fields
    ]


def _archive_fields(seed: Seed, d: bytes, base: int) -> None:
    """Member headers, symbol indexes and the ELF or Mach-O members of an archive."""
    pos = 8
    seed.bound(8)
    while pos + 60 <= len(d):
        name = d[pos : pos + 16].rstrip(b" ")
        size = int(d[pos + 48 : pos + 58].strip() or b"0")
        seed.bound(pos, pos + 60, pos + 60 + size)
        seed.add(pos, 16, "ar_name", enc="name")
        seed.add(pos + 48, 10, "ar_size", enc="dec")
        seed.add(pos + 58, 2, "ar_end", enc="raw")
        data = pos + 60
        member = data
        if name.startswith(b"#1/"):
            seed.add(pos + 3, 13, "ar_bsd_namelen", enc="dec")
            member = data + int(name[3:])
        if name == b"/":
            (count,) = struct.unpack_from(">I", d, data)
            seed.add(data, 4, "gnu_index_count", enc="be", limit=count)
            for k in range(count):
                seed.add(data + 4 + 4 * k, 4, "gnu_index_offset", enc="be")
            seed.bound(data + 4 + 4 * count)
        elif name == b"/SYM64/":
            (count,) = struct.unpack_from(">Q", d, data)
            seed.add(data, 8, "gnu_index_count", enc="be", limit=count)
            for k in range(count):
                seed.add(data + 8 + 8 * k, 8, "gnu_index_offset", enc="be")
        elif d[pos : pos + 9] == b"__.SYMDEF" or (name.startswith(b"#1/") and d[data : data + 9] == b"__.SYMDEF"):
            p = member
            full = d[data:member] if name.startswith(b"#1/") else name
            word = 8 if full.startswith(b"__.SYMDEF_64") else 4
            ranlib_bytes = int.from_bytes(d[p : p + word], "little")
            seed.add(p, word, "bsd_ranlib_bytes")
            for k in range(ranlib_bytes // (2 * word)):
                seed.add(p + word + 2 * word * k, word, "bsd_strx")
                seed.add(p + 2 * word + 2 * word * k, word, "gnu_index_offset")
            seed.add(p + word + ranlib_bytes, word, "bsd_strsize")
        elif d[member : member + 4] == b"\x7fELF" and not name.startswith(b"/"):
            _elf_fields(seed, d, member)
        elif d[member : member + 4] == b"\xcf\xfa\xed\xfe":
            _macho_fields(seed, d, member)
        pos = data + size + (size & 1)


# --- mutation -------------------------------------------------------------------

_HUGE = (1 << 60, 1 << 40, 1 << 32, (1 << 32) - 1, 1 << 31, (1 << 31) - 1, 1 << 63, 0x7FFFFFFF_FFFFFFFF)


def _number(seed: Seed, f: Field, data: bytes, rng: random.Random) -> int:
    bits = 8 * f.width if f.enc != "dec" else 64
    top = (1 << bits) - 1
    orig = _read(data, f) if f.offset + f.width <= len(data) else 0
    orig = orig if orig is not None else 0
    same = [g for g in seed.fields if g.label == f.label and g is not f]
    choice = rng.randrange(14)
    if choice == 0:
        v = rng.choice((0, 1, 2, 3, 4, 7, 8, 15, 16, 0x7F, 0x80, 0xFF))
    elif choice == 1:
        v = rng.choice((top, top - 1, 1 << (bits - 1), (1 << (bits - 1)) - 1))
    elif choice == 2:
        v = rng.choice(_HUGE)
    elif choice == 3:
        v = orig + rng.choice((-8, -4, -2, -1, 1, 2, 4, 8, 16, 24))
    elif choice == 4:
        v = orig ^ (1 << rng.randrange(bits))
    elif choice == 5 and f.limit is not None:
        v = f.limit + rng.choice((-1, 0, 1, 2, 100, 1 << 16))
    elif choice == 6 and same:
        v = _read(data, rng.choice(same)) or 0
    elif choice == 7:
        v = len(data) + rng.choice((-8, -1, 0, 1, 8))
    elif choice == 8 and seed.boundaries:
        v = rng.choice(seed.boundaries) + rng.choice((-1, 0, 0, 1))
    elif choice == 9:
        v = orig * rng.choice((2, 16, 1 << 20))
    elif choice == 10:
        v = rng.randrange(1 << min(bits, 16))
    else:
        v = rng.getrandbits(bits)
    return v & top


def _read(data: bytes, f: Field) -> int | None:
    raw = data[f.offset : f.offset + f.width]
    if len(raw) < f.width:
        return None
    if f.enc == "le":
        return int.from_bytes(raw, "little")
    if f.enc == "be":
        return int.from_bytes(raw, "big")
    if f.enc == "dec":
        text = raw.strip(b" ")
        return int(text) if text.isdigit() else None
    return None


def _write(buf: bytearray, f: Field, value: int) -> None:
    if f.offset + f.width > len(buf):
        return
    if f.enc == "le":
        buf[f.offset : f.offset + f.width] = value.to_bytes(f.width, "little")
    elif f.enc == "be":
        buf[f.offset : f.offset + f.width] = value.to_bytes(f.width, "big")


def _text_field(seed: Seed, f: Field, buf: bytearray, rng: random.Random) -> str:
    """Rewrite an ASCII field (archive sizes, names, header terminators)."""
    if f.enc == "dec":
        orig = _read(bytes(buf), f) or 0
        options = [
            str(orig + rng.choice((-2, -1, 1, 2, 60, 61))),
            str(len(buf) + rng.choice((-1, 0, 1))),
            "9" * f.width,
            str(1 << 60)[: f.width],
            "0",
            "-1",
            "",
            "12a",
            " 7 7",
            str(rng.randrange(1 << 20)),
        ]
        text = rng.choice(options).encode()[: f.width].ljust(f.width)
    elif f.enc == "name":
        others = [bytes(buf[g.offset : g.offset + g.width]) for g in seed.fields if g.label == "ar_name"]
        text = rng.choice(
            [
                b"/",
                b"//",
                b"/SYM64/",
                b"/0",
                b"/99999",
                b"/-1",
                b"#1/20",
                b"#1/99999",
                b"#1/",
                b"__.SYMDEF",
                b"/ab",
                b"x.o/",
                rng.choice(others) if others else b"/",
            ]
        ).ljust(f.width)
    else:
        text = rng.choice([b"`\n", b"\n`", b"  ", bytes([rng.randrange(256), rng.randrange(256)])])
    buf[f.offset : f.offset + f.width] = text[: f.width]
    return f"{f.label}@{f.offset:#x}={text.decode('latin-1').strip()!r}"


def mutate(seed: Seed, rng: random.Random, max_ops: int = 4) -> tuple[bytes, list[str]]:
    """One mutant of ``seed`` and a description of the operations applied."""
    buf = bytearray(seed.data)
    ops: list[str] = []
    for _ in range(rng.randint(1, max_ops)):
        op = rng.randrange(10)
        if op <= 4 and seed.fields:
            f = rng.choice(seed.fields)
            if f.enc in ("le", "be"):
                v = _number(seed, f, bytes(buf), rng)
                _write(buf, f, v)
                ops.append(f"{f.label}@{f.offset:#x}={v:#x}")
            else:
                ops.append(_text_field(seed, f, buf, rng))
        elif op == 5 and seed.boundaries:
            cut = max(0, rng.choice(seed.boundaries) + rng.choice((-1, 0, 0, 0, 1, 7)))
            if cut < len(buf):
                del buf[cut:]
                ops.append(f"truncate@{cut:#x}")
        elif op == 6 and buf:
            f = rng.choice(seed.fields) if seed.fields and rng.random() < 0.7 else None
            at = f.offset + rng.randrange(max(f.width, 1)) if f else rng.randrange(len(buf))
            if at < len(buf):
                bit = rng.randrange(8)
                buf[at] ^= 1 << bit
                ops.append(f"flip@{at:#x}.{bit}")
        elif op == 7 and len(seed.boundaries) > 2:
            # Copy one structure-aligned range over another (overlaps, duplicated entries).
            a, b = sorted(rng.sample(seed.boundaries, 2))
            n = min(rng.choice((4, 8, 16, 24, 64, 80)), len(buf) - b)
            if n > 0 and a + n <= len(buf):
                buf[b : b + n] = buf[a : a + n]
                ops.append(f"copy@{a:#x}->{b:#x}+{n}")
        elif op == 8 and buf:
            at = rng.randrange(len(buf))
            n = rng.randint(1, 8)
            buf[at : at + n] = bytes(rng.randrange(256) for _ in range(n))[: len(buf) - at]
            ops.append(f"bytes@{at:#x}+{n}")
        elif op == 9 and seed.boundaries:
            # Insert or delete a few bytes at a boundary: everything after shifts.
            at = min(rng.choice(seed.boundaries), len(buf))
            if rng.random() < 0.5:
                n = rng.choice((1, 4, 8, 60))
                buf[at:at] = bytes(n)
                ops.append(f"insert@{at:#x}+{n}")
            else:
                n = rng.choice((1, 4, 8, 60))
                del buf[at : at + n]
                ops.append(f"delete@{at:#x}+{n}")
    return bytes(buf), ops


# --- seeds ----------------------------------------------------------------------------

C_SEEDS = ("strings.c", "switch.c", "fptr.c", "ctors.c", "common_a.c", "weak_a.c", "sortcmp.c")
C_FLAGS = {
    "O0-pic": ("-O0", "-fPIC"),
    "O2-pic": ("-O2", "-fPIC"),
    "O0-nopic": ("-O0", "-fno-pic"),
    "O2-nopic": ("-O2", "-fno-pic", "-ffunction-sections", "-fcommon"),
}
IR_SEEDS = ("lib.ll", "comdat_a.ll")
MACHO_ASM = ("branch.s", "got.s", "got_load.s", "signed.s", "subtractor.s", "unsigned.s")

# Archive members: cross references so lazy loading walks several members.
ARCHIVE_MEMBERS = {
    "alpha.c": "extern int beta(int);\nint alpha_data = 3;\nint alpha(int x) { return beta(x) + alpha_data; }\n",
    "beta.c": "static int t[4] = {1, 2, 3, 4};\nint beta(int x) { return t[x & 3]; }\n",
    "a_long_member_name.c": (
        '#include <string.h>\nconst char *g = "gamma";\nint gamma_len(void) { return (int)strlen(g); }\n'
    ),
}
ARCHIVE_DRIVER = (
    "extern int alpha(int);\nextern int gamma_len(void);\nint drive(void) { return alpha(1) + gamma_len(); }\n"
)


def _gcc(src: Path, out: Path, *flags: str) -> bytes:
    subprocess.run(["gcc", "-c", *flags, "-o", str(out), str(src)], check=True, capture_output=True)
    return out.read_bytes()


def _emit(ir_text: str, triple: str, reloc: str) -> bytes:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    llvm.initialize_native_asmparser()
    module = llvm.parse_assembly(f'target triple = "{triple}"\n{ir_text}')
    machine = llvm.Target.from_triple(triple).create_target_machine(reloc=reloc, codemodel="small")
    return machine.emit_object(module)


def _asm_ir(source: str) -> str:
    def esc(line: str) -> str:
        return "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\{b:02X}" for b in line.encode())

    return "".join(f'module asm "{esc(line)}"\n' for line in source.splitlines())


def build_seeds(workdir: Path) -> list[Seed]:
    """Build every seed into ``workdir`` (thin archive members live there too).

    ``workdir`` also receives ``driver.o``, the object that pulls archive members.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from archive_tools import bsd_archive_bytes, gnu_archive_bytes

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seeds: list[Seed] = []
    for src in C_SEEDS:
        for tag, flags in C_FLAGS.items():
            out = workdir / f"{Path(src).stem}-{tag}.o"
            seeds.append(parse_seed("elf", out.name, _gcc(FIXTURES / "c" / src, out, *flags)))
    for src in IR_SEEDS:
        text = (FIXTURES / "ir" / src).read_text()
        for reloc in ("pic", "static"):
            seeds.append(parse_seed("elf", f"{src}-{reloc}.o", _emit(text, ELF_TRIPLE, reloc)))
        if "comdat" not in src:  # Mach-O has no COMDATs
            seeds.append(parse_seed("macho", f"{src}-macho.o", _emit(text, MACHO_TRIPLE, "pic")))
    for src in MACHO_ASM:
        ir = _asm_ir((FIXTURES / "macho" / src).read_text())
        seeds.append(parse_seed("macho", src.replace(".s", ".o"), _emit(ir, MACHO_TRIPLE, "static")))

    members: list[tuple[str, bytes]] = []
    for src, text in ARCHIVE_MEMBERS.items():
        c = workdir / src
        c.write_text(text)
        obj = workdir / src.replace(".c", ".o")
        members.append((obj.name, _gcc(c, obj, "-O1", "-fPIC")))
    driver_c = workdir / "driver.c"
    driver_c.write_text(ARCHIVE_DRIVER)
    _gcc(driver_c, workdir / "driver.o", "-O1", "-fPIC")
    names = [m for m, _ in members]
    for tag, ops in (("gnu", "rcs"), ("gnu-noindex", "rcS"), ("thin", "rcsT")):
        out = workdir / f"seed-{tag}.a"
        out.unlink(missing_ok=True)
        subprocess.run(["ar", ops, out.name, *names], cwd=workdir, check=True, capture_output=True)
        seeds.append(parse_seed("archive", out.name, out.read_bytes()))
    symbols = {"alpha": 0, "alpha_data": 0, "beta": 1, "gamma_len": 2, "g": 2}
    seeds.append(parse_seed("archive", "seed-sym64.a", gnu_archive_bytes(members, symbols, sym64=True)))
    seeds.append(parse_seed("archive", "seed-bsd.a", bsd_archive_bytes(members, symbols, long_names=True)))
    seeds.append(parse_seed("archive", "seed-bsd64.a", bsd_archive_bytes(members, symbols, use_64=True)))
    macho = [(s.name, s.data) for s in seeds if s.name in ("lib.ll-macho.o", "subtractor.o")]
    seeds.append(
        parse_seed("archive", "seed-bsd-macho.a", bsd_archive_bytes(macho, {"_op_add": 0, "_a": 1}, sorted=True))
    )
    return seeds


def save_seeds(seeds: list[Seed], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (directory / f"{s.kind}--{s.name}").write_bytes(s.data)


def load_seeds(directory: Path) -> list[Seed]:
    out = []
    for p in sorted(Path(directory).iterdir()):
        if "--" in p.name:
            kind, name = p.name.split("--", 1)
            out.append(parse_seed(kind, name, p.read_bytes()))
    return out
