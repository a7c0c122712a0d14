"""Walk the member headers of a Unix ``ar`` archive.

One pass over the 60-byte headers, GNU, BSD and thin alike: it finds where
each member's bytes are, resolves its name (``name/``, ``/123`` through the
``//`` table, ``#1/N`` with the name after the header) and sets aside the
symbol index and long-name table.  Member bytes are never read here.
"""

from __future__ import annotations

import struct
from operator import itemgetter

from rtdyld.errors import MalformedObjectError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Self

ARCH_MAGIC = b"!<arch>\n"
THIN_MAGIC = b"!<thin>\n"
HEADER_SIZE = 60
HEADER_END = b"`\n"
# The three fields the walk reads: name, size and terminator (date, owner,
# group and mode are skipped); one unpack per header instead of three slices.
_HEADER_FIELDS = struct.Struct("16s32x10s2s")

# How the symbol index is laid out, by the name of the member holding it.
INDEX_GNU32 = "gnu32"
INDEX_GNU64 = "gnu64"
INDEX_BSD32 = "bsd32"
INDEX_BSD64 = "bsd64"
INDEX_LAYOUTS = {
    b"/": INDEX_GNU32,
    b"/SYM64/": INDEX_GNU64,
    b"__.SYMDEF": INDEX_BSD32,
    b"__.SYMDEF SORTED": INDEX_BSD32,
    b"__.SYMDEF_64": INDEX_BSD64,
    b"__.SYMDEF_64 SORTED": INDEX_BSD64,
}
LONG_NAMES = b"//"
BSD_LONG_NAME = b"#1/"
# What an ordinary GNU name ("name/") never starts with (a tuple made once,
# not for every header).
_SPECIAL_STARTS = (b"/", BSD_LONG_NAME)

# Names are file names: decoded as the OS decodes them, so any byte survives.
NAME_ENCODING = "utf-8"
NAME_ERRORS = "surrogateescape"


class RawMember(tuple):
    """Where one member is, (name, header_offset, data_offset, size):
    ``data_offset`` is meaningless for thin members.

    A named tuple written out: a NamedTuple class compiles each field's
    annotation and execs generated code, at every start-up."""

    __slots__ = ()

    def __new__(cls, name: str, header_offset: int, data_offset: int, size: int) -> Self:
        return tuple.__new__(cls, (name, header_offset, data_offset, size))

    name = property(itemgetter(0))
    header_offset = property(itemgetter(1))
    data_offset = property(itemgetter(2))
    size = property(itemgetter(3))


class Layout:
    # A plain class: a dataclass decoration execs generated code at import (start-up).
    __slots__ = ("index_data", "index_layout", "index_offset", "kind", "members")

    def __init__(self, kind: str, members: list[tuple[str, int, int, int]], index_layout: str | None,
                 index_data: memoryview | None, index_offset: int) -> None:
        self.kind = kind  # "gnu" | "bsd" | "thin"
        # (name, header_offset, data_offset, size) as in RawMember, but plain
        # tuples: one is made per member, and a plain tuple costs a tenth as much.
        self.members = members
        self.index_layout = index_layout  # INDEX_* or None
        self.index_data = index_data
        self.index_offset = index_offset  # header offset of the index member, for messages


def is_archive(data: bytes | bytearray | memoryview) -> bool:
    """True if ``data`` starts with the magic of a regular or thin archive."""
    head = bytes(data[:8])
    return head == ARCH_MAGIC or head == THIN_MAGIC


def _decode(raw: bytes) -> str:
    return raw.decode(NAME_ENCODING, NAME_ERRORS)


def _number(field: bytes) -> int | None:
    text = field.strip(b" ")
    return int(text) if text.isdigit() else None


