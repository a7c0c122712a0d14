"""Static archives: which member defines a symbol, and that member's bytes.

GNU, BSD and thin ``ar`` archives are read the same way: the member headers
are walked once (:mod:`rtdyld.objfile.archive_layout`), the symbol index is
read in bulk (:mod:`rtdyld.objfile.archive_index`), and a member's bytes are
a memoryview into the archive's bytes (read whole, or mapped if the file is
large), sliced only when asked for.  Thin members are read from disk on
first use.  An archive without an index gets one from the caller's
``list_definitions`` the first time it is asked a question.

Members are identified by position, never by name: one archive may hold two
``dup.o``.  Symbol names are the raw names of the index (Mach-O C names keep
their leading ``_``), decoded as UTF-8 with surrogate escapes so every byte
string round-trips.
"""

from __future__ import annotations

import mmap
import os
import weakref
from collections.abc import Callable, Iterable

from rtdyld.errors import MalformedObjectError, UsageError
from rtdyld.objfile.archive_index import group, read_index
from rtdyld.objfile.archive_layout import (
    NAME_ENCODING,
    NAME_ERRORS,
    RawMember,
    is_archive,
    walk,
)

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from typing import Self

ListDefinitions = Callable[[memoryview, str], list[str]]

# An archive up to this size is read whole, a larger one mapped.  For small
# files one read costs less than a mapping and its page faults (measured: the
# archives phase of libz.a and libbz2.a 5-10% shorter, pulls no slower); at
# 2 MB copying into fresh memory costs twice what mapping does.
READ_WHOLE_LIMIT = 1 << 20

__all__ = [
    "Archive",
    "ArchiveCache",
    "ListDefinitions",
    "Member",
    "decode_symbol",
    "is_archive",
    "read_archive",
]


class _Contents:
    """An archive's bytes as its members read them (None once it is closed),
    its name for their messages, and the archive itself, referred to weakly.

    Members refer to this rather than to their Archive, which lists them: an
    archive and its members would otherwise make a reference cycle, and the
    archive's bytes would stay in memory until a garbage collection found
    the cycle, long after the linker that read them was closed."""

    __slots__ = ("_file_name", "archive", "name", "view")

    def __init__(self, archive: Archive, view: memoryview | None) -> None:
        self.archive = weakref.ref(archive)
        self.name = archive.name
        self.view = view
        self._file_name: str | None = None

    @property
    def file_name(self) -> str:
        """The archive's file name, for messages: worked out when first asked
        for, not for every member a pull names."""
        if self._file_name is None:
            self._file_name = os.path.basename(self.name)
        return self._file_name

    def slice(self, offset: int, size: int) -> memoryview:
        if self.view is None:
            raise UsageError(f"{self.name}: archive is closed")
        return self.view[offset : offset + size]


