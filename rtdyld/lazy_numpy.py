"""numpy, imported when first used, for modules a warm link loads.

A batch restored from the link cache is written through memoryviews and
needs no numpy, while importing numpy costs a new process more than all the
rest of a warm ``rtdyld run``.  A module that calls numpy only inside its
functions, and is loaded on that path, writes ``from .lazy_numpy import np``
instead of ``import numpy as np``: ``np`` is a stand-in that imports numpy
when an attribute is first read, then holds numpy's attributes as its own,
so reading them costs what reading the module's would.

(The standard library's ``importlib.util.LazyLoader`` cannot do this for a
package other modules import by name: the import statement itself reads
the lazy module's ``__spec__``, which loads it.)
"""

from __future__ import annotations


class _Numpy:
    def __getattr__(self, name: str):
        import numpy

        # Only names not yet copied get here: numpy's own lazily made ones after the first read.
        self.__dict__.update(numpy.__dict__)
        return getattr(numpy, name)

    def __repr__(self) -> str:
        return "<numpy, imported when first used>"


np = _Numpy()
