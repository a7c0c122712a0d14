"""Records stored field by field, without the dataclasses module.

The link cache stores :class:`~rtdyld.objfile.model.ObjectFile`,
``Section``, ``Group`` and :class:`~rtdyld.symbols.SymbolDef` field by
field.  Each lists its fields in ``FIELDS``, in the order its ``__init__``
takes them, and this module does for them what ``dataclasses.fields``,
``replace`` and the generated ``__repr__`` did.  They were dataclasses for
that alone, but importing dataclasses imports inspect (and with it ast, dis
and tokenize): ~10 ms of every new process, about a sixth of what a warm
``rtdyld run`` adds to the interpreter's own start-up.
"""

from __future__ import annotations


def is_record(value) -> bool:
    """Whether ``value`` is an instance (not a class) of a record class."""
    return not isinstance(value, type) and hasattr(type(value), "FIELDS")


def replace(record, **changes):
    """A new record of ``record``'s class with its fields, but for ``changes``."""
    cls = type(record)
    unknown = changes.keys() - set(cls.FIELDS)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {min(unknown)!r}")
    return cls(**{f: changes[f] if f in changes else getattr(record, f) for f in cls.FIELDS})


def field_repr(record) -> str:
    """The class and each field, as a dataclass's ``__repr__`` says them."""
    return f"{type(record).__qualname__}({', '.join(f'{f}={getattr(record, f)!r}' for f in type(record).FIELDS)})"
