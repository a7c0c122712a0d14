"""The exceptions memmgr raises."""

from __future__ import annotations


class MemMgrError(Exception):
    """A memory operation failed or the API was misused.

    ``errno`` holds the C errno when the failure came from a libc call,
    otherwise ``None``.
    """

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


class AllocationError(MemMgrError):
    """Address space could not be reserved, or an allocation does not fit."""
