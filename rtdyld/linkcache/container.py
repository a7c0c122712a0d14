"""The on-disk form of one link-cache entry: metadata, raw arrays, and a tail.

::

    magic "RTDYLDLC" | format u32 | key 32 bytes | meta length u32 |
    body length u64 | tail length u64 | adler32(meta + body) u32 |
    adler32(tail) u32 | meta | body | tail

``meta`` is :mod:`marshal` data (version 2) of plain dicts, lists, strings,
integers, booleans and None, padded with zeros so that the body starts
16-byte aligned; marshal decodes such data several times faster than JSON
does, and, unlike pickle, never runs code.  The body is the concatenation of
byte blobs (numpy arrays saved as their raw bytes, each 16-byte aligned),
which ``meta`` names with their offset, length and, for arrays, dtype
descriptor and shape; arrays come back as read-only views of the bytes read.
The tail is one more blob that a reader may read straight to where it is
needed, such as a batch's image into the batch's fresh memory
(:meth:`OpenEntry.read_tail_into`), and which is checksummed where it
landed.

Lengths must account for the whole file and both checksums must match: a
truncated, extended or damaged entry is refused (:class:`CorruptEntry`) and
the caller treats it as a miss.  The checksums guard against damage, not
tampering; the key inside the header guards against an entry renamed under
another key.
"""

from __future__ import annotations

import marshal
import os
import struct
import zlib
from collections.abc import Mapping
from functools import lru_cache

from ..cache_entry import CorruptEntry, check_stamp
from ..lazy_numpy import np

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Self

MAGIC = b"RTDYLDLC"
FORMAT_VERSION = 5
HEADER = struct.Struct("<8sI32sIQQII")
_ALIGN = 16
# Version 2, not the newest (4): versions 3 and up flag every object written
# that had other references (and every interned string), and the reader keeps
# each flagged object in a list for back-references.  The metadata repeats
# little: version 2 writes repeats out (a libbz2 batch's metadata 4% longer)
# and a warm link in a new process loads it a little faster (interleaved
# A/B: 1-4% of a libbz2 warm link).  Every version reads back: entries
# written with 4 still load.
_MARSHAL_VERSION = 2
# The first read of an entry: the header, and for a batch most of its metadata
# and blobs; what lies beyond is read where it is needed.
FIRST_READ = 1 << 15

__all__ = ["FORMAT_VERSION", "CorruptEntry", "OpenEntry", "dumps", "loads", "open_entry", "pack", "read_file",
           "read_file_and_stat", "unpack"]


def pack(key: bytes, meta: dict, blobs: Mapping[str, np.ndarray | bytes | memoryview], tail=b"") -> bytes:
    """The bytes of an entry holding ``meta``, ``blobs`` and ``tail`` under ``key``."""
    parts: list[bytes] = []
    index: dict[str, list] = {}
    at = 0
    for name, blob in blobs.items():
        if isinstance(blob, np.ndarray):
            arr = np.ascontiguousarray(blob)
            raw = arr.tobytes()
            index[name] = [at, len(raw), _descr(arr.dtype), list(arr.shape)]
        else:
            raw = bytes(blob)
            index[name] = [at, len(raw)]
        parts.append(raw)
        pad = -len(raw) % _ALIGN
        parts.append(b"\0" * pad)
        at += len(raw) + pad
    body = b"".join(parts)
    text = dumps({"meta": meta, "blobs": index})
    # Trailing zeros (marshal reads one value and ignores what follows) start the
    # body 16-byte aligned in the file, and so in the bytes read back: numpy on
    # misaligned arrays takes slow paths.
    text += b"\0" * (-(HEADER.size + len(text)) % _ALIGN)
    tail = bytes(tail)
    head_sum = zlib.adler32(body, zlib.adler32(text))
    return HEADER.pack(MAGIC, FORMAT_VERSION, key, len(text), len(body), len(tail), head_sum,
                       zlib.adler32(tail)) + text + body + tail


def _plain(value):
    # marshal holds only the exact built-in types: enums and other int or str
    # subclasses are stored as the values they are (a TypeError for anything else).
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"entry metadata cannot hold a {type(value).__name__}")


