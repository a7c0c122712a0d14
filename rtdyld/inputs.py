"""Turn what users add (paths, bytes, file objects, IR) into ObjectFiles."""

from __future__ import annotations

import os

from .errors import MalformedObjectError
from .objfile.model import ObjectFile


def read_input(src, name: str | None = None) -> tuple[bytes, str]:
    """Bytes and display name of a path, bytes-like or binary file object."""
    # Bytes first: asking whether they are an os.PathLike goes through the
    # ABC machinery, some microseconds of a cold link for bytes given as they are.
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), name or "<memory>"
    if isinstance(src, (str, os.PathLike)):
        try:
            # open() rather than Path.read_bytes(): ~60 µs less in a new process.
            with open(src, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MalformedObjectError(f"{src}: cannot read: {e.strerror}") from None
        return data, name or str(src)
    if hasattr(src, "read"):
        data = src.read()
        if not isinstance(data, (bytes, bytearray)):
            raise TypeError("file objects passed to add_object must be opened in binary mode")
        return bytes(data), name or getattr(src, "name", None) or "<file>"
    raise TypeError(f"cannot read an object from {type(src).__name__}")


# The ELF reader, imported when the first object is read: it loads numpy,
# which a batch restored from the link cache never needs.  (Held here once
# loaded: an import statement costs a microsecond or more per member.)
_elf_reader = None


def _load_elf_reader():
    global _elf_reader
    from .objfile import elf

    _elf_reader = elf
    return elf


def parse_member(data: bytes, name: str) -> ObjectFile:
    """:func:`parse_object` for an archive member pulled into a batch: ELF
    symbol and relocation tables are converted with the batch's
    (rtdyld.objfile.elf_deferred)."""
    elf = _elf_reader or _load_elf_reader()
    if elf.is_elf(data):
        return elf.read_elf(data, name, defer_tables=True)
    return parse_object(data, name)


def parse_object(data: bytes, name: str) -> ObjectFile:
    """Dispatch on the magic number to the right reader."""
    elf = _elf_reader or _load_elf_reader()
    if elf.is_elf(data):
        return elf.read_elf(data, name)
    if data[:4] in (b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xfe\xed\xfa\xce"):
        from .objfile.macho import read_macho

        return read_macho(data, name)
    if data[:8] in (b"!<arch>\n", b"!<thin>\n"):
        raise MalformedObjectError(f"{name}: is an archive; add it with Linker.add_archive")
    raise MalformedObjectError(f"{name}: not an object file (unknown magic {bytes(data[:4]).hex()})")
