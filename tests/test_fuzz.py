"""Fuzzing: mutated real objects and archives link or fail with a LinkError.

Seeds are built at test time (gcc and llvmlite ELF objects, llvmlite Mach-O
objects, GNU/thin/SYM64/BSD archives); tests/fuzz_mutators.py mutates them
along their structure (truncation at every boundary, edge values in headers,
indices, offsets, sizes and counts, bit flips, overlapping copies) and
tests/fuzz_oracle.py links each mutant in a fresh session: success or a
LinkError subclass, never another exception, and the session's symbols,
allocations, reservations and mappings as before.  Hypothesis drives the
choices, derandomized so CI sees the same few thousand inputs every run.

Every input the long run (bench/fuzz_long.py) found crashing is kept in
tests/regressions/ and replayed here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_mutators import build_seeds, mutate
from fuzz_oracle import Oracle, OracleFailure
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdyld.errors import MalformedObjectError, UndefinedSymbolError
from rtdyld.linker import Linker
from rtdyld.objfile.archive import read_archive

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
REPO = Path(__file__).resolve().parent.parent


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    seeds = build_seeds(work)
    return seeds, Oracle(work)


def _of(fuzz, kind):
    seeds, oracle = fuzz
    return [s for s in seeds if s.kind == kind], oracle


def _run(seeds, oracle, index: int, rnd, whole: bool) -> str:
    seed = seeds[index % len(seeds)]
    data, ops = mutate(seed, rnd)
    try:
        return oracle.check(seed.kind, data, seed.kind == "archive" and (whole or seed.whole_only))
    except OracleFailure as e:
        raise AssertionError(f"{seed.name} mutated by {ops}: {e}") from e


def test_seeds_link(fuzz):
    """The unmutated seeds link, so mutants get as far as relocation."""
    seeds, oracle = fuzz
    outcomes = {s.name: oracle.check(s.kind, s.data, s.whole_only) for s in seeds}
    # unsigned.o's 32-bit absolute reference cannot hold the dummy address.
    assert outcomes.pop("unsigned.o") == "RelocationOverflowError"
    assert set(outcomes.values()) == {"linked"}
    assert {s.kind for s in seeds} == {"elf", "macho", "archive"}


@pytest.mark.slow
@fuzz_settings(1200)
@given(index=st.integers(0, 1000), rnd=st.randoms(use_true_random=False))
def test_fuzz_elf(fuzz, index, rnd):
    seeds, oracle = _of(fuzz, "elf")
    _run(seeds, oracle, index, rnd, False)


@pytest.mark.slow
@fuzz_settings(700)
@given(index=st.integers(0, 1000), rnd=st.randoms(use_true_random=False))
def test_fuzz_macho(fuzz, index, rnd):
    seeds, oracle = _of(fuzz, "macho")
    _run(seeds, oracle, index, rnd, False)


@pytest.mark.slow
@fuzz_settings(700)
@given(index=st.integers(0, 1000), rnd=st.randoms(use_true_random=False), whole=st.booleans())
def test_fuzz_archive(fuzz, index, rnd, whole):
    seeds, oracle = _of(fuzz, "archive")
    _run(seeds, oracle, index, rnd, whole)


def _regressions() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.bin"))


def test_regression_inputs_have_notes():
    """The replayed inputs are in the tree (not ignored as build output), each with its note."""
    inputs = _regressions()
    assert len(inputs) >= 5
    assert all(p.with_suffix(".txt").read_text().startswith("example ") for p in inputs)


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_regression(fuzz, path):
    """Inputs that once crashed: now linked or rejected with a LinkError."""
    _, oracle = fuzz
    kind = path.name.split("-", 1)[0]
    whole = path.name.startswith("archive-whole-")
    note = path.with_suffix(".txt").read_text()
    try:
        oracle.check(kind, path.read_bytes(), whole)
    except OracleFailure as e:
        raise AssertionError(f"{path.name} ({note.splitlines()[0]}): {e}") from e


def _harness(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """bench/fuzz_long.py run with ``args``, one child at a time, from ``tmp_path``."""
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "fuzz_long.py"), *args, "--jobs", "1"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=600,
    )


def test_long_harness_runs_and_counts(tmp_path):
    """bench/fuzz_long.py runs examples in children and reports the count."""
    run = _harness(tmp_path, "--examples", "60", "--regressions", str(tmp_path / "saved"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "examples run: 60 " in run.stdout
    assert "crashes or wrong exceptions found: 0" in run.stdout
    assert not (tmp_path / "saved").exists()


def test_long_harness_saves_crashing_and_hanging_inputs(tmp_path):
    """A child killed by a signal or gone quiet is detected, its input saved with
    a note, and the run goes on with the next example."""
    saved = tmp_path / "saved"
    run = _harness(tmp_path, "--examples", "12", "--crash-at", "3", "--hang-at", "7", "--timeout", "5",
                   "--regressions", str(saved))
    assert run.returncode == 1, run.stdout + run.stderr
    assert "examples run: 12 " in run.stdout
    assert "crashes or wrong exceptions found: 2" in run.stdout
    notes = sorted(p.read_text() for p in saved.glob("*.txt"))
    assert len(notes) == 2 and len(list(saved.glob("*.bin"))) == 2
    assert any(n.startswith("example 3 of run seed 0") and "status -11" in n for n in notes)
    assert any(n.startswith("example 7 of run seed 0") and "no progress for 5 s (hang)" in n for n in notes)


# --- the crashes the fuzzer found, pinned with their messages ----------------------


def test_non_utf8_symbol_name_is_looked_up_as_bytes(build):
    """A name that is not UTF-8 reached dlsym as a str that could not be encoded."""
    obj = build.cc_text(
        "extern int no_such_symbol_zz(void);\nint f(void) { return no_such_symbol_zz(); }\n",
        "-O2",
        "-fPIC",
        stem="badname",
    ).read_bytes()
    assert obj.count(b"no_such_symbol_zz") == 1
    data = obj.replace(b"no_such_symbol_zz", b"no_such_symbol\xff\xfe\x80")
    ln = Linker(run_initializers=False)
    ln.add_object(data, name="badname.o")
    with pytest.raises(UndefinedSymbolError) as exc:
        ln.finalize()
    assert list(exc.value.missing) == ["no_such_symbol\udcff\udcfe\udc80"]
    assert "badname.o: .text" in str(exc.value)


def test_malformed_archive_file_raises_malformed_object_error(tmp_path, fuzz):
    """Rejecting a mapped archive used to fail closing the mapping (BufferError)."""
    seeds, _ = fuzz
    data = bytearray(next(s for s in seeds if s.name == "seed-gnu.a").data)
    data[0x48:0x4C] = b"\xff\xff\xff\xf0"  # the first member offset of the index
    path = tmp_path / "badindex.a"
    path.write_bytes(bytes(data))
    with pytest.raises(
        MalformedObjectError,
        match=r"badindex\.a: symbol index at offset 0x8: the entry for '\w+' "
        r"points at offset 0xfffffff0, where no member header starts",
    ):
        read_archive(path)


def test_thin_member_name_with_nul(tmp_path, fuzz):
    seeds, _ = fuzz
    thin = next(s for s in seeds if s.name == "seed-thin.a").data
    at = thin.index(b"beta.o/")
    path = tmp_path / "nul.a"
    path.write_bytes(thin[:at] + b"be\0a.o/" + thin[at + 7 :])
    ar = read_archive(path)
    member = next(m for m in ar.members if m.name.startswith("be"))
    with pytest.raises(
        MalformedObjectError,
        match=r"^nul\.a\(be\x00a\.o\): thin archive member name 'be\\x00a\.o' "
        r"contains a NUL byte$",
    ):
        _ = member.data
    ar.close()


def test_long_harness_gives_a_slow_starting_child_time_before_calling_it_hung(tmp_path):
    """--timeout bounds an example, not a child's start (imports, seeds), which
    on a busy machine may take longer."""
    run = _harness(tmp_path, "--examples", "4", "--timeout", "1", "--start-delay", "2",
                   "--regressions", str(tmp_path / "saved"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "examples run: 4 " in run.stdout
    assert "crashes or wrong exceptions found: 0" in run.stdout
