"""Object files as cache entries, generically over the model's records.

An :class:`~rtdyld.objfile.model.ObjectFile` is written field by field, so a
reader that adds or changes fields needs no change here: numpy arrays and
byte strings become blobs, lists of strings one packed blob, records
(sections, groups; :mod:`rtdyld.fieldwise`) JSON objects tagged with their class, enums their integer
values — restored to the enum the field is annotated with.  A value of any
other kind makes the object uncacheable rather than half stored.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from operator import attrgetter

from .. import fieldwise
from ..lazy_numpy import np
from ..objfile import model
from .placed import made_from

_SEP = b"\0"


class Uncacheable(Exception):
    """A value the cache format cannot hold; the caller does not cache."""


def encode(value, blobs: list) -> object:
    """A JSON-able form of ``value``; arrays and bytes are added to ``blobs``."""
    if value is None or isinstance(value, (bool, str, float)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, np.ndarray):
        return {"$a": _add(blobs, value)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$b": _add(blobs, value)}
    if fieldwise.is_record(value):
        cls = _model_class(value)
        if cls is None:
            raise Uncacheable(f"{type(value).__name__} is not a model class")
        return {"$d": cls.__name__, **{f: encode(getattr(value, f), blobs) for f in value.FIELDS}}
    if isinstance(value, (list, tuple)):
        kinds = set(map(type, value))
        if len(value) > 1 and len(kinds) == 1 and _model_class(value[0]) is not None:
            # Many records of one class (sections): a column per field.
            cls = _model_class(value[0])
            columns = {f: [getattr(v, f) for v in value] for f in cls.FIELDS}
            return {"$c": cls.__name__, "n": len(value), "cols": encode_columns(columns, blobs)}
        if kinds == {str}:
            raw = [v.encode("utf-8", "surrogateescape") for v in value]
            if any(_SEP in r for r in raw):
                raise Uncacheable("a string holds a NUL byte")
            return {"$s": _add(blobs, _SEP.join(raw)), "n": len(raw)}
        return [encode(v, blobs) for v in value]
    if isinstance(value, Mapping):
        return {"$m": [encode(list(value.keys()), blobs), encode(list(value.values()), blobs)]}
    raise Uncacheable(f"cannot store a {type(value).__name__}")


def decode(doc, blobs: list):
    """The value :func:`encode` made ``doc`` from; ``blobs`` in the order added."""
    if isinstance(doc, list):
        return [decode(v, blobs) for v in doc]
    if not isinstance(doc, dict):
        return doc
    if "$a" in doc:
        return _blob(blobs, doc["$a"])
    if "$b" in doc:
        return _blob(blobs, doc["$b"])
    if "$s" in doc:
        if doc["n"] == 0:
            return []
        return bytes(blobs[doc["$s"]]).decode("utf-8", "surrogateescape").split("\0")
    if "$m" in doc:
        keys, values = doc["$m"]
        return dict(zip(_plain_list(decode(keys, blobs)), _plain_list(decode(values, blobs)), strict=True))
    if "$c" in doc:
        cls = _named_class(doc["$c"])
        kinds = enum_fields(cls)
        columns = decode_columns(doc["cols"], blobs)
        for name, enum in kinds.items():
            if name in columns:
                columns[name] = [v if v is None else enum(v) for v in columns[name]]
        names = list(columns)
        if any(len(c) != doc["n"] for c in columns.values()):
            raise ValueError(f"{doc['$c']} columns of unequal length")
        return [cls(**dict(zip(names, row))) for row in zip(*columns.values())]
    cls = _named_class(doc["$d"])
    kinds = enum_fields(cls)
    args = {}
    for k, v in doc.items():
        if k == "$d":
            continue
        v = decode(v, blobs)
        enum = kinds.get(k)
        if enum is not None and v is not None:
            v = enum(v)
        args[k] = v
    return cls(**args)


def _blob(blobs: list, i: int):
    # A negative index would pick another blob from the end.
    if not 0 <= i < len(blobs):
        raise IndexError(f"blob {i!r} of {len(blobs)}")
    return blobs[i]


def _named_class(name: str) -> type:
    """The model record class called ``name``, never another attribute of the model module."""
    cls = getattr(model, name, None) if type(name) is str else None
    if not (isinstance(cls, type) and hasattr(cls, "FIELDS")):
        raise ValueError(f"{name!r} is not a model class")
    return cls


def _model_class(value) -> type | None:
    """The model record class ``value`` is an instance of (also for a LazyObject
    standing in for an ObjectFile), or None."""
    if not fieldwise.is_record(value):
        return None
    return next((c for c in type(value).__mro__ if getattr(model, c.__name__, None) is c), None)


def _plain_list(v) -> list:
    return v.tolist() if isinstance(v, np.ndarray) else v


def _add(blobs: list, value) -> int:
    blobs.append(value)
    return len(blobs) - 1


def enum_fields(cls) -> dict[str, type]:
    """The fields of a record class that hold enums, and their enums (the
    model says which: reading its annotations would cost a new process ~1 ms)."""
    return getattr(cls, "ENUM_FIELDS", _NONE)


_NONE: dict[str, type] = {}


def named(blobs: list, prefix: str) -> dict:
    """``blobs`` under the names :func:`unnamed` reads them back from."""
    return {f"{prefix}{i}": b for i, b in enumerate(blobs)}


def unnamed(blobs: dict, prefix: str, count: int) -> list:
    return [blobs[f"{prefix}{i}"] for i in range(count)]


def object_doc(obj: model.ObjectFile, blobs: list) -> dict:
    """An object's tables, without its display name (that is the caller's)."""
    doc = encode(obj, blobs)
    doc.pop("name", None)
    return doc


def object_from_doc(doc: dict, blobs: list, name: str) -> model.ObjectFile:
    """The object :func:`object_doc` made ``doc`` from, called ``name``; raises
    ValueError (or another exception of decoding) unless its tables hold
    together as a reader makes them (:func:`check_tables`)."""
    obj = decode({**doc, "name": name}, blobs)
    check_tables(obj)
    return obj


_INT, _SECTION, _FLAGS, _ROLE = {int}, {model.Section}, {model.SectionFlags}, {model.SectionRole}


def check_tables(obj) -> None:
    """Raise TypeError unless ``obj`` is an ObjectFile, ValueError unless its
    tables refer only within themselves, as a reader's checks leave them:
    every symbol in a section of the object (or one of the ``SEC_*``
    values), every relocation patching a field inside a section and naming
    symbols of the table.  An entry whose checksum holds may still hold
    tables no reader made; the link indexes with these numbers unchecked.
    Column by column, in C where it can be: an object may have thousands of
    sections."""
    if not isinstance(obj, model.ObjectFile):
        raise TypeError(f"{type(obj).__name__} is not an object")
    if type(obj.format) is not str or type(obj.symbol_prefix) is not str or type(obj.sections) is not list \
            or type(obj.names) is not list or type(obj.groups) is not list:
        raise ValueError("object fields of the wrong type")
    sections = obj.sections
    if sections:
        if set(map(type, sections)) != _SECTION:
            raise ValueError("a section that is not one")
        name, data, size, align, flags, role, _priority, group, index = (list(map(attrgetter(f), sections))
                                                                         for f in model.Section.FIELDS)
        "".join(name)  # a TypeError unless every one is a str
        group = [g for g in group if g is not None]
        if not (set(map(type, size)) == set(map(type, align)) == set(map(type, index)) == _INT
                and set(map(type, flags)) == _FLAGS and set(map(type, role)) == _ROLE
                and min(size) >= 0 and max(size) < 1 << 62 and min(align) >= 0
                and (not group or (set(map(type, group)) == _INT and min(group) >= 0
                                   and max(group) < len(obj.groups)))):
            raise ValueError("a section field of the wrong type or out of range")
        length = np.fromiter(map(len, data), np.int64, len(data))
        if np.any((length != 0) & (length != np.array(size, dtype=np.int64))):
            raise ValueError("section data that is neither empty nor the section's size")
    for g in obj.groups:
        if not isinstance(g, model.Group) or type(g.signature) is not str \
                or any(type(i) is not int or not 0 <= i < len(sections) for i in g.sections):
            raise ValueError("a COMDAT group of the wrong shape")
    syms, relocs = obj.symbols, obj.relocs
    if not (isinstance(syms, np.ndarray) and syms.dtype == model.SYM_DTYPE and syms.ndim == 1
            and isinstance(relocs, np.ndarray) and relocs.dtype == model.RELOC_DTYPE and relocs.ndim == 1):
        raise ValueError("symbol or relocation table of the wrong type")
    if len(obj.names) != len(syms):
        raise ValueError("symbol names that do not match the symbol table")
    "".join(obj.names)  # a TypeError unless every one is a str
    if len(syms) and (syms["section"].min() < model.SEC_DISCARDED or syms["section"].max() >= len(sections)):
        raise ValueError("a symbol in no section of the object")
    if len(relocs):
        # WIDTH is made with numpy when first imported: here, not with the
        # module, which a warm link loads without reading any object's tables.
        from ..x86_64.edges import WIDTH

        sec, kind = relocs["section"], relocs["kind"]
        if sec.min() < 0 or sec.max() >= len(sections) or kind.max() >= len(WIDTH):
            raise ValueError("a relocation of no section or of an unknown kind")
        sizes = np.array([s.size for s in sections], dtype=np.uint64)
        if np.any(relocs["offset"] > sizes[sec] - WIDTH[kind].astype(np.uint64)) or np.any(WIDTH[kind] > sizes[sec]):
            raise ValueError("a relocation patching a field outside its section")
        sym, sym2 = relocs["sym"], relocs["sym2"]
        if sym.min() < 0 or sym.max() >= len(syms) or sym2.min() < -1 or sym2.max() >= len(syms):
            raise ValueError("a relocation naming no symbol of the table")


def skeleton(obj: model.ObjectFile) -> model.ObjectFile:
    """``obj`` with only what a linked batch keeps of an archive member after a
    warm link: its name and its sections' names, sizes and flags (with no
    relocations left, no names of their types either)."""
    return fieldwise.replace(
        obj,
        sections=[fieldwise.replace(s, data=b"") for s in obj.sections],
        symbols=obj.symbols[:0],
        names=[],
        relocs=obj.relocs[:0],
        groups=[],
        rtype_names={},
    )


class LazyObject(model.ObjectFile):
    """An :class:`ObjectFile` known by name, its other fields decoded on first
    use: a warm link keeps the archive members it pulled only for the names
    and section lists that maps and listings may ask for."""

    @classmethod
    def deferred(cls, name: str, load, files: list[str] | None = None) -> LazyObject:
        """An object called ``name`` whose other fields ``load()`` makes; with
        ``files``, those of the cache entry whose part ``load()`` decodes,
        any failure but a LinkError is its CorruptCacheEntryError
        (:func:`.placed.corrupt`)."""
        self = cls.__new__(cls)
        self.name = name
        self._load = load if files is None else functools.partial(_member_from_entry, name, load, files)
        return self

    def __getattr__(self, attr: str):
        if attr.startswith("__"):  # a protocol probe (copy, pickle): no field, and no reason to load
            raise AttributeError(attr)
        with _loading:
            load = self.__dict__.get("_load")
            if load is not None:
                self.__dict__["_load"] = None  # (a read from within the load finds no loader, not itself)
                try:
                    full = load()
                except BaseException:
                    # Kept: a load that fails fails again, with its own error, when next read.
                    self.__dict__["_load"] = load
                    raise
                for f in full.FIELDS:
                    if f != "name":
                        self.__dict__[f] = getattr(full, f)
                del self.__dict__["_load"]
            elif attr not in self.__dict__:  # (made by another thread meanwhile, or no such field)
                raise AttributeError(attr)
        return getattr(self, attr)


def _member_from_entry(name: str, load, files: list[str]) -> model.ObjectFile:
    return made_from(files, f"the tables of {name}", load)


# Held while a LazyObject's fields are made: a thread reading one meanwhile
# waits for them rather than finding neither them nor the loader.  Re-entrant:
# a load may read another lazy object.
_loading = threading.RLock()


def encode_columns(columns: dict[str, list], blobs: list) -> dict:
    """Table columns as compactly as :func:`encode` allows: the integer columns
    together as one 2-D array (one blob to read back, one ``tolist``), string
    columns as one packed blob each, anything else as JSON."""
    out = {}
    ints = []
    for name, col in columns.items():
        kinds = set(map(type, col))
        if kinds and all(issubclass(k, int) and k is not bool for k in kinds):
            ints.append(name)
        else:
            out[name] = encode(list(col), blobs)
    if ints:
        out[_INTS] = {"names": ints, "rows": encode(np.array([columns[n] for n in ints], dtype=np.int64), blobs)}
    return out


_INTS = "$ints"  # not a field name: those are identifiers


def decode_columns(doc: dict, blobs: list) -> dict[str, list]:
    out = {}
    for name, value in doc.items():
        if name == _INTS:
            rows = decode(value["rows"], blobs)
            if rows.ndim != 2 or len(rows) != len(value["names"]):
                raise ValueError("integer columns of the wrong shape")
            out.update(zip(value["names"], rows.tolist()))
            continue
        v = decode(value, blobs)
        out[name] = v.tolist() if isinstance(v, np.ndarray) else v
    return out
