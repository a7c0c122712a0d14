"""``-l NAME`` the way a static linker resolves it.

Directory by directory (``-L`` ones first, then the system's), a shared
``libNAME.so`` is preferred over ``libNAME.a`` unless linking statically;
a directory holding only the archive yields the archive.
"""

from __future__ import annotations

import os

from .host import SYSTEM_LIB_DIRS, LibraryNotFoundError


def find_library(name: str, dirs: list[str] | tuple[str, ...] = (), static: bool = False) -> tuple[str, str]:
    """("archive", path) or ("shared", name-or-path) for ``-l name``."""
    search = [*dirs, *SYSTEM_LIB_DIRS]
    for d in search:
        so = os.path.join(d, f"lib{name}.so")
        ar = os.path.join(d, f"lib{name}.a")
        if not static and os.path.exists(so):
            return "shared", name
        if os.path.exists(ar):
            return "archive", ar
    if not static:
        return "shared", name  # let the loader's own search have a go
    raise LibraryNotFoundError(f"cannot find lib{name}.a for -l {name} --static in {', '.join(search)}")
