"""The on-disk format of one object-cache entry, and atomic file replacement.

An entry is a fixed header, a JSON metadata block and the object bytes::

    magic "RTDYLDOC" | format u32 | key 32 bytes | meta length u32 |
    object length u64 | sha256(meta + object) 32 bytes | meta | object

All integers are little-endian.  The lengths must account for the whole file
and the checksum must match, so a truncated, extended or bit-flipped entry is
refused rather than handed to the linker.
"""

from __future__ import annotations

import os
import struct

MAGIC = b"RTDYLDOC"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sI32sIQ32s")
TEMP_PREFIX = ".tmp-"  # temporary files being written; never entries


class CorruptEntry(Exception):
    """An entry whose header, lengths or checksum do not hold."""


# The link cache's entries share this module's stamp check and atomic writes,
# so it imports hashlib, json and tempfile only where an object-cache entry
# or a write needs them, and its one record is a plain class: a warm link
# from the link cache needs none of them.
class Entry:
    """A verified cache entry."""

    __slots__ = ("data", "key", "module", "symbols")

    def __init__(self, key: bytes, module: str, symbols: tuple[str, ...], data: bytes) -> None:
        self.key = key
        self.module = module
        self.symbols = symbols
        self.data = data


def encode(key: bytes, data: bytes, module: str, symbols: list[str], settings: dict) -> bytes:
    """The bytes of an entry for object ``data`` stored under ``key``."""
    import hashlib
    import json

    meta = json.dumps({"module": module, "symbols": sorted(symbols), "settings": settings},
                      sort_keys=True).encode()
    checksum = hashlib.sha256(meta + data).digest()
    return HEADER.pack(MAGIC, FORMAT_VERSION, key, len(meta), len(data), checksum) + meta + data


def check_stamp(found: tuple[bytes, int, bytes], expected: tuple[bytes, int, bytes]) -> None:
    """Raise CorruptEntry unless an entry's ``(magic, format version, key)``
    are those ``expected``."""
    (magic, version, key), (want_magic, want_version, want_key) = found, expected
    if magic != want_magic:
        raise CorruptEntry(f"bad magic {magic!r}")
    if version != want_version:
        raise CorruptEntry(f"format version {version}, expected {want_version}")
    if key != want_key:
        raise CorruptEntry("stored under another key")


def _verify_header(blob, key: bytes) -> tuple[int, bytes]:
    """``(meta length, checksum)`` from the :data:`HEADER` of an entry, which
    must be stored under ``key`` and account for the whole of ``blob``;
    raises CorruptEntry otherwise."""
    if len(blob) < HEADER.size:
        raise CorruptEntry(f"{len(blob)} bytes, shorter than the {HEADER.size}-byte header")
    found, found_version, stored_key, meta_len, body_len, checksum = HEADER.unpack_from(blob)
    check_stamp((found, found_version, stored_key), (MAGIC, FORMAT_VERSION, key))
    if HEADER.size + meta_len + body_len != len(blob):
        raise CorruptEntry(f"header promises {HEADER.size + meta_len + body_len} bytes, file has {len(blob)}")
    return meta_len, checksum


def decode(blob: bytes, key: bytes) -> Entry:
    """The entry in ``blob``, which must be stored under ``key``; raises CorruptEntry."""
    import hashlib
    import json

    meta_len, checksum = _verify_header(blob, key)
    body = memoryview(blob)[HEADER.size:]
    if hashlib.sha256(body).digest() != checksum:
        raise CorruptEntry("checksum mismatch")
    try:
        meta = json.loads(bytes(body[:meta_len]))
        module = meta["module"]
        symbols = tuple(meta["symbols"])
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptEntry(f"unreadable metadata: {e}") from None
    return Entry(key, str(module), symbols, bytes(body[meta_len:]))


def atomic_write(path: str, blob: bytes, durable: bool = True) -> None:
    """Replace ``path`` with ``blob`` so that readers see the old file or the
    whole new one, never a part: a temporary file in the same directory,
    renamed over the target.  ``durable`` syncs it to disk first (and the
    directory after); without, a crash may leave a damaged file, which is
    fine for entries whose readers check them and treat damage as a miss."""
    import tempfile

    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # The rename is durable only once the directory itself is synced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