def walk(view: memoryview, archive: str) -> Layout:
    """Read every member header of the archive in ``view``.

    Raises MalformedObjectError, naming ``archive`` and the member where it
    is known, for a bad magic, a truncated or garbled header, a size past
    the end of the file, or a long name that is not in the long-name table.
    """
    magic = bytes(view[:8])
    if magic == THIN_MAGIC:
        thin = True
    elif magic == ARCH_MAGIC:
        thin = False
    else:
        raise MalformedObjectError(
            f"{archive}: not an archive (starts with {magic!r}, expected {ARCH_MAGIC!r} or {THIN_MAGIC!r})"
        )

    end = len(view)
    members: list[tuple[str, int, int, int]] = []
    long_names: bytes | None = None
    index_layout: str | None = None
    index_data: memoryview | None = None
    index_offset = -1
    saw_gnu = saw_bsd = False

    header_fields = _HEADER_FIELDS.unpack_from
    pos = len(magic)
    while pos < end:
        if end - pos < HEADER_SIZE:
            raise MalformedObjectError(
                f"{archive}: truncated member header at offset {pos:#x} ({end - pos} of {HEADER_SIZE} bytes)"
            )
        field, size_field, trailer = header_fields(view, pos)
        field = field.rstrip(b" ")
        if trailer != HEADER_END:
            raise MalformedObjectError(
                f"{archive}: garbled member header at offset {pos:#x} (ends in {trailer!r}, expected {HEADER_END!r})"
            )
        digits = size_field.strip(b" ")
        if not digits.isdigit():
            raise MalformedObjectError(
                f"{archive}: member {_decode(field)!r} at offset {pos:#x} has "
                f"a non-numeric size {size_field.decode('latin-1')!r}"
            )
        size = int(digits)
        data_offset = pos + HEADER_SIZE

        if field.endswith(b"/") and not field.startswith(_SPECIAL_STARTS):
            # "name/", an ordinary GNU member: nearly every header, so it is
            # told apart first with the two tests no special name passes.
            saw_gnu = True
            special = None
            name = field[:-1].decode(NAME_ENCODING, NAME_ERRORS)
        elif field in INDEX_LAYOUTS or field == LONG_NAMES:
            special = field
            name = _decode(field)
        elif field.startswith(BSD_LONG_NAME):
            saw_bsd = True
            name_size = _number(field[3:])
            if name_size is None or name_size > size:
                raise MalformedObjectError(
                    f"{archive}: member at offset {pos:#x} has a bad BSD long "
                    f"name {_decode(field)!r} (member size {size})"
                )
            if data_offset + name_size > end:
                raise MalformedObjectError(
                    f"{archive}: the name of the member at offset {pos:#x} runs past the end of the archive"
                )
            raw = bytes(view[data_offset : data_offset + name_size]).split(b"\0", 1)[0]
            special = raw if raw in INDEX_LAYOUTS else None
            name = _decode(raw)
            data_offset += name_size
            size -= name_size
        elif field.startswith(b"/") and field[1:].isdigit():
            saw_gnu = True
            special = None
            name = _decode(_long_name(long_names, int(field[1:]), archive, pos))
        elif field.startswith(b"/"):
            raise MalformedObjectError(
                f"{archive}: member at offset {pos:#x} has an unknown special name {_decode(field)!r}"
            )
        else:
            special = None  # a name without the GNU "/" after it (BSD style)
            name = _decode(field)

        has_bytes = special is not None or not thin
        if has_bytes and data_offset + size > end:
            who = f"{archive}({name})" if special is None else f"{archive}: {name!r}"
            raise MalformedObjectError(
                f"{who}: member size {size} at offset {pos:#x} runs past the end of the archive ({end} bytes)"
            )

        if special is None:
            members.append((name, pos, data_offset, size))
        elif special == LONG_NAMES:
            saw_gnu = True
            if long_names is None:
                long_names = bytes(view[data_offset : data_offset + size])
        else:
            if field.startswith(BSD_LONG_NAME) or special.startswith(b"__"):
                saw_bsd = True
            else:
                saw_gnu = True
            if index_layout is None:
                index_layout = INDEX_LAYOUTS[special]
                index_data = view[data_offset : data_offset + size]
                index_offset = pos

        next_pos = data_offset + size if has_bytes else data_offset
        pos = next_pos + (next_pos & 1)

    if thin:
        kind = "thin"
    elif saw_bsd or (members and not saw_gnu):
        kind = "bsd"
    else:
        kind = "gnu"
    return Layout(kind, members, index_layout, index_data, index_offset)


def _long_name(table: bytes | None, offset: int, archive: str, pos: int) -> bytes:
    """The name at ``offset`` of the GNU long-name table: up to "/\\n" or "\\n"."""
    if table is None:
        raise MalformedObjectError(
            f"{archive}: member at offset {pos:#x} is named /{offset}, but no long-name table (//) precedes it"
        )
    if offset >= len(table):
        raise MalformedObjectError(
            f"{archive}: member at offset {pos:#x} is named /{offset}, past the "
            f"end of the {len(table)}-byte long-name table"
        )
    stop = table.find(b"\n", offset)
    raw = table[offset : stop if stop >= 0 else len(table)]
    return raw[:-1] if raw.endswith(b"/") else raw
