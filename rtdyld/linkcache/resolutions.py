"""Outside names a cached batch resolved to the process, resolved again cheaply.

Most names a batch leaves undefined (``malloc``, ``memcpy``) resolve to the
process.  A cold link describes each such definition with the library that
holds it (``dladdr``, for traces and messages); a warm load needs only the
address.  The entry marks the externals the process defined; a warm load
resolves every outside name again in one walk of the chain
(:meth:`rtdyld.symbols.Dylib.resolve_many`), and where the process still
defines a marked one, takes its address and leaves the description until
something asks for it (:class:`rtdyld.symbols.ProcessSymbolDef`).
"""

from __future__ import annotations

from ..batch import External


class ProcessExternal(External):
    """An :class:`External` the process defines, resolved again by a warm load:
    its ``source``, its definition's origin, is described when first read."""
