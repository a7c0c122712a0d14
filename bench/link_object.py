"""Link one large generated object: rtdyld against MCJIT and LLJIT on the same bytes.

The object has 50,000 relocations (PIC, small code model).  Each engine
links it in a fresh session once to warm up and then up to ``runs`` times;
the warm-up link is checked by calling ``bench_check`` and ``bench_pad_ok``
through it, against values worked out when the object was generated.
Medians are wall clock; "cpu ms" is this process's CPU time over the same
runs, steadier when other work competes for the machine.
"""

from __future__ import annotations

from . import report
from .gen import ENTRY, SEED_ARG, make
from .report import Row
from .session import Session

RELOCS = 50_000
RELOC_MODEL = "pic"
CODE_MODEL = "small"


def run(session: Session) -> list[Row]:
    gen = make(session.options.size(RELOCS), RELOC_MODEL, CODE_MODEL)
    rt = session.rtdyld(gen)
    peers = session.peers(gen)
    measured = [rt] + [m for m in peers.values() if m is not None]
    lines = [
        [
            m.engine,
            str(len(m.times)),
            report.timing(m),
            report.ms(m.best),
            report.ms(m.cpu_median),
            report.rate(m.relocs_per_second),
            report.ratio(rt, m),
            report.ratio(rt, m, cpu=True),
            m.check,
        ]
        for m in measured
    ]
    title = (
        f"link_object: {gen.relocs} relocations, {gen.units} functions, "
        f"{len(gen.data) / 2**20:.1f} MiB object ({RELOC_MODEL}/{CODE_MODEL})"
    )
    headers = ["engine", "runs", "median ms", "min ms", "cpu ms", "relocs/s", "rtdyld/engine", "(cpu)", "check"]
    print(report.table(headers, lines, title))
    values = {m.results[0] for m in measured}
    if len(values) == 1:
        print(f"{ENTRY}({SEED_ARG}) = {values.pop():#x} through every engine\n")
    else:
        results = ", ".join(f"{m.engine} {m.results[0]:#x}" for m in measured)
        print(f"{ENTRY}({SEED_ARG}) differs between engines: {results}\n")
    return [Row("link_object", f"{RELOC_MODEL}/{CODE_MODEL}", gen.relocs, rt, peers)]
