"""Content digests of inputs, with a stat-based fast path that cannot go stale.

Every cache key is built from the sha256 of the bytes an input had when it
was read.  Hashing a large archive on every run costs more than the warm
link itself, so the digest of a file (with its first bytes, the magic
number that says what kind of input it is) is remembered under its identity
``(device, inode, size, mtime_ns, ctime_ns)``.  Any write to a file changes
its ctime, which user space cannot set back; the remembered digest is used
only while the identity is unchanged, and only if the file had already been
stable for :data:`SETTLE_NS` when it was hashed — a file written again within
the kernel's timestamp granularity of that moment could otherwise keep its
identity (git's "racily clean" problem).  Such a file is simply hashed again
next time.
"""

from __future__ import annotations

import os
import time

from ..cache_entry import atomic_write
from .container import read_file, read_file_and_stat

SETTLE_NS = 2_000_000_000
HEAD = 8  # bytes of the file's start a record keeps: an archive's magic


try:
    # hashlib's BLAKE2 is always this built-in module's.  Imported alone, it
    # spares a warm link, which hashes only keys, hashlib's import of
    # OpenSSL's bindings (~5 ms of a new process).
    from _blake2 import blake2b
except ImportError:  # an interpreter built without it
    from hashlib import blake2b


def key_hash(data: bytes) -> bytes:
    """The 32-byte hash the link cache's keys are made with."""
    return blake2b(data, digest_size=32).digest()


def digest(data) -> str:
    """sha256 of ``data``, hex."""
    import hashlib  # only when content is hashed: a warm link by identity hashes none

    return hashlib.sha256(data).hexdigest()


def file_identity(st: os.stat_result) -> list[int]:
    """What names a file's current contents: ``(device, inode, size, mtime_ns, ctime_ns)``."""
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def had_settled(st: os.stat_result, before_ns: int) -> bool:
    """Whether the file ``st`` describes had not changed for :data:`SETTLE_NS`
    at ``before_ns`` (when its reading began): only then may its digest stand
    for its identity."""
    return before_ns - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS


class StatDigests:
    """Remembered file digests in ``directory``, one small record per absolute
    path.  Not per real path: resolving symbolic links costs an ``lstat`` per
    path component, and the identity, taken through any links, already names
    the file itself (a link pointed elsewhere reaches another inode)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def _record_path(self, real: str) -> str:
        return os.path.join(self.directory, digest(real.encode("utf-8", "surrogateescape")) + ".json")

    def file_digest(self, path) -> str:
        """The sha256 of the file's current bytes; read and hashed only when
        its identity changed since a settled record was made.  Raises OSError."""
        return self.file_digest_and_head(path)[0]

    def file_digest_and_head(self, path) -> tuple[str, bytes]:
        """:meth:`file_digest` and the file's first :data:`HEAD` bytes (its
        magic number), which the record keeps too: no read when it holds."""
        real = os.path.abspath(path)
        doc = self._record(real, file_identity(os.stat(real)))
        try:
            if doc is not None:
                return doc["digest"], bytes.fromhex(doc["head"])
        except (ValueError, KeyError, TypeError):
            pass
        return self._rehash(real)

    def settled(self, path, ident: list[int]) -> str | None:
        """The digest remembered for the file at ``path`` while it had identity
        ``ident`` (records are made only of settled files), or None."""
        doc = self._record(os.path.abspath(path), list(ident))
        return doc["digest"] if doc is not None else None

    def _record(self, real: str, ident: list[int]) -> dict | None:
        """The record of the file at ``real`` if it was made while the file had
        identity ``ident`` and holds a digest, else None."""
        try:
            import json  # (records are read only when an archive's digest is asked for)

            doc = json.loads(read_file(self._record_path(real)))
            if doc["path"] == real and doc["ident"] == ident and isinstance(doc["digest"], str):
                return doc
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _rehash(self, real: str) -> tuple[str, bytes]:
        before = time.time_ns()
        data, st = read_file_and_stat(real)
        value = digest(data)
        head = data[:HEAD]
        ident = file_identity(st)
        if had_settled(st, before) and os.stat(real).st_ctime_ns == st.st_ctime_ns:
            import json

            try:
                atomic_write(self._record_path(real), json.dumps(
                    {"path": real, "ident": ident, "digest": value, "head": head.hex()}).encode(), durable=False)
            except OSError:
                pass  # only the fast path is lost
        return value, head
