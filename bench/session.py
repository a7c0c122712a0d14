"""What a benchmark module gets to work with: options, engines, notes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .engines import Engine, Rtdyld, peers
from .gen import MIN_RELOCS, Generated
from .report import Goal
from .timing import EngineFailed, Measurement, measure


@dataclass
class Options:
    quick: bool = False
    runs: int = 7  # timed runs per engine and case, after one warm-up
    budget: float = 4.0  # seconds of timed runs per engine and case; big cases get fewer runs
    max_relocs: int | None = None  # caps every size (for smoke tests)

    def size(self, relocs: int) -> int:
        if self.max_relocs is None:
            return relocs
        return max(MIN_RELOCS, min(relocs, self.max_relocs))

    def sizes(self, sizes: tuple[int, ...]) -> list[int]:
        """``sizes`` capped by ``max_relocs``, duplicates dropped, in order."""
        return list(dict.fromkeys(self.size(n) for n in sizes))


@dataclass
class Session:
    """Shared by every benchmark of one ``python -m bench`` run."""

    options: Options
    notes: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # rtdyld links that gave wrong results
    goals: list[Goal] = field(default_factory=list)  # each goal's verdict, as the benchmarks measured it
    engines: list[Engine] = field(default_factory=peers)

    @property
    def peer_names(self) -> list[str]:
        return [e.name for e in self.engines]

    def goal(self, goal: str, case: str, measured: str, met: bool | None) -> None:
        self.goals.append(Goal(goal, case, measured, met))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def rtdyld(self, gen: Generated) -> Measurement:
        m = measure(Rtdyld(), gen, self.options.runs, self.options.budget)
        if not m.ok:
            self.wrong.append(f"{gen.name}: {m.check}")
        return m

    def peers(self, gen: Generated, names: tuple[str, ...] | None = None) -> dict[str, Measurement | None]:
        """Each peer (or those named) on ``gen``; None where it is skipped, with a note saying why."""
        out: dict[str, Measurement | None] = {}
        for engine in self.engines:
            if names is not None and engine.name not in names:
                continue
            out[engine.name] = None
            reason = engine.unavailable()
            if reason:
                self.note(f"{engine.name} skipped: {reason}")
                continue
            try:
                m = measure(engine, gen, self.options.runs, self.options.budget)
            except EngineFailed as e:
                self.note(f"{engine.name} skipped on {gen.name}: it failed to link: {e}")
                continue
            if not m.ok:
                self.note(f"{engine.name} linked {gen.name} wrongly: {m.check}")
            out[engine.name] = m
        return out