class Member:
    """One member of an archive, identified by its position in it."""

    __slots__ = (
        "_bytes",
        "_contents",
        "_data_offset",
        "_path",
        "header_offset",
        "index",
        "name",
        "size",
    )

    def __init__(self, archive: Archive, raw: RawMember | tuple[str, int, int, int], index: int, path: str | None):
        self._contents = archive._contents
        self.index = index
        self.name, self.header_offset, self._data_offset, self.size = raw
        self._path = path
        self._bytes: bytes | None = None

    @property
    def archive(self) -> Archive | None:
        """The archive this member is in (None once nothing else refers to it)."""
        return self._contents.archive()

    @property
    def display_name(self) -> str:
        """``libfoo.a(member.o)``: how messages name this member."""
        return f"{self._contents.file_name}({self.name})"

    @property
    def data(self) -> memoryview:
        """The member's bytes, uncopied; a thin member is read from disk once.

        Raises MalformedObjectError if a thin member's file is missing or no
        longer has the size the archive recorded.
        """
        if self._path is None:
            return self._contents.slice(self._data_offset, self.size)
        if self._bytes is None:
            self._bytes = self._read_thin()
        return memoryview(self._bytes)

    def _read_thin(self) -> bytes:
        if "\0" in self._path:
            raise MalformedObjectError(
                f"{self.display_name}: thin archive member name {self.name!r} contains a NUL byte"
            )
        try:
            with open(self._path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise MalformedObjectError(
                f"{self.display_name}: cannot read the thin archive member {self._path!r}: {e.strerror or e}"
            ) from None
        if len(data) != self.size:
            raise MalformedObjectError(
                f"{self.display_name}: thin archive member {self._path!r} is "
                f"{len(data)} bytes, but the archive recorded {self.size}; "
                f"rebuild the archive"
            )
        return data

    def __repr__(self) -> str:
        return f"<Member {self.display_name} #{self.index} at {self.header_offset:#x}>"


class Archive:
    """A parsed archive: its members in file order and its symbol index.

    Use :func:`read_archive` or :class:`ArchiveCache` to make one.  ``close``
    (or ``with``) unmaps the file once no member view is left alive;
    forgetting the archive is safe too.
    """

    def __init__(
        self,
        name: str,
        view: memoryview,
        mapping: mmap.mmap | None,
        list_definitions: ListDefinitions | None,
        path: str,
    ):
        self.name = name
        self.list_definitions = list_definitions
        self._hold(view, mapping)
        layout = walk(view, name)
        self.kind = layout.kind
        self.has_index = layout.index_layout is not None
        if self.kind == "thin":  # members beside the archive at ``path``
            thin_dir = os.path.dirname(path)
            self.members = [
                Member(self, raw, i, os.path.join(thin_dir, raw[0])) for i, raw in enumerate(layout.members)
            ]
        else:
            self.members = [Member(self, raw, i, None) for i, raw in enumerate(layout.members)]
        # name -> the position of its one definer, or a list of positions.
        self._index: dict[str, int | list[int]] | None = None
        if layout.index_layout is not None:
            header_offsets = [raw[1] for raw in layout.members]
            self._index = read_index(layout.index_layout, layout.index_data, header_offsets, name, layout.index_offset)

    def _hold(self, view: memoryview, mapping: mmap.mmap | None) -> None:
        """Keep the archive's bytes (``view``, of ``mapping`` if mapped), which its members share."""
        self._contents = _Contents(self, view)
        self._mapping = mapping

    def definers(self, symbol: str) -> list[Member]:
        """The members the index says define ``symbol``, in index order."""
        found = self._symbol_index().get(symbol)
        if found is None:
            return []
        if isinstance(found, int):
            return [self.members[found]]
        return [self.members[p] for p in found]

    @property
    def indexed(self) -> bool:
        """Whether the symbol index is at hand (read from the file or already
        built), so that asking it reads no member."""
        return self._index is not None

    def first_definers(self, names: Iterable[str]) -> dict[str, Member]:
        """``definers(name)[0]`` of those of ``names`` the index lists."""
        index, members = self._symbol_index(), self.members
        found = {}
        for name in index.keys() & names:
            p = index[name]
            found[name] = members[p if isinstance(p, int) else p[0]]
        return found

    def symbols(self) -> list[str]:
        """Every name in the index, once each, in index order."""
        return list(self._symbol_index())

    def close(self) -> None:
        """Drop this archive's mapping; live member views keep it until they go."""
        contents = self._contents
        if contents.view is None:
            return
        contents.view.release()
        contents.view = None
        if self._mapping is not None:
            try:
                self._mapping.close()
            except BufferError:
                pass  # a member view is still alive; the mapping goes with it
            self._mapping = None

    @property
    def closed(self) -> bool:
        return self._contents.view is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        index = "indexed" if self.has_index else "no index"
        return f"<Archive {self.name!r} {self.kind}, {len(self.members)} members, {index}>"

    def _symbol_index(self) -> dict[str, int | list[int]]:
        if self._index is None:
            self._index = self._index_by_callback()
        return self._index

    def _index_by_callback(self) -> dict[str, int | list[int]]:
        if self.list_definitions is None:
            raise UsageError(
                f"{self.name}: the archive has no symbol index and no "
                f"list_definitions was given to find its definitions"
            )
        names: list[str] = []
        positions: list[int] = []
        for member in self.members:
            defined = list(self.list_definitions(member.data, member.display_name))
            names.extend(defined)
            positions.extend([member.index] * len(defined))
        return group(names, positions)


def read_archive(
    path_or_bytes: str | os.PathLike[str] | bytes | bytearray | memoryview,
    name: str | None = None,
    list_definitions: ListDefinitions | None = None,
) -> Archive:
    """Parse the archive at a path, or in memory, without parsing its members.

    ``name`` is the display name (default: the path as given, or
    ``"<memory>"``); thin members are found relative to the archive's
    directory (for bytes, that of ``name``).  ``list_definitions(data,
    display_name)`` is called on each member, the first time a symbol is
    looked up, only if the archive has no index.  Raises MalformedObjectError
    for anything malformed, naming the archive and, where known, the member.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        display = name if name is not None else "<memory>"
        view = memoryview(path_or_bytes).cast("B")
        return Archive(display, view, None, list_definitions, name or "")
    path = os.fspath(path_or_bytes)
    return _read_file(path, name if name is not None else path, list_definitions)[2]


def _read_file(
    path: str,
    display: str,
    list_definitions: ListDefinitions | None,
    known: Callable[[tuple[int, int], tuple[int, int]], Archive | None] | None = None,
) -> tuple[tuple[int, int], tuple[int, int], Archive]:
    """The file at ``path`` as opened, known by its (device, inode) and
    stamped with its (mtime_ns, size), and the archive in it: parsed from
    the bytes read, unless ``known(file, stamp)`` has it already."""
    fd = _open(path, display)
    try:
        # The file as opened, so that the bytes read are those stamped.
        st = os.fstat(fd)
        file, stamp = (st.st_dev, st.st_ino), (st.st_mtime_ns, st.st_size)
        archive = known(file, stamp) if known is not None else None
        if archive is not None:
            return file, stamp, archive
        view, mapping = _contents(fd, st.st_size, display)
    finally:
        os.close(fd)
    return file, stamp, _parse_file(display, view, mapping, list_definitions, path)


def _parse_file(
    display: str, view: memoryview, mapping: mmap.mmap | None, list_definitions: ListDefinitions | None, path: str
) -> Archive:
    try:
        return Archive(display, view, mapping, list_definitions, path)
    except BaseException:
        view.release()
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:
                pass  # the traceback still holds views of it; they unmap it when they go
        raise


def _open(path: str, display: str) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise MalformedObjectError(f"{display}: cannot read the archive: {e.strerror or e}") from None


def _contents(fd: int, size: int, display: str) -> tuple[memoryview, mmap.mmap | None]:
    """The bytes of the open file ``fd``: read whole if small, else mapped."""
    try:
        if size > READ_WHOLE_LIMIT:
            mapping = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            return memoryview(mapping), mapping
        data = os.read(fd, size)
        while len(data) < size:  # a short read (a network file system): read on to the end
            more = os.read(fd, size - len(data))
            if not more:
                break  # the file shrank meanwhile: what was read is reported as truncated
            data += more
        return memoryview(data), None
    except OSError as e:
        raise MalformedObjectError(f"{display}: cannot read the archive: {e.strerror or e}") from None


class ArchiveCache:
    """Archives parsed once per (file, mtime_ns, size), the file known by its
    device and inode, so every path or link to it shares one parse.

    A changed file is parsed again.  A ``list_definitions`` given to a later
    ``get`` is kept if the cached archive had none.
    """

    def __init__(self) -> None:
        self._archives: dict[tuple[int, int], tuple[tuple[int, int], Archive]] = {}

    def get(
        self,
        path: str | os.PathLike[str],
        list_definitions: ListDefinitions | None = None,
    ) -> Archive:
        """The parsed archive at ``path``; see :func:`read_archive` for errors."""
        path = os.fspath(path)
        file, stamp, archive = _read_file(path, path, list_definitions, self._unchanged)
        if archive.list_definitions is None:
            archive.list_definitions = list_definitions
        self._archives[file] = (stamp, archive)
        return archive

    def _unchanged(self, file: tuple[int, int], stamp: tuple[int, int]) -> Archive | None:
        """The archive parsed from ``file`` if it still has that ``stamp``."""
        cached = self._archives.get(file)
        if cached is not None and cached[0] == stamp and not cached[1].closed:
            return cached[1]
        return None

    def clear(self) -> None:
        """Forget every archive (they unmap once nothing uses them)."""
        self._archives.clear()


def decode_symbol(raw: bytes) -> str:
    """Decode a raw symbol name the way archive indexes are decoded."""
    return raw.decode(NAME_ENCODING, NAME_ERRORS)
