"""Long fuzz run: mutated objects and archives, crashes caught in child processes.

The seeds and mutators are those of tests/test_fuzz.py (tests/fuzz_mutators.py);
the oracle is tests/fuzz_oracle.py: every input links or raises a LinkError,
and the session is unchanged afterwards.  Children each run a batch of
examples, reporting after each one.  The parent notices a child that dies by
a signal, or goes quiet for ``--timeout`` seconds (a hang), and saves the
input it was on; a child saves any input that broke the oracle itself.
Saved inputs land in tests/regressions/ (name: kind and content hash) with a
note on where they came from, and tests/test_fuzz.py replays every one.

Example ``i`` of a run with ``--seed S`` is always the same input, so a
failure can be regenerated with ``--start i --examples 1``.

    python bench/fuzz_long.py [--examples 100000] [--jobs 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
REGRESSIONS = TESTS / "regressions"
BATCH = 500  # examples per child
TIMEOUT = 30.0  # seconds without progress: a hang
# A child's start (interpreter, numpy, the seeds) is not an example: on a busy
# machine it can outlast a short --timeout, which would then lose the child's
# whole batch as a "hang" outside any example.
STARTUP_TIMEOUT = 120.0


def regression_name(kind: str, whole: bool, data: bytes) -> str:
    """File name of a saved input: tests/test_fuzz.py reads kind and mode back from it."""
    digest = hashlib.sha256(data).hexdigest()[:12]
    mode = "whole-" if whole else ""
    return f"{kind}-{mode}{digest}.bin"  # .bin: .o and .a files are not committed


def save_regression(kind: str, whole: bool, data: bytes, note: str, directory: Path = REGRESSIONS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / regression_name(kind, whole, data)
    path.write_bytes(data)
    path.with_suffix(".txt").write_text(note.rstrip() + "\n")
    return path


def example(seeds, run_seed: int, i: int, max_ops: int = 4):
    """The input of example ``i``: (seed, data, whole, operations)."""
    from fuzz_mutators import mutate

    rng = random.Random(f"{run_seed}:{i}")
    seed = seeds[rng.randrange(len(seeds))]
    whole = seed.kind == "archive" and (rng.random() < 0.5 or seed.whole_only)
    data, ops = mutate(seed, rng, max_ops)
    return seed, data, whole, ops


# --- child ----------------------------------------------------------------------------


def child(args) -> int:
    sys.path.insert(0, str(TESTS))
    from fuzz_mutators import load_seeds
    from fuzz_oracle import Oracle, OracleFailure

    seeds = load_seeds(Path(args.seeds))
    oracle = Oracle(Path(args.work))
    current = Path(args.work) / f"current-{os.getpid()}"
    time.sleep(args.start_delay)  # self-test: a slow start is not a hang
    out = sys.stdout
    for i in range(args.start, args.start + args.examples):
        seed, data, whole, ops = example(seeds, args.seed, i, args.max_ops)
        # Written before the link, so the parent can save it if we die.
        current.with_suffix(".bin").write_bytes(data)
        current.with_suffix(".json").write_text(
            json.dumps({"i": i, "kind": seed.kind, "whole": whole, "seed": seed.name, "ops": ops})
        )
        print(f"start {i}", file=out, flush=True)
        if i == args.crash_at:  # self-test of the crash and hang detection
            os.kill(os.getpid(), signal.SIGSEGV)
        if i == args.hang_at:
            time.sleep(3600)
        try:
            outcome = oracle.check(seed.kind, data, whole)
        except OracleFailure as e:
            note = f"example {i} of run seed {args.seed}: {seed.kind} seed {seed.name}, ops {ops}\n{e}"
            path = save_regression(seed.kind, whole, data, note, Path(args.regressions))
            print(f"fail {i} {path.name} {str(e).splitlines()[0][:200]}", file=out, flush=True)
            continue
        print(f"done {i} {outcome}", file=out, flush=True)
    return 0


# --- parent ---------------------------------------------------------------------------


class Run:
    def __init__(self, args, seeds_dir: Path, work: Path):
        self.args = args
        self.seeds_dir = seeds_dir
        self.work = work
        self.done = 0
        self.outcomes: dict[str, int] = {}
        self.failures: list[str] = []
        self.next_start = args.start
        self.end = args.start + args.examples

    def spawn(self, start: int, count: int) -> subprocess.Popen:
        cmd = [
            sys.executable,
            "-P",
            str(Path(__file__).resolve()),
            "--child",
            "--seeds",
            str(self.seeds_dir),
            "--work",
            str(self.work),
            "--seed",
            str(self.args.seed),
            "--start",
            str(start),
            "--examples",
            str(count),
            "--regressions",
            str(self.args.regressions),
            "--max-ops",
            str(self.args.max_ops),
            "--crash-at",
            str(self.args.crash_at),
            "--hang-at",
            str(self.args.hang_at),
            "--start-delay",
            str(self.args.start_delay),
        ]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, bufsize=1)

    def take_batch(self) -> tuple[int, int] | None:
        if self.next_start >= self.end:
            return None
        start, count = self.next_start, min(BATCH, self.end - self.next_start)
        self.next_start += count
        return start, count

    def run(self) -> int:
        live: dict[int, dict] = {}
        t0 = time.monotonic()
        last_print = t0
        while True:
            while len(live) < self.args.jobs:
                batch = self.take_batch()
                if batch is None:
                    break
                self._start(live, *batch)
            if not live:
                break
            fds = {c["proc"].stdout.fileno(): c for c in live.values()}
            ready, _, _ = select.select(list(fds), [], [], 1.0)
            now = time.monotonic()
            for fd in ready:
                c = fds[fd]
                line = c["proc"].stdout.readline()
                if line:
                    self._line(c, line.strip(), now)
                else:
                    self._ended(live, c)
            for c in list(live.values()):
                limit = self.args.timeout if c["started"] else max(self.args.timeout, STARTUP_TIMEOUT)
                if now - c["last"] > limit:
                    c["proc"].kill()
                    c["proc"].wait()
                    self._crashed(live, c, f"no progress for {limit:.0f} s (hang)")
            if now - last_print > 30:
                last_print = now
                rate = self.done / (now - t0)
                print(
                    f"[{now - t0:7.0f} s] {self.done} examples ({rate:.0f}/s), {len(self.failures)} failures",
                    flush=True,
                )
        elapsed = time.monotonic() - t0
        print(f"examples run: {self.done} in {elapsed:.0f} s")
        print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items(), key=lambda kv: -kv[1])))
        print(f"crashes or wrong exceptions found: {len(self.failures)}")
        for f in self.failures:
            print(f"  {f}")
        return 1 if self.failures else 0

    def _start(self, live, start: int, count: int) -> None:
        proc = self.spawn(start, count)
        live[proc.pid] = {"proc": proc, "start": start, "end": start + count, "current": None, "started": False,
                          "last": time.monotonic()}

    def _line(self, c, line: str, now: float) -> None:
        c["last"] = now
        word, _, rest = line.partition(" ")
        if word == "start":
            c["current"] = int(rest)
            c["started"] = True
        elif word == "done":
            c["current"] = None
            self.done += 1
            outcome = rest.split(" ", 1)[1]
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        elif word == "fail":
            c["current"] = None
            self.done += 1
            self.outcomes["FAILURE"] = self.outcomes.get("FAILURE", 0) + 1
            self.failures.append(rest)
            print(f"FAIL {rest}", flush=True)

    def _ended(self, live, c) -> None:
        proc = c["proc"]
        proc.wait()
        if proc.returncode == 0 and c["current"] is None:
            del live[proc.pid]
            return
        err = proc.stderr.read()[-2000:]
        self._crashed(live, c, f"child exited with status {proc.returncode}\n{err}")

    def _crashed(self, live, c, why: str) -> None:
        proc = c["proc"]
        del live[proc.pid]
        i = c["current"]
        if i is None:
            print(f"child {proc.pid} ended outside an example: {why}", flush=True)
            self.failures.append(f"child ended outside an example: {why.splitlines()[0]}")
            return
        base = self.work / f"current-{proc.pid}"
        data = base.with_suffix(".bin").read_bytes()
        meta = json.loads(base.with_suffix(".json").read_text())
        note = f"example {i} of run seed {self.args.seed}: {meta['kind']} seed {meta['seed']}, ops {meta['ops']}\n{why}"
        path = save_regression(meta["kind"], meta["whole"], data, note, Path(self.args.regressions))
        self.done += 1
        self.outcomes["CRASH"] = self.outcomes.get("CRASH", 0) + 1
        self.failures.append(f"{i} {path.name} {why.splitlines()[0]}")
        print(f"CRASH {i} saved as {path.name}: {why.splitlines()[0]}", flush=True)
        if i + 1 < c["end"]:
            self._start(live, i + 1, c["end"] - i - 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=100_000)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="run seed: example i of a seed is always the same")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--max-ops", type=int, default=4, help="most mutations applied to one input")
    p.add_argument("--timeout", type=float, default=TIMEOUT)
    p.add_argument("--regressions", default=str(REGRESSIONS))
    p.add_argument("--seeds", help="directory of prepared seeds (default: built now)")
    p.add_argument("--work", help="working directory (default: a temporary one)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--crash-at", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--hang-at", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--start-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    sys.path.insert(0, str(TESTS))
    from fuzz_mutators import build_seeds, save_seeds

    with tempfile.TemporaryDirectory(prefix="rtdyld-fuzz-") as tmp:
        work = Path(args.work) if args.work else Path(tmp) / "work"
        seeds_dir = Path(args.seeds) if args.seeds else Path(tmp) / "seeds"
        if not args.seeds:
            save_seeds(build_seeds(work), seeds_dir)
        elif not (work / "driver.o").exists():
            build_seeds(work)
        return Run(args, seeds_dir, work).run()


if __name__ == "__main__":
    sys.exit(main())
