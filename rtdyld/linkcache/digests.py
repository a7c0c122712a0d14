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

import hashlib
import json
import os
import time

from ..cache_entry import atomic_write
from .container import read_file

SETTLE_NS = 2_000_000_000
HEAD = 8  # bytes of the file's start a record keeps: an archive's magic
_FIELDS = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")


def digest(data) -> str:
    """sha256 of ``data``, hex."""
    return hashlib.sha256(data).hexdigest()


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
        st = os.stat(real)
        ident = [getattr(st, f) for f in _FIELDS]
        record = self._record_path(real)
        try:
            doc = json.loads(read_file(record))
            if doc["path"] == real and doc["ident"] == ident and isinstance(doc["digest"], str):
                return doc["digest"], bytes.fromhex(doc["head"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return self._rehash(real)

    def settled(self, path, ident: list[int]) -> str | None:
        """The digest remembered for the file at ``path`` while it had identity
        ``ident`` (records are made only of settled files), or None."""
        real = os.path.abspath(path)
        try:
            doc = json.loads(read_file(self._record_path(real)))
            if doc["path"] == real and doc["ident"] == list(ident) and isinstance(doc["digest"], str):
                return doc["digest"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def rehash(self, path) -> str:
        """Hash the file now, and remember it if it has settled."""
        return self._rehash(os.path.abspath(path))[0]

    def _rehash(self, real: str) -> tuple[str, bytes]:
        before = time.time_ns()
        with open(real, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
        value = digest(data)
        head = data[:HEAD]
        ident = [getattr(st, f) for f in _FIELDS]
        if before - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLE_NS and os.stat(real).st_ctime_ns == st.st_ctime_ns:
            try:
                atomic_write(self._record_path(real), json.dumps(
                    {"path": real, "ident": ident, "digest": value, "head": head.hex()}).encode(), durable=False)
            except OSError:
                pass  # only the fast path is lost
        return value, head
