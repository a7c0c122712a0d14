"""Read an archive's symbol index in bulk.

Four layouts: GNU ``/`` (big-endian 32-bit count and member offsets, then
that many NUL-terminated names), GNU ``/SYM64/`` (the same with 64-bit
fields), and BSD ``__.SYMDEF`` / ``__.SYMDEF_64`` (a byte count of ranlib
structs of (string index, member offset), then a byte count of the string
table; little-endian, as on x86-64).  Offsets are read as numpy arrays and
mapped to members with one ``searchsorted`` (or a dict, for a small index);
every count is checked against the bytes that hold it before anything is
allocated.  The result is the index a look-up needs: each name mapped to
the position of its definer, or to the positions of its definers when
several members define it.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from rtdyld.errors import MalformedObjectError
from rtdyld.objfile.archive_layout import (
    INDEX_BSD32,
    INDEX_BSD64,
    INDEX_GNU32,
    INDEX_GNU64,
    NAME_ENCODING,
    NAME_ERRORS,
)
from rtdyld.objfile.strtab import read_names

from ..lazy_numpy import np

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import NoReturn

_WORD = {INDEX_GNU32: 4, INDEX_GNU64: 8, INDEX_BSD32: 4, INDEX_BSD64: 8}

# Up to this many entries, offsets are read as plain ints and mapped to
# members through a dict: the numpy calls of the vectorised path cost more
# than that below a few hundred entries (measured: 3 us against 11 us for
# libbz2's 35 entries, and 70 us more when caches are cold, as they are at the
# start of a link); numpy is 4x faster at 8,000.
SMALL_INDEX = 256
_STRUCT_WORD = {4: "L", 8: "Q"}


def read_index(
    layout: str, data: memoryview, header_offsets: list[int], archive: str, index_offset: int
) -> dict[str, int | list[int]]:
    """Each name of the index mapped to the position of its definer, or to
    the positions of its definers (in index order) where several members
    define it.

    ``header_offsets`` are the members' header offsets in file order; a
    position is an index into it.  Messages name ``archive`` and the index
    member's header offset, ``index_offset``.
    """
    # (The place, formatted only for a message: a hex format costs some
    # microseconds in a cold link, for nothing when the index is sound.)
    where = (archive, index_offset)
    if layout in (INDEX_GNU32, INDEX_GNU64):
        names, offsets = _gnu(data, _WORD[layout], where)
    else:
        names, offsets = _bsd(data, _WORD[layout], where)
    if len(offsets) <= SMALL_INDEX:  # plain ints: a bad offset shows as None
        position = dict(zip(header_offsets, range(len(header_offsets))))
        positions = list(map(position.get, offsets))
        if None in positions:
            _no_member(positions.index(None), offsets, names, where)
    else:
        positions = _members_at(offsets, header_offsets, names, where)
    return group(names, positions)


def group(names: list[str], positions: list[int]) -> dict[str, int | list[int]]:
    """``names`` mapped to their ``positions`` as :func:`read_index` maps them."""
    # Names defined once, nearly all of them, are indexed by dict() in C;
    # an index of 15,000 names took 4 ms grouped one by one in Python.
    index: dict[str, int | list[int]] = dict(zip(names, positions))
    if len(index) == len(names):
        return index
    grouped: dict[str, list[int]] = {}
    for name, pos in zip(names, positions):
        definers = grouped.setdefault(name, [])
        if pos not in definers:
            definers.append(pos)
    for name, definers in grouped.items():
        index[name] = definers[0] if len(definers) == 1 else definers
    return index


def _where(where: tuple[str, int]) -> str:
    archive, offset = where
    return f"{archive}: symbol index at offset {offset:#x}"


def _gnu(data: memoryview, word: int, where: tuple[str, int]) -> tuple[list[str], Sequence[int] | np.ndarray]:
    if len(data) < word:
        raise MalformedObjectError(f"{_where(where)}: truncated ({len(data)} bytes)")
    count = int.from_bytes(data[:word], "big")
    table_start = word + word * count
    if table_start > len(data):
        raise MalformedObjectError(f"{_where(where)}: claims {count} entries but holds only {len(data)} bytes")
    if count <= SMALL_INDEX:
        offsets: Sequence[int] | np.ndarray = struct.unpack_from(f">{count}{_STRUCT_WORD[word]}", data, word)
    else:
        offsets = np.frombuffer(data, dtype=f">u{word}", count=count, offset=word)
    text = bytes(data[table_start:]).decode(NAME_ENCODING, NAME_ERRORS)
    names = text.split("\0", count)
    if len(names) <= count:
        raise MalformedObjectError(f"{_where(where)}: the string table holds {len(names) - 1} names for {count} entries")
    del names[count:]
    return names, offsets


def _bsd(data: memoryview, word: int, where: tuple[str, int]) -> tuple[list[str], Sequence[int] | np.ndarray]:
    if len(data) < word:
        raise MalformedObjectError(f"{_where(where)}: truncated ({len(data)} bytes)")
    ranlib_bytes = int.from_bytes(data[:word], "little")
    strtab_start = 2 * word + ranlib_bytes
    if ranlib_bytes % (2 * word) or strtab_start > len(data):
        raise MalformedObjectError(f"{_where(where)}: claims {ranlib_bytes} bytes of entries but holds only {len(data)} bytes")
    count = ranlib_bytes // (2 * word)
    entries = np.frombuffer(data, dtype=np.dtype(f"<u{word}"), count=2 * count, offset=word).reshape(count, 2)
    strx, offsets = entries[:, 0], entries[:, 1]
    strtab_size = int.from_bytes(data[strtab_start - word : strtab_start], "little")
    if strtab_start + strtab_size > len(data):
        raise MalformedObjectError(
            f"{_where(where)}: claims a {strtab_size}-byte string table but only "
            f"{len(data) - strtab_start} bytes follow the entries"
        )
    bad = np.flatnonzero(strx >= strtab_size)
    if len(bad):
        raise MalformedObjectError(
            f"{_where(where)}: entry {int(bad[0])} has string index {int(strx[bad[0]])}, "
            f"past the {strtab_size}-byte string table"
        )
    try:
        names = read_names(data[strtab_start : strtab_start + strtab_size], strx)
    except ValueError as e:
        raise MalformedObjectError(f"{_where(where)}: {e}") from None
    return names, offsets.tolist() if count <= SMALL_INDEX else offsets


def _members_at(offsets: np.ndarray, header_offsets: list[int], names: list[str], where: tuple[str, int]) -> list[int]:
    """The member position of each of a large index's ``offsets``, in one ``searchsorted``."""
    offsets = offsets.astype(np.uint64)
    starts = np.array(header_offsets, dtype=np.uint64)
    pos = np.searchsorted(starts, offsets)
    hit = np.zeros(len(offsets), dtype=bool)
    inside = pos < len(starts)
    hit[inside] = starts[pos[inside]] == offsets[inside]
    bad = np.flatnonzero(~hit)
    if len(bad):
        _no_member(int(bad[0]), offsets, names, where)
    return pos.tolist()


def _no_member(k: int, offsets: Sequence[int] | np.ndarray, names: list[str], where: tuple[str, int]) -> NoReturn:
    raise MalformedObjectError(
        f"{_where(where)}: the entry for {names[k]!r} points at offset {int(offsets[k]):#x}, where no member header starts"
    )
