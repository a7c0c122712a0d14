"""Archives that are read only if a link needs them.

A warm link never reads an archive: the cache entry says which members were
pulled.  So with a link cache, ``add_archive`` records the archive's path and
identity and returns a :class:`DeferredArchive` (its content digest worked
out when first asked for), which maps and parses
the file the first time anything asks about its members — exactly as
:func:`~rtdyld.objfile.archive.read_archive` would — and then checks that the
bytes it read are still the ones the digest (and so the cache key) describes.
"""

from __future__ import annotations

import mmap
import os

from ..errors import MalformedObjectError
from ..objfile.archive import Archive, Member
from ..objfile.archive_index import group
from ..objfile.archive_layout import ARCH_MAGIC
from .digests import digest

# Attributes Archive.__init__ sets from the file; asking for one opens it.
_FROM_FILE = frozenset({"_contents", "_mapping", "kind", "has_index", "members", "_index"})


class DeferredArchive(Archive):
    """An :class:`Archive` opened on first use.  ``content_digest`` is the
    sha256 of its bytes: hashed (or remembered) when first asked for, then
    as actually read; None
    for a file that is not a regular archive (a thin one, or not an archive
    at all: the reader reports that when the archive is opened), which no
    batch entry may then depend on."""

    def __init__(self, path: str, list_definitions, tables=None, source=None) -> None:
        self.name = path
        self.path = path
        self.list_definitions = list_definitions
        self.tables = tables  # where member tables and symbol indexes are kept (a LinkCache), if anywhere
        self.source = source  # the InputFile (identity) it was added as, if any
        self.opened = False

    def __getattr__(self, attr: str):
        if attr in _FROM_FILE and not self.__dict__.get("opened", True):
            self._open()
            return getattr(self, attr)
        if attr == "content_digest" and self.__dict__.get("tables") is not None:
            # Added by identity alone: hashed (or its digest and magic number
            # remembered) when first asked for.
            content, head = self.tables.digests.file_digest_and_head(self.path)
            self.content_digest = content if head == ARCH_MAGIC else None
            return self.content_digest
        raise AttributeError(attr)

    def _open(self) -> None:
        self.opened = True
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        except OSError as e:
            raise MalformedObjectError(f"{self.path}: cannot read the archive: {e.strerror or e}") from None
        view = memoryview(mapping) if mapping is not None else memoryview(b"")
        # A regular archive: a thin one's members are other files, which no digest covers.
        regular = view[: len(ARCH_MAGIC)] == ARCH_MAGIC
        self.content_digest = digest(view) if regular else None
        known = self.tables.load_archive(self.content_digest, len(view)) if self.tables is not None and regular else None
        if known is None:
            Archive.__init__(self, self.name, view, mapping, self.list_definitions, self.path)
            if self._index is not None and self.tables is not None and regular:
                self.tables.store_archive(self)
            return
        kind, has_index, raw, names, positions = known
        self._hold(view, mapping)
        self.kind, self.has_index = kind, has_index
        self.members = [Member(self, r, i, None) for i, r in enumerate(raw)]
        self._index = group(names, positions) if names is not None else None

    def _index_by_callback(self):
        # An archive without a symbol index is indexed by reading every member:
        # worth remembering.
        index = super()._index_by_callback()
        self._index = index
        if self.tables is not None and self.content_digest is not None:
            self.tables.store_archive(self)
        return index

    def close(self) -> None:
        if self.__dict__.get("opened"):
            super().close()


class CachedMember:
    """A member a warm link loaded, known by its position without reading the
    archive; its bytes are read from the archive only if asked for."""

    __slots__ = ("archive", "header_offset", "index", "name", "size")

    def __init__(self, archive: Archive, header_offset: int, index: int, name: str, size: int) -> None:
        self.archive = archive
        self.header_offset = header_offset
        self.index = index
        self.name = name
        self.size = size

    @property
    def display_name(self) -> str:
        return f"{os.path.basename(self.archive.name)}({self.name})"

    @property
    def data(self) -> memoryview:
        members = self.archive.members
        member = members[self.index] if 0 <= self.index < len(members) else None
        if member is None or member.header_offset != self.header_offset:
            raise MalformedObjectError(f"{self.display_name}: the archive changed since it was linked")
        return member.data

    def __repr__(self) -> str:
        return f"<Member {self.display_name} #{self.index} at {self.header_offset:#x}>"
