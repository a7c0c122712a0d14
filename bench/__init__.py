"""Benchmarks: rtdyld against llvmlite's JITs linking the same bytes in one process.

``python -m bench`` runs every benchmark in :data:`BENCHMARKS` and prints a
summary of medians and ratios (rtdyld/peer); ``--quick`` runs fewer sizes.
A benchmark is a module here with ``run(session) -> list[bench.report.Row]``
that prints its own tables; adding one is that module plus its name below.
"""

BENCHMARKS = (
    "link_object",
    "scaling",
    "cold_link",
    "repeated",
    "startup",
    "soak",
    "stubs",
    "warm_link",
)
