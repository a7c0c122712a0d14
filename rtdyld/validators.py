"""Validation hooks: look at a batch's final bytes before anything runs.

A validator is a callable taking a :class:`BatchView`.  It runs after every
relocation is applied and before the memory is made executable or any symbol
is published; raising rejects the batch, which is then abandoned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ValidationError
from .objfile.model import SectionFlags


@dataclass
class SectionView:
    object: str
    name: str
    address: int  # target address
    data: bytes  # final bytes (empty for zero-fill)
    executable: bool
    relocations: np.ndarray  # rows of the batch's relocation table patching this section


@dataclass
class BatchView:
    sections: list[SectionView]


def batch_view(linked) -> BatchView:
    mem = linked.allocation.memory
    tables = linked.tables
    if tables:
        # One sort splits the table by section (rows keep their order within one).
        relocs = tables["relocs"]
        order = np.argsort(relocs["section"], kind="stable")
        bounds = np.searchsorted(relocs["section"][order], np.arange(len(linked.sections) + 1)).tolist()
    views = []
    for gid, p in enumerate(linked.sections):
        obj = linked.objects[p.obj]
        s = obj.sections[p.index]
        zero = bool(s.flags & SectionFlags.ZERO_FILL)
        data = b"" if zero else bytes(mem[p.work : p.work + s.size])
        rows = relocs[order[bounds[gid] : bounds[gid + 1]]] if tables else np.zeros(0)
        views.append(SectionView(obj.name, s.name, p.address, data, bool(s.flags & SectionFlags.EXEC), rows))
    return BatchView(views)


def forbid_instructions(mnemonics):
    """A validator rejecting code that contains any of ``mnemonics``
    (e.g. ``{"syscall", "int3"}``), decoded with capstone."""
    banned = {m.lower() for m in mnemonics}

    def validate(view: BatchView) -> None:
        import capstone

        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.skipdata = True
        for s in view.sections:
            if not s.executable:
                continue
            for insn in md.disasm(s.data, s.address):
                if insn.mnemonic in banned:
                    off = insn.address - s.address
                    text = f"{insn.mnemonic} {insn.op_str}".strip()
                    raise ValidationError(
                        f"{s.object}: {s.name}+{off:#x}: forbidden instruction '{text}' "
                        f"({insn.bytes.hex(' ')}) at {insn.address:#x}"
                    )

    validate.__name__ = f"forbid_instructions({sorted(banned)})"
    return validate
