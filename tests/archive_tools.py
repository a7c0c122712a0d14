"""Build static archives for tests.

GNU and thin archives come from the system ``ar``; BSD archives (which no
tool here writes) and GNU archives with a ``/SYM64/`` index (which ``ar``
writes only past 4 GiB) are written byte by byte in Python, following the
layouts of GNU ar, cctools ranlib and LLVM's archive writer.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

ARCH_MAGIC = b"!<arch>\n"

Symbols = Mapping[str, int] | Iterable[tuple[str, int]]


def compile_c(source_text_or_path: str | os.PathLike[str], out_path, *flags: str) -> Path:
    """Compile C to a relocatable object with ``gcc -c``; return ``out_path``.

    A path-like, or a one-line str naming an existing ``.c`` file, is
    compiled as a file; any other str is the source text itself.
    """
    out = Path(out_path)
    src = source_text_or_path
    is_file = isinstance(src, os.PathLike) or ("\n" not in src and src.endswith(".c") and os.path.isfile(src))
    if is_file:
        cmd = ["gcc", "-c", *flags, os.fspath(src), "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    else:
        cmd = ["gcc", "-c", *flags, "-x", "c", "-", "-o", str(out)]
        subprocess.run(cmd, check=True, capture_output=True, text=True, input=src)
    return out


def build_gnu_archive(out_path, object_paths, thin: bool = False, index: bool = True) -> Path:
    """Write a new GNU (or thin) archive of ``object_paths`` with the system ``ar``."""
    out = Path(out_path)
    out.unlink(missing_ok=True)
    ops = "rc" + ("s" if index else "S") + ("T" if thin else "")
    _ar(ops, out, object_paths)
    return out


def append_to_archive(archive_path, object_paths, index: bool = True) -> Path:
    """Append members with ``ar q`` (a name already present is added again)."""
    _ar("q" if index else "qS", Path(archive_path), object_paths)
    return Path(archive_path)


def _ar(ops: str, archive: Path, object_paths) -> None:
    cmd = ["ar", ops, str(archive), *map(str, object_paths)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def ar_header(name: bytes | str, size: int, mode: bytes = b"644") -> bytes:
    """One 60-byte member header with ``name`` as the raw 16-byte name field."""
    if isinstance(name, str):
        name = name.encode()
    fields = [
        name.ljust(16),
        b"0".ljust(12),
        b"0".ljust(6),
        b"0".ljust(6),
        mode.ljust(8),
        str(size).encode().ljust(10),
        b"`\n",
    ]
    header = b"".join(fields)
    assert len(header) == 60, fields
    return header


def _pairs(symbols: Symbols) -> list[tuple[str, int]]:
    return list(symbols.items() if isinstance(symbols, Mapping) else symbols)


def _pad2(data: bytes) -> bytes:
    return data + b"\n" * (len(data) & 1)


def gnu_archive_bytes(members: list[tuple[str, bytes]], symbols: Symbols | None, sym64: bool = False) -> bytes:
    """A GNU archive: ``/`` or ``/SYM64/`` index, ``//`` table, then the members.

    ``symbols`` maps (or lists pairs of) a symbol name to the position of its
    defining member in ``members``; None writes no index.
    """
    long_table = io.BytesIO()
    fields: list[bytes] = []
    for name, _ in members:
        raw = name.encode()
        if len(raw) <= 15 and b"/" not in raw:
            fields.append(raw + b"/")
        else:
            fields.append(b"/%d" % long_table.tell())
            long_table.write(raw + b"/\n")
    specials = b""
    if long_table.tell():
        specials = ar_header("//", long_table.tell()) + _pad2(long_table.getvalue())

    index = b""
    if symbols is not None:
        pairs = _pairs(symbols)
        word = 8 if sym64 else 4
        strtab = b"".join(s.encode() + b"\0" for s, _ in pairs)
        payload_size = word * (1 + len(pairs)) + len(strtab)
        index_size = 60 + payload_size + (payload_size & 1)
        offsets = _member_offsets(8 + index_size + len(specials), members)
        payload = b"".join(
            [
                len(pairs).to_bytes(word, "big"),
                *(offsets[m].to_bytes(word, "big") for _, m in pairs),
                strtab,
            ]
        )
        index = ar_header("/SYM64/" if sym64 else "/", len(payload)) + _pad2(payload)
    body = b"".join(ar_header(f, len(d)) + _pad2(d) for f, (_, d) in zip(fields, members))
    return ARCH_MAGIC + index + specials + body


def _member_offsets(start: int, members: list[tuple[str, bytes]]) -> list[int]:
    offsets = []
    pos = start
    for _, data in members:
        offsets.append(pos)
        pos += 60 + len(data) + (len(data) & 1)
    return offsets


def write_gnu_archive(
    out_path,
    members: list[tuple[str, bytes]],
    symbols: Symbols | None,
    sym64: bool = False,
) -> Path:
    """Write :func:`gnu_archive_bytes` to ``out_path``."""
    out = Path(out_path)
    out.write_bytes(gnu_archive_bytes(members, symbols, sym64))
    return out


def _bsd_member(pos: int, name: str, data: bytes, force_long: bool) -> bytes:
    raw = name.encode()
    if not force_long and len(raw) <= 16 and b" " not in raw:
        return ar_header(raw, len(data)) + _pad2(data)
    # ld64 wants member data 8-aligned: the name is NUL-padded to get there.
    padded = raw + b"\0" * (-(pos + 60 + len(raw)) % 8)
    header = ar_header(b"#1/%d" % len(padded), len(padded) + len(data))
    return header + padded + data + b"\n" * ((len(padded) + len(data)) & 1)


def bsd_archive_bytes(
    members: list[tuple[str, bytes]],
    symdef: Symbols | None,
    sorted: bool = False,
    use_64: bool = False,
    long_names: bool = False,
) -> bytes:
    """A BSD archive: ``__.SYMDEF[_64][ SORTED]`` then the members.

    Names longer than 16 bytes or with a space are written ``#1/N``; all are
    if ``long_names``.  ``symdef`` maps (or lists pairs of) a symbol to the
    position of its defining member; None writes no index.
    """
    pos = len(ARCH_MAGIC)
    index = b""
    if symdef is not None:
        pairs = _pairs(symdef)
        if sorted:
            pairs.sort(key=lambda p: p[0].encode())
        word = 8 if use_64 else 4
        strx: dict[str, int] = {}
        strtab = io.BytesIO()
        for s, _ in pairs:
            if s not in strx:
                strx[s] = strtab.tell()
                strtab.write(s.encode() + b"\0")
        strtab.write(b"\0" * (-strtab.tell() % word))
        payload_size = 2 * word + 2 * word * len(pairs) + strtab.tell()
        name = "__.SYMDEF" + ("_64" if use_64 else "") + (" SORTED" if sorted else "")
        placeholder = _bsd_member(pos, name, bytes(payload_size), long_names)
        offsets = []
        at = pos + len(placeholder)
        for member_name, data in members:
            offsets.append(at)
            at += len(_bsd_member(at, member_name, data, long_names))
        payload = b"".join(
            [
                (2 * word * len(pairs)).to_bytes(word, "little"),
                *(strx[s].to_bytes(word, "little") + offsets[m].to_bytes(word, "little") for s, m in pairs),
                strtab.tell().to_bytes(word, "little"),
                strtab.getvalue(),
            ]
        )
        index = _bsd_member(pos, name, payload, long_names)
        pos += len(index)
    out = [ARCH_MAGIC, index]
    for member_name, data in members:
        chunk = _bsd_member(pos, member_name, data, long_names)
        out.append(chunk)
        pos += len(chunk)
    return b"".join(out)


def write_bsd_archive(
    out_path,
    members: list[tuple[str, bytes]],
    symdef: Symbols | None,
    sorted: bool = False,
    use_64: bool = False,
    long_names: bool = False,
) -> Path:
    """Write :func:`bsd_archive_bytes` to ``out_path``."""
    out = Path(out_path)
    out.write_bytes(bsd_archive_bytes(members, symdef, sorted, use_64, long_names))
    return out


def elf_definitions(data: memoryview, display_name: str) -> list[str]:
    """The global and weak symbols an ELF object defines (a ``list_definitions``)."""
    from elftools.elf.elffile import ELFFile

    symtab = ELFFile(io.BytesIO(bytes(data))).get_section_by_name(".symtab")
    if symtab is None:
        return []
    return [
        sym.name
        for sym in symtab.iter_symbols()
        if sym["st_info"]["bind"] in ("STB_GLOBAL", "STB_WEAK") and sym["st_shndx"] != "SHN_UNDEF"
    ]
