"""The on-disk form of one link-cache entry: JSON metadata plus raw arrays.

::

    magic "RTDYLDLC" | format u32 | key 32 bytes | meta length u32 |
    body length u64 | crc32(meta + body) u32 | meta | body

The body is the concatenation of byte blobs (numpy arrays saved as their raw
bytes, 16-byte aligned); ``meta`` names each one with its offset, length and,
for arrays, the dtype descriptor.  Nothing is pickled, so loading an entry
never runs code, and arrays come back as read-only views of the file's bytes.
Lengths must account for the whole file and the checksum must match: a
truncated or damaged entry is refused (:class:`CorruptEntry`) and the caller
treats it as a miss.  The checksum guards against damage, not tampering; the
key inside the header guards against an entry renamed under another key.
"""

from __future__ import annotations

import json
import struct
import zlib
from functools import lru_cache

import numpy as np

from ..cache_entry import CorruptEntry

MAGIC = b"RTDYLDLC"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sI32sIQI")
_ALIGN = 16

__all__ = ["FORMAT_VERSION", "CorruptEntry", "pack", "unpack"]


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
    crc = zlib.crc32(body, zlib.crc32(text))
    return HEADER.pack(MAGIC, FORMAT_VERSION, key, len(text), len(body), crc) + text + body


@lru_cache(maxsize=256)
def _dtype(descr_json: str) -> np.dtype:
    return np.lib.format.descr_to_dtype(_tuples(json.loads(descr_json)))


def unpack(blob: bytes, key: bytes) -> tuple[dict, dict[str, np.ndarray | memoryview]]:
    """``(meta, blobs)`` of an entry that must be stored under ``key``;
    raises CorruptEntry for anything that does not hold."""
    if len(blob) < HEADER.size:
        raise CorruptEntry(f"{len(blob)} bytes, shorter than the {HEADER.size}-byte header")
    magic, version, stored_key, meta_len, body_len, crc = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptEntry(f"bad magic {magic!r}")
    if version != FORMAT_VERSION:
        raise CorruptEntry(f"format version {version}, expected {FORMAT_VERSION}")
    if stored_key != key:
        raise CorruptEntry("stored under another key")
    if HEADER.size + meta_len + body_len != len(blob):
        raise CorruptEntry(f"header promises {HEADER.size + meta_len + body_len} bytes, file has {len(blob)}")
    view = memoryview(blob)
    text = view[HEADER.size : HEADER.size + meta_len]
    body = view[HEADER.size + meta_len :]
    if zlib.crc32(body, zlib.crc32(text)) != crc:
        raise CorruptEntry("checksum mismatch")
    try:
        doc = json.loads(bytes(text))
        meta = doc["meta"]
        out: dict[str, np.ndarray | memoryview] = {}
        for name, spec in doc["blobs"].items():
            at, length = spec[0], spec[1]
            if at < 0 or at + length > len(body):
                raise CorruptEntry(f"blob {name!r} lies outside the entry")
            raw = body[at : at + length]
            if len(spec) == 4:
                dtype = _dtype(json.dumps(spec[2]))
                out[name] = np.frombuffer(raw, dtype=dtype).reshape(spec[3])
            else:
                out[name] = raw
    except CorruptEntry:
        raise
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise CorruptEntry(f"unreadable metadata: {e}") from None
    return meta, out


def _tuples(descr):
    # JSON turned the descriptor's tuples (and shapes) into lists; numpy wants them back.
    if isinstance(descr, list):
        return [tuple(tuple(x) if isinstance(x, list) else x for x in field) for field in descr]
    return descr
