"""numpy, imported when first used, for modules a warm link loads.

A batch restored from the link cache is written through memoryviews and
needs no numpy, while importing numpy costs a new process more than all the
rest of a warm ``rtdyld run``.  A module that calls numpy only inside its
functions, and is loaded on that path, writes ``from .lazy_numpy import np``
instead of ``import numpy as np``: ``np`` is a stand-in that imports numpy
when an attribute is first read, and then puts numpy itself in its place in
every module of the package that holds it.

(The standard library's ``importlib.util.LazyLoader`` cannot do this for a
package other modules import by name: the import statement itself reads
the lazy module's ``__spec__``, which loads it.)
"""

from __future__ import annotations

import sys


class _Numpy:
    def __getattr__(self, name: str):
        import numpy

        # From now on the modules read numpy itself: the stand-in's own
        # attribute reads go through this class's lookup, several times the
        # cost of a module's, in the hot paths too.  Every module of the
        # package holding the stand-in gets numpy, and a later import of the
        # name gets numpy; the stand-in keeps numpy's attributes for anything
        # that holds it still (only the names read after this one go through
        # here: numpy's lazily made ones).
        globals()["np"] = numpy
        prefix = f"{__package__}."
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith(prefix) and vars(module).get("np") is self:
                module.np = numpy
        self.__dict__.update(numpy.__dict__)
        return getattr(numpy, name)

    def __repr__(self) -> str:
        return "<numpy, imported when first used>"


np = _Numpy()