def dumps(value) -> bytes:
    """``value`` (plain data, as ``meta``) as bytes for :func:`loads`: a part of an
    entry's metadata that a load decodes only if asked for."""
    try:
        return marshal.dumps(value, _MARSHAL_VERSION)
    except ValueError:
        return marshal.dumps(_plain(value), _MARSHAL_VERSION)


def loads(raw: bytes):
    """The value :func:`dumps` made ``raw`` from (raises CorruptEntry)."""
    try:
        return marshal.loads(raw)
    except (ValueError, EOFError, TypeError) as e:
        raise CorruptEntry(f"unreadable metadata: {e}") from None


@lru_cache(maxsize=256)
def _dtype(descr) -> np.dtype:
    # A structured descriptor is a list at the top level; it is stored as a tuple, to be hashable.
    return np.lib.format.descr_to_dtype(list(descr) if isinstance(descr, tuple) else descr)


@lru_cache(maxsize=256)
def _descr(dtype: np.dtype) -> object:
    # Worked out once per dtype (an entry of many arrays has a few dtypes).
    return _freeze(np.lib.format.dtype_to_descr(dtype))


def _freeze(value):
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def prime(dtypes) -> None:
    """Read back the descriptors of ``dtypes`` once, as an entry's blobs will be:
    numpy takes tens of µs to parse a structured one the first time."""
    for dt in dtypes:
        _dtype(_freeze(np.lib.format.dtype_to_descr(np.dtype(dt))))


def _header(data, key: bytes) -> tuple[int, int, int, int, int]:
    """``(meta length, body length, tail length, head checksum, tail checksum)``
    of an entry starting with ``data``, which must be stored under ``key``."""
    if len(data) < HEADER.size:
        raise CorruptEntry(f"{len(data)} bytes, shorter than the {HEADER.size}-byte header")
    magic, version, stored_key, meta_len, body_len, tail_len, head_sum, tail_sum = HEADER.unpack_from(data)
    check_stamp((magic, version, stored_key), (MAGIC, FORMAT_VERSION, key))
    return meta_len, body_len, tail_len, head_sum, tail_sum


def _head(data, meta_len: int, body_len: int, head_sum: int | None) -> tuple[dict, Blobs]:
    """The metadata and blobs of an entry whose head is in ``data``, verified
    against ``head_sum`` (None: already verified as part of an outer entry)."""
    view = memoryview(data)
    text = view[HEADER.size : HEADER.size + meta_len]
    body = view[HEADER.size + meta_len : HEADER.size + meta_len + body_len]
    # Metadata and body lie end to end: one pass over both.
    if head_sum is not None and zlib.adler32(view[HEADER.size : HEADER.size + meta_len + body_len]) != head_sum:
        raise CorruptEntry("checksum mismatch")
    try:
        doc = marshal.loads(text)
        meta, index = doc["meta"], doc["blobs"]
        if not isinstance(meta, dict) or not isinstance(index, dict):
            raise CorruptEntry("metadata of the wrong shape")
    except (ValueError, EOFError, KeyError, TypeError) as e:
        raise CorruptEntry(f"unreadable metadata: {e}") from None
    return meta, Blobs(index, body.toreadonly())


def unpack(blob, key: bytes, checked: bool = False) -> tuple[dict, Blobs]:
    """``(meta, blobs)`` of a whole entry that must be stored under ``key``
    (``blobs.tail``: its tail, verified); raises CorruptEntry for anything that
    does not hold.  ``checked``: the bytes are part of an entry already
    verified (a nested entry), so the checksums are not worked out again."""
    meta_len, body_len, tail_len, head_sum, tail_sum = _header(blob, key)
    end = HEADER.size + meta_len + body_len
    if end + tail_len != len(blob):
        raise CorruptEntry(f"header promises {end + tail_len} bytes, file has {len(blob)}")
    meta, blobs = _head(blob, meta_len, body_len, None if checked else head_sum)
    tail = memoryview(blob)[end:].toreadonly()
    if not checked and zlib.adler32(tail) != tail_sum:
        raise CorruptEntry("checksum mismatch in the tail")
    blobs.tail = tail
    return meta, blobs


