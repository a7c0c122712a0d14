"""Bulk string-table decoding shared by the readers."""

from __future__ import annotations

from itertools import accumulate, count
from operator import add

from ..lazy_numpy import np

# Below this many names, Python's dict beats numpy's per-call overhead at
# finding where each name starts; above it, numpy's bulk search wins.
SMALL = 2048
# Up to this many names (an object's section names, the symbols of most
# archive members), each is sliced out on its own.
FEW = 128


def read_names(strtab: bytes | memoryview, offsets: np.ndarray) -> list[str]:
    """Decode the NUL-terminated names at ``offsets`` in one pass.

    Raises ValueError naming the first offset that is out of range or whose
    string is not terminated.
    """
    if len(offsets) == 0:
        return []
    return names_at(bytes(strtab), offsets.tolist())


def names_at(raw: bytes, offs: list[int]) -> list[str]:
    """:func:`read_names` for offsets already in a list (the ELF reader
    reads its small tables as lists, not numpy arrays)."""
    if not offs:
        return []
    if len(offs) <= FEW:
        # Slicing each name out of the table decoded once (ASCII: a string
        # index is a byte offset) beats splitting the whole table.  A bad
        # offset or a non-ASCII table fails a step here, and the checks
        # below then say which.
        # (A plain loop: faster than a list comprehension, which in a cold
        # link is also one more function to fetch into the caches.)
        try:
            text = raw.decode("ascii")
            find = text.index
            # Offset 0 (a section symbol's: an ELF object has several) is
            # looked up once, not for each.
            first = text[: find("\0")]
            names = []
            for o in offs:
                names.append(text[o : find("\0", o)] if o else first)
            return names
        except ValueError:  # UnicodeDecodeError included
            pass
    highest = max(offs)
    if highest >= len(raw):
        k = next(k for k, o in enumerate(offs) if o >= len(raw))
        raise ValueError(f"name offset {offs[k]} is past the string table ({len(raw)} bytes)")
    last_nul = raw.rfind(b"\0")
    if highest > last_nul:
        k = next(k for k, o in enumerate(offs) if o > last_nul)
        raise ValueError(f"name at offset {offs[k]} is not NUL-terminated")
    if not raw.isascii():
        return [raw[o : raw.index(b"\0", o)].decode("utf-8", "surrogateescape") for o in offs]
    # Split the table once and pick each name by where it starts; only a
    # name that is the tail of a longer string (suffix sharing) is sliced.
    pieces = raw.decode("ascii").split("\0")
    if len(offs) < SMALL:
        # Piece k starts after the k pieces and the k NULs before it.
        starts = map(add, accumulate(map(len, pieces), initial=0), count())
        start_of = dict(zip(starts, pieces))
        names = list(map(start_of.get, offs))
    else:
        nuls = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) == 0)
        where = np.array(offs, dtype=np.int64)
        piece = np.searchsorted(nuls, where)
        starts = np.concatenate(([0], nuls + 1))
        names = list(map(pieces.__getitem__, piece.tolist()))
        tails = np.flatnonzero(starts[piece] != where)
        for k in tails.tolist():
            names[k] = None
    if None in names:
        names = [raw[o : raw.index(b"\0", o)].decode("ascii") if n is None else n for n, o in zip(names, offs)]
    return names
