"""Plain-text tables and the summary rows every benchmark hands back."""

from __future__ import annotations

from dataclasses import dataclass, field

from .timing import Measurement

MISSING = "—"


@dataclass
class Row:
    """One case of one benchmark: rtdyld and each peer on the same input."""

    benchmark: str
    case: str
    relocs: int
    rtdyld: Measurement
    peers: dict[str, Measurement | None] = field(default_factory=dict)  # None: skipped


@dataclass
class Goal:
    """One of the performance goals, as one benchmark measured it."""

    goal: str  # the goal, in short
    case: str
    measured: str
    met: bool | None  # None: a figure to read, not one with a threshold


def peer_ratios(rtdyld: Measurement, peers: dict[str, Measurement | None], main: str) -> tuple[float | None, str]:
    """rtdyld's median over peer ``main``'s, to the two places shown (what a
    goal is judged on), and as text with the other peers' ratios; ``(None,
    why)`` when there is no ratio to judge: ``main`` was skipped or failed,
    either linked wrongly, or either has no timed run."""
    peer = peers.get(main)
    if ratio(rtdyld, peer) == MISSING:
        if not rtdyld.ok:
            return None, "rtdyld linked wrongly"
        if peer is None:
            return None, f"{main} not measured (see the notes)"
        return None, f"{main} linked wrongly" if not peer.ok else "no timed runs"
    others = [f"{name} {ratio(rtdyld, m)}x" for name, m in peers.items() if name != main and ratio(rtdyld, m) != MISSING]
    r = round(rtdyld.median / peer.median, 2)
    return r, f"{r:.2f}x {main}" + (f" ({', '.join(others)})" if others else "")


def within(ratio: float, goal: float) -> bool:
    """Whether ``ratio`` meets an at-most ``goal`` as it is shown, to two places
    (how every ratio goal is judged)."""
    return round(ratio, 2) <= goal


def goals(items: list[Goal]) -> str:
    """The goals' verdicts, one line per goal and case (MISSING: no verdict)."""
    lines = [[g.goal, g.case, g.measured, MISSING if g.met is None else ("met" if g.met else "MISSED")] for g in items]
    return table(["goal", "case", "measured", "verdict"], lines,
                 f"Goals (judged on the figures as the tables above show them; {MISSING}: no verdict)", left=3)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def ratio(rtdyld: Measurement, peer: Measurement | None, cpu: bool = False) -> str:
    """rtdyld's median (wall clock, or CPU time) over the peer's: above 1 means rtdyld is slower."""
    if peer is None or not (peer.ok and rtdyld.ok and peer.times and rtdyld.times):
        return MISSING
    if cpu:
        return f"{rtdyld.cpu_median / peer.cpu_median:.2f}"
    return f"{rtdyld.median / peer.median:.2f}"


def rate(per_second: float) -> str:
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f}M"
    return f"{per_second / 1e3:.0f}k"


def timing(m: Measurement | None) -> str:
    """A median in ms, or why there is none."""
    if m is None:
        return MISSING
    if not m.ok:
        return "WRONG"
    if not m.times:  # every run was discarded (a warm run that missed the cache, say)
        return MISSING
    return ms(m.median)


def table(headers: list[str], rows: list[list[str]], title: str = "", left: int = 1) -> str:
    """Columns sized to their widest cell; the first ``left`` columns left-aligned, the rest right."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells) -> str:
        out = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = [line(headers), rule] + [line(r) for r in rows]
    return "\n".join(([title] if title else []) + body)


def summary(rows: list[Row], peer_names: list[str]) -> str:
    """One line per case: rtdyld's median, each peer's, and rtdyld/peer."""
    headers = ["benchmark", "case", "relocs", "rtdyld ms"]
    for name in peer_names:
        headers += [f"{name} ms", f"rtdyld/{name}"]
    lines = []
    for r in rows:
        cells = [r.benchmark, r.case, str(r.relocs), timing(r.rtdyld)]
        for name in peer_names:
            peer = r.peers.get(name)
            cells += [timing(peer), ratio(r.rtdyld, peer)]
        lines.append(cells)
    return table(headers, lines, "Summary (medians; rtdyld/peer > 1 means rtdyld is slower)", left=2)
