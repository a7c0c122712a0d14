"""The exceptions rtdyld raises.

Every failure a user can cause is a :class:`LinkError`.  Messages name the
object (path, archive member or module name) and, where they apply, the
section, offset, relocation type and symbol, so one line is enough to find the
culprit.
"""

from __future__ import annotations


class LinkError(Exception):
    """Base class of every error rtdyld reports about its inputs or the link."""


class MalformedObjectError(LinkError):
    """An input is truncated, inconsistent, or not an x86-64 object we read."""


class UnsupportedRelocationError(LinkError):
    """A relocation type rtdyld does not (yet) apply; never skipped silently."""


class UndefinedSymbolError(LinkError):
    """Symbols nobody defines.  ``missing`` maps each name to its referrers."""

    def __init__(self, message: str, missing: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.missing = dict(missing or {})


class DuplicateSymbolError(LinkError):
    """Two strong definitions of one symbol."""


class RelocationOverflowError(LinkError):
    """A relocated value does not fit its field; nothing truncated is written."""


class ValidationError(LinkError):
    """A validation hook rejected the batch."""


class LayoutError(LinkError):
    """The batch cannot be placed in memory as its relocations require."""


class UsageError(LinkError):
    """The API or command line was used in a way that cannot work."""


class CorruptCacheEntryError(LinkError):
    """A link-cache entry, read after its batch was loaded, holds what no link wrote."""


__all__ = [
    "CorruptCacheEntryError",
    "DuplicateSymbolError",
    "LayoutError",
    "LinkError",
    "MalformedObjectError",
    "RelocationOverflowError",
    "UndefinedSymbolError",
    "UnsupportedRelocationError",
    "UsageError",
    "ValidationError",
]