class Blobs(Mapping):
    """An entry's blobs by name, each made into an array or a view when first asked for
    (raises CorruptEntry for a blob the metadata describes wrongly)."""

    tail: memoryview | None = None

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
            if at < 0 or length < 0 or at + length > len(self._body):
                raise CorruptEntry(f"blob {name!r} lies outside the entry")
            raw = self._body[at : at + length]
            out = np.frombuffer(raw, dtype=_dtype(spec[2])).reshape(spec[3]) if len(spec) == 4 else raw
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


class OpenEntry:
    """An entry file whose head (metadata and blobs) is read and verified, and
    whose tail is read when asked for, to where the caller wants it.  Holds the
    file open until :meth:`close` (a context manager)."""

    def __init__(self, fd: int, data: bytes, key: bytes, path: str = "") -> None:
        self._fd = fd
        self.path = path  # named by errors in parts of the entry decoded later
        meta_len, body_len, tail_len, head_sum, self._tail_sum = _header(data, key)
        self.tail_at = HEADER.size + meta_len + body_len
        self.tail_length = tail_len
        # A read shorter than asked for ended at the end of the file: its length is known.
        self._whole = len(data) < FIRST_READ
        if self._whole and len(data) != self.tail_at + tail_len:
            raise CorruptEntry(f"header promises {self.tail_at + tail_len} bytes, file has {len(data)}")
        if len(data) < self.tail_at:
            data = self._rest_of_head(data)
        self._read = data
        self.meta, self.blobs = _head(data, meta_len, body_len, head_sum)

    def _rest_of_head(self, data: bytes) -> bytearray:
        # The lengths are not checksummed until read: the file's size vouches
        # for them before a buffer of that size is made.
        size = os.fstat(self._fd).st_size
        if self.tail_at + self.tail_length != size:
            raise CorruptEntry(f"header promises {self.tail_at + self.tail_length} bytes, file has {size}")
        buf = bytearray(self.tail_at)
        buf[: len(data)] = data
        self._fill(memoryview(buf)[len(data) :], len(data), to_end=False)
        return buf

    def _fill(self, into: memoryview, at: int, to_end: bool) -> None:
        """Fill ``into`` from the file's offset ``at``; with ``to_end``, the file
        must end there (one more byte is asked for, and must not come)."""
        extra = [bytearray(1)] if to_end else []
        done = 0
        while True:
            n = os.preadv(self._fd, [into[done:], *extra], at + done)
            if n > len(into) - done:
                raise CorruptEntry("the entry is longer than its header says")
            done += n
            if done == len(into):
                return
            if n == 0:
                raise CorruptEntry("the entry is shorter than its header says")

    def read_tail_into(self, buf) -> None:
        """Read the tail into the start of ``buf`` (writable, at least
        :attr:`tail_length` bytes) and verify it there; raises CorruptEntry."""
        n = self.tail_length
        out = memoryview(buf).cast("B")[:n]
        if len(out) < n:
            raise CorruptEntry(f"a tail of {n} bytes does not fit in {len(out)}")
        have = memoryview(self._read)[self.tail_at : self.tail_at + n]
        out[: len(have)] = have
        if not self._whole:
            self._fill(out[len(have) :], self.tail_at + len(have), to_end=True)
        if zlib.adler32(out) != self._tail_sum:
            raise CorruptEntry("checksum mismatch in the tail")

    def tail_bytes(self) -> bytes:
        """The tail, verified, as bytes."""
        buf = bytearray(self.tail_length)
        self.read_tail_into(buf)
        return bytes(buf)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_entry(path: str, key: bytes) -> OpenEntry:
    """The entry at ``path``, stored under ``key``, with its head read and
    verified: an open file, its tail not read yet.  Raises OSError (no such
    entry) or CorruptEntry."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return OpenEntry(fd, os.read(fd, FIRST_READ), key, path)
    except BaseException:
        os.close(fd)
        raise


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
