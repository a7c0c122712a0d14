"""The on-disk form of one link-cache entry: JSON metadata plus raw arrays.

::

    magic "RTDYLDLC" | format u32 | key 32 bytes | meta length u32 |
    body length u64 | adler32(meta + body) u32 | meta | body

The body is the concatenation of byte blobs (numpy arrays saved as their raw
bytes, 16-byte aligned; ``meta`` is padded with blanks so that the body starts
16-byte aligned too); ``meta`` names each one with its offset, length and,
for arrays, the dtype descriptor.  Nothing is pickled, so loading an entry
never runs code, and arrays come back as read-only views of the file's bytes.
Lengths must account for the whole file and the checksum must match: a
truncated or damaged entry is refused (:class:`CorruptEntry`) and the caller
treats it as a miss.  The checksum guards against damage, not tampering; the
key inside the header guards against an entry renamed under another key.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from ..cache_entry import CorruptEntry, verify_header

MAGIC = b"RTDYLDLC"
FORMAT_VERSION = 2
HEADER = struct.Struct("<8sI32sIQI")
_ALIGN = 16

__all__ = ["FORMAT_VERSION", "CorruptEntry", "pack", "read_file", "read_file_and_stat", "unpack"]


def pack(key: bytes, meta: dict, blobs: dict[str, np.ndarray | bytes | memoryview]) -> bytes:
    """The bytes of an entry holding ``meta`` and ``blobs`` under ``key``."""
    parts: list[bytes] = []
    index: dict[str, list] = {}
    at = 0
    for name, blob in blobs.items():
        if isinstance(blob, np.ndarray):
            arr = np.ascontiguousarray(blob)
            raw = arr.tobytes()
            index[name] = [at, len(raw), np.lib.format.dtype_to_descr(arr.dtype), list(arr.shape)]
        else:
            raw = bytes(blob)
            index[name] = [at, len(raw)]
        parts.append(raw)
        pad = -len(raw) % _ALIGN
        parts.append(b"\0" * pad)
        at += len(raw) + pad
    body = b"".join(parts)
    text = json.dumps({"meta": meta, "blobs": index}, separators=(",", ":")).encode()
    # Trailing blanks (still JSON) start the body 16-byte aligned in the file, and
    # so in the bytes read back: numpy on misaligned arrays takes slow paths.
    text += b" " * (-(HEADER.size + len(text)) % _ALIGN)
    crc = _checksum(text, body)
    return HEADER.pack(MAGIC, FORMAT_VERSION, key, len(text), len(body), crc) + text + body


@lru_cache(maxsize=256)
def _dtype(descr) -> np.dtype:
    # ``descr`` frozen into tuples: the top level of a structured one is a list again.
    return np.lib.format.descr_to_dtype(list(descr) if isinstance(descr, tuple) else descr)


def prime(dtypes) -> None:
    """Read back the descriptors of ``dtypes`` once, as an entry's blobs will be:
    numpy takes tens of µs to parse a structured one the first time."""
    for dt in dtypes:
        _dtype(_freeze(json.loads(json.dumps(np.lib.format.dtype_to_descr(np.dtype(dt))))))


def _freeze(value):
    # JSON turned the descriptor's tuples (and shapes) into lists; tuples hash and numpy accepts them.
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def unpack(blob: bytes, key: bytes) -> tuple[dict, dict[str, np.ndarray | memoryview]]:
    """``(meta, blobs)`` of an entry that must be stored under ``key``;
    raises CorruptEntry for anything that does not hold."""
    meta_len, body_len, crc = verify_header(blob, key, HEADER, MAGIC, FORMAT_VERSION)
    view = memoryview(blob)
    text = view[HEADER.size : HEADER.size + meta_len]
    body = view[HEADER.size + meta_len :]
    if _checksum(text, body) != crc:
        raise CorruptEntry("checksum mismatch")
    try:
        doc = json.loads(bytes(text))
        meta, index = doc["meta"], doc["blobs"]
        if not isinstance(meta, dict) or not isinstance(index, dict):
            raise CorruptEntry("metadata of the wrong shape")
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptEntry(f"unreadable metadata: {e}") from None
    return meta, Blobs(index, body)


class Blobs(Mapping):
    """An entry's blobs by name, each made into an array or a view when first asked for
    (raises CorruptEntry for a blob the metadata describes wrongly)."""

    def __init__(self, index: dict, body: memoryview) -> None:
        self._index = index
        self._body = body
        self._done: dict = {}

    def __getitem__(self, name: str):
        out = self._done.get(name)
        if out is not None:
            return out
        try:
            spec = self._index[name]
            at, length = spec[0], spec[1]
            if at < 0 or at + length > len(self._body):
                raise CorruptEntry(f"blob {name!r} lies outside the entry")
            raw = self._body[at : at + length]
            out = np.frombuffer(raw, dtype=_dtype(_freeze(spec[2]))).reshape(spec[3]) if len(spec) == 4 else raw
        except CorruptEntry:
            raise
        except (ValueError, TypeError, IndexError) as e:
            raise CorruptEntry(f"blob {name!r}: {e}") from None
        self._done[name] = out
        return out

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


def read_file(path: str) -> bytes:
    """A file's bytes in one read: four system calls, where ``open().read()``
    makes nine (a tty test, two seeks, a second stat and a read to see EOF).
    Raises OSError."""
    return read_file_and_stat(path)[0]


def read_file_and_stat(path: str) -> tuple[bytes, os.stat_result]:
    """:func:`read_file`, and the ``fstat`` of the file it read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        size = st.st_size
        data = os.read(fd, size)
        if len(data) < size:  # a short read: finish it
            parts = [data]
            while chunk := os.read(fd, size):
                parts.append(chunk)
            data = b"".join(parts)
        return data, st
    finally:
        os.close(fd)


def _checksum(text, body) -> int:
    # Adler-32 finds the damage a disk or an interrupted copy does (lengths
    # catch truncation) at a third of CRC-32's cost on large images.
    return zlib.adler32(body, zlib.adler32(text))
