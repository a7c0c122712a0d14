"""What a batch link produces: the linked batch and its records.

Apart from :mod:`rtdyld.batch`, which makes them, so that a batch restored
from the link cache (:mod:`rtdyld.linkcache.plan`) is made without loading
the linker's phases or numpy.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing at start-up
if TYPE_CHECKING:
    from . import unwind
    from .definitions import BatchDefinitions
    from .objfile.model import ObjectFile
    from .symbols import SymbolDef

GOT_SYMBOL = "_GLOBAL_OFFSET_TABLE_"
STUB_SIZE = 8  # jmp *slot(%rip); int3; int3


# The records below are plain classes, not dataclasses: decorating a class
# execs generated code, ~0.5 ms of every new process's start-up per class, and
# nothing compares or prints them.


class External:
    """A target outside the batch: an earlier batch, a user definition, the host."""

    def __init__(self, name: str, address: int, own_source: str, size: int = 0,
                 definition: SymbolDef | None = None) -> None:
        self.name = name
        self.address = address
        # Where it came from when there is no definition ("weak undefined", the batch's GOT).
        self.own_source = own_source
        self.size = size
        self.definition = definition  # for batches depending on earlier ones

    @property
    def source(self) -> str:
        """Where it came from, for traces and errors.  A process symbol's
        library is looked up only when this is read (see rtdyld.symbols)."""
        return self.definition.origin if self.definition is not None else self.own_source


class PlacedSection:
    __slots__ = ("address", "index", "obj", "segment", "work")  # one per section per link: a quarter cheaper to build

    def __init__(self, obj: int, index: int, segment: str, address: int = 0, work: int = 0) -> None:
        self.obj = obj  # index into LinkedBatch.objects
        self.index = index  # index into that object's sections
        self.segment = segment
        self.address = address  # target address
        self.work = work  # offset into the allocation's working memory


class LinkedBatch:
    """A linked, not yet published batch; ``tables`` is what the fixup used."""

    def __init__(
        self,
        objects: list[ObjectFile],
        allocation: object,
        sections: list[PlacedSection],
        definitions: BatchDefinitions,  # the link cache rebuilds one too (rtdyld.linkcache.definitions)
        externals: list[External],
        got: dict[int, int],  # canonical target id -> slot address
        stubs: dict[int, int],  # canonical target id -> stub address
        got_base: int,
        tables: dict | None = None,
        initializers: list | None = None,
        finalizers: list | None = None,
        kept_groups: set[str] | None = None,
        segments: dict | None = None,
        pulls: dict | None = None,  # id(object) -> archives.Pull
        eh_frame: unwind.EhFrameImage | None = None,  # registered with the unwinder when published
        dso_handle: int = 0,  # the batch's private __dso_handle, 0 if nothing refers to it
        ifunc: object = None,  # ifunc.IfuncPlan when the batch defines IFUNC symbols it uses
        tls: object = None,  # tls.TlsPlan when the batch has thread-local storage
    ) -> None:
        self.objects = objects
        self.allocation = allocation
        self.sections = sections
        self.definitions = definitions
        self.externals = externals
        self.got = got
        self.stubs = stubs
        self.got_base = got_base
        self.tables = {} if tables is None else tables
        self.initializers = [] if initializers is None else initializers
        self.finalizers = [] if finalizers is None else finalizers
        self.kept_groups = set() if kept_groups is None else kept_groups
        self.segments = {} if segments is None else segments
        self.pulls = {} if pulls is None else pulls
        self.eh_frame = eh_frame
        self.dso_handle = dso_handle
        self.ifunc = ifunc
        self.tls = tls
