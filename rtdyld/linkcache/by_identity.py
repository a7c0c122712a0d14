"""Inputs known by their file identity, and a batch entry found from identities alone.

With a link cache, ``add_object(path)`` and ``add_archive(path)`` only stat
the file: an :class:`InputFile` keeps its path and identity ``(device,
inode, size, mtime_ns, ctime_ns)`` and reads and hashes the bytes only if
something needs them.  A finalize whose inputs are all such files first
looks for a *by-identity* entry (layer ``inputs/``): the batch entry itself,
keyed by everything a batch key covers but with each input's identity in
place of its digest, and holding the digests those identities stood for.
A hit reads that one file and no input.  Any miss falls back to the
digest-keyed entry (:mod:`.plan`), and from there to a cold link.

Why an identity may stand for a digest is :mod:`.digests`' argument: any
write to a file changes its ctime, which user space cannot set back, so an
unchanged identity means unchanged bytes — provided the bytes were hashed
once the file had been stable for ``SETTLE_NS`` (a write within the
timestamp granularity of the hashing could otherwise keep the identity).
So a by-identity entry is written only when every input's digest was taken
from a settled file with exactly the identity in the key; a file written
since has another identity, and so another key.  A warm load then checks
the rest of the session as for any batch entry (:class:`.plan.BatchPlan`).
"""

from __future__ import annotations

import marshal
import os
import time

from . import digests
from .container import read_file_and_stat

LAYER = "inputs"
INPUT_ATTR = "_link_cache_input"  # set on objects added by path, to their InputFile


class InputFile:
    """A file added to the link, known by its identity until its bytes are asked for.
    Raises OSError if the file cannot be stat'ed."""

    __slots__ = ("_data", "_digest", "_settled", "ident", "path")

    def __init__(self, path) -> None:
        path = os.fspath(path)
        # Absolute and normalised, as a session without the cache names its
        # archives: a change of directory does not change what it names, and
        # "lib/../lib/libz.a" is the same archive as "lib/libz.a".  (normpath,
        # not abspath, for a path already absolute: no getcwd call.)
        self.path = os.path.normpath(path) if path.startswith("/") else os.path.abspath(path)
        self.ident = digests.file_identity(os.stat(self.path))
        self._data: bytes | None = None
        self._digest: str | None = None
        self._settled = False

    def read(self) -> bytes:
        """The file's bytes, read once (raises OSError)."""
        if self._data is None:
            before = time.time_ns()
            data, st = read_file_and_stat(self.path)
            self._digest = digests.digest(data)
            # The digest stands for the identity in the key only if the bytes
            # hashed are that identity's and the file had settled.
            self._settled = digests.file_identity(st) == self.ident and digests.had_settled(st, before)
            self._data = data
        return self._data

    def digest(self) -> str:
        """sha256 of the bytes :meth:`read` gives."""
        self.read()
        return self._digest

    def settled_digest(self) -> str | None:
        """The digest, if the bytes were read and may be recorded under :attr:`ident`."""
        return self._digest if self._settled else None


def input_of(obj) -> InputFile | None:
    """The InputFile of an object added by path, without loading the object."""
    return obj.__dict__.get(INPUT_ATTR)


def key(identity: dict, objs, search, loaded: list, kept, memory: str, version: int) -> bytes | None:
    """The by-identity key of a batch of ``objs`` searching the archives
    ``search`` (``loaded``: each one's member offsets already loaded), or None
    when an input is not known by its identity."""
    objects = []
    for o in objs:
        inp = input_of(o)
        if inp is None:
            return None
        objects.append([o.name, inp.path, inp.ident])
    archives = []
    for a, offsets in zip(search, loaded):
        src = getattr(a, "source", None)
        if src is None:
            return None
        archives.append([a.name, src.path, src.ident, offsets])
    parts = (identity, objects, archives, kept, memory, version)
    try:
        # marshal version 2 is exact and depends on the values alone: no
        # references (version 3) and no interned-string codes (version 3 and
        # 4) that would vary with the process's state.  Unlike repr it writes
        # integers in binary, not as decimal text (half the cost of the key
        # in a new process: the identities are nineteen-digit integers), and
        # it writes unpaired surrogates (undecodable bytes of a file name).
        raw = b"m" + marshal.dumps(parts, 2)
    except ValueError:  # a value marshal does not take (an int or str subclass): its exact repr
        raw = b"r" + repr(parts).encode()  # repr escapes unpaired surrogates
    # BLAKE2 is built into Python: unlike sha256, no OpenSSL digest is looked
    # up for each hash (tens of µs in a new process), nor OpenSSL loaded.
    return digests.key_hash(b"rtdyld link cache: batch by input identity\0" + raw)


def recorded_inputs(cache, objs, search, planned: list[str]) -> dict | None:
    """What a by-identity entry records of the inputs (their identities and
    digests), or None when some digest may not be recorded under its identity:
    not taken from a settled file with that identity, or not the digest the
    batch was keyed and linked with (``planned``: the archives')."""
    objects = []
    for o in objs:
        inp = input_of(o)
        d = inp.settled_digest() if inp is not None else None
        if d is None:
            return None
        objects.append([inp.path, inp.ident, d])
    archives = []
    for a, dg in zip(search, planned, strict=True):
        src = getattr(a, "source", None)
        if src is None or cache.digests.settled(src.path, src.ident) != dg:
            return None
        archives.append([src.path, src.ident, dg])
    return {"objects": objects, "archives": archives}


def adopt(meta: dict, search) -> None:
    """After a hit: the archives' digests are those the entry recorded for
    their identities, so a later batch of the session need not hash them."""
    for a, (_path, _ident, dg) in zip(search, meta["inputs"]["archives"], strict=True):
        a.__dict__.setdefault("content_digest", dg)
