"""What importing rtdyld costs: the linker loads on first use, optional parts only when used."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest
from fixtures_build import REPO


def _child(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120).stdout


def test_import_rtdyld_loads_the_linker_on_first_use():
    out = _child(
        "import sys, rtdyld\n"
        "print('numpy' in sys.modules, 'rtdyld.linker' in sys.modules)\n"
        "from rtdyld import Linker, Handle, Dylib, LibraryNotFoundError, LinkError\n"
        "print(Linker.__module__, Handle.__module__, Dylib.__module__, issubclass(LibraryNotFoundError, LinkError))\n"
        "print(rtdyld.Linker is Linker, 'rtdyld.cache' in sys.modules, rtdyld.ObjectCache.__module__)\n"
        "print(sorted(set(rtdyld.__all__) - set(dir(rtdyld))))\n"
    )
    assert out.splitlines() == [
        "False False",
        "rtdyld.linker rtdyld.linker rtdyld.symbols True",
        "True False rtdyld.cache",
        "[]",
    ]


def test_unknown_attribute_is_an_attribute_error():
    import rtdyld

    with pytest.raises(AttributeError, match="has no attribute 'NoSuchThing'"):
        rtdyld.NoSuchThing  # noqa: B018
    assert not hasattr(rtdyld, "no_such_module")


def test_link_cache_environment_variable_is_the_link_caches():
    from rtdyld import link_cache_setting, linkcache

    assert link_cache_setting.ENV == linkcache.ENV


def test_link_cache_opened_from_the_environment_only_when_set(tmp_path, monkeypatch):
    from rtdyld import link_cache_setting, linkcache

    monkeypatch.delenv(link_cache_setting.ENV, raising=False)
    assert link_cache_setting.open_link_cache(None) is None
    monkeypatch.setenv(link_cache_setting.ENV, "")
    assert link_cache_setting.open_link_cache(None) is None
    monkeypatch.setenv(link_cache_setting.ENV, str(tmp_path / "env"))
    assert link_cache_setting.open_link_cache(False) is None
    from_env = link_cache_setting.open_link_cache(None)
    assert isinstance(from_env, linkcache.LinkCache) and from_env.directory == str(tmp_path / "env")
    given = link_cache_setting.open_link_cache(str(tmp_path / "arg"))
    assert given.directory == str(tmp_path / "arg")
    assert link_cache_setting.open_link_cache(given) is given


def test_a_link_cache_stores_and_reuses_a_batch_without_numpy_ma(build, tmp_path):
    """numpy.ma (about 10 ms to import) is needed by neither opening a cache,
    storing a batch nor linking from it."""
    obj = build.cc_text("int answer(void) { return 42; }\nint (*pick)(void) = answer;\n", "-O2", "-fPIC",
                        stem="cached_answer")
    code = (
        "import sys\n"
        "from rtdyld import Linker\n"
        "for _ in range(2):\n"
        f"    ln = Linker(link_cache={str(tmp_path / 'cache')!r})\n"
        f"    ln.add_object({str(obj)!r})\n"
        "    ln.finalize()\n"
        "    print(ln.function('answer', 'int(void)')(), ln.link_cache.stats['batches'], 'numpy.ma' in sys.modules)\n"
        "    ln.close()\n"
    )
    first, second = _child(code).splitlines()
    assert first.startswith("42 ") and "'stores': 1" in first and first.endswith(" False")
    assert second.startswith("42 ") and "'hits': 1" in second and second.endswith(" False")


def test_rtdyld_run_from_the_link_cache_does_not_import_numpy(build, tmp_path):
    """A batch restored from the link cache with few residual fixups is written
    through memoryviews: the warm run imports no numpy (the cold one must)."""
    obj = build.cc_text("#include <stdio.h>\nstatic const char *msg = \"warm\";\n"
                        "int main(void) { puts(msg); return 7; }\n", "-O2", "-fPIC", stem="warm_seven")
    code = (
        "import sys\n"
        "from rtdyld.cli import main\n"
        f"status = main(['run', '--link-cache', {str(tmp_path / 'cache')!r}, {str(obj)!r}])\n"
        "sys.stdout.flush()\n"
        "print(status, 'numpy' in sys.modules)\n"
    )
    assert _child(code) == "warm\n7 True\n"
    assert _child(code) == "warm\n7 False\n"


def test_rtdyld_run_imports_neither_typing_nor_shutil(build, tmp_path):
    """A repeated run, from the link cache, under ``python -S`` (so that
    nothing else imports them): typing is for annotations only, and
    argparse's help width is worked out without shutil (which brings bz2,
    lzma and fnmatch).  (The first run imports numpy, which imports typing,
    and stores the batch through tempfile, which imports shutil.)"""
    obj = build.cc_text("int main(void) { return 4; }\n", "-O2", "-fPIC", stem="bare_four")
    code = (
        "import sys\n"
        "from rtdyld.cli import main\n"
        f"status = main(['run', '--link-cache', {str(tmp_path / 'cache')!r}, {str(obj)!r}])\n"
        "print(status, 'numpy' in sys.modules, sorted({'typing', 'shutil'} & set(sys.modules)))\n"
    )
    paths = sysconfig.get_paths()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), *dict.fromkeys((paths["purelib"], paths["platlib"]))]))
    runs = [subprocess.run([sys.executable, "-S", "-c", code], check=True, cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=120).stdout for _ in range(2)]
    assert runs[0].startswith("4 True ") and runs[1] == "4 False []\n"


def test_rtdyld_run_stats_times_the_batch_phases_only_of_a_cold_link(build, tmp_path):
    """--stats instruments the batch linker when a cold link first loads it:
    a miss of the link cache reports its phases, a warm run (which never loads
    the batch linker, nor numpy) reports the phases it has, and link_s last."""
    obj = build.cc_text("int main(void) { return 3; }\n", "-O2", "-fPIC", stem="stats_three")
    cmd = [sys.executable, "-m", "rtdyld", "run", "--stats", "--link-cache", str(tmp_path / "cache"), str(obj)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    runs = [subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    assert [r.returncode for r in runs] == [3, 3]
    cold, warm = ([line.split("=")[0] for line in r.stderr.splitlines()] for r in runs)
    assert cold[0] == "read_s" and {"comdat_s", "resolve_s", "fixup_s", "publish_s"} <= set(cold)
    assert cold.index("fixup_s") < cold.index("publish_s") and cold[-2:] == ["other_s", "link_s"]
    assert warm == ["read_s", "publish_s", "other_s", "link_s"]


def test_numpy_stand_in_imports_numpy_when_first_read():
    out = _child(
        "import sys\n"
        "from rtdyld.lazy_numpy import np\n"
        "print('numpy' in sys.modules, repr(np))\n"
        "import numpy\n"
        "print(np.uint64 is numpy.uint64, np.frombuffer(b'ab', np.uint8).tolist(), np.ndarray is numpy.ndarray)\n"
        "print(np.testing is numpy.testing)\n"
    )
    assert out.splitlines() == ["False <numpy, imported when first used>", "True [97, 98] True", "True"]


def test_numpy_stand_in_is_replaced_by_numpy_once_used():
    """After the first read every module of the package that held the stand-in
    holds numpy itself (a module's attribute reads cost less), and a later
    import of the name gets numpy."""
    out = _child(
        "import sys\n"
        "from rtdyld.objfile import strtab\n"
        "from rtdyld import lazy_numpy\n"
        "stand_in = strtab.np\n"
        "print(type(stand_in).__name__, 'numpy' in sys.modules)\n"
        "stand_in.zeros(1)\n"
        "import numpy\n"
        "from rtdyld.lazy_numpy import np\n"
        "print(strtab.np is numpy, np is numpy, stand_in.zeros is numpy.zeros)\n"
    )
    assert out.splitlines() == ["_Numpy False", "True True True"]


THREADS_PROGRAM = r"""
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
int main(void) {
    const char *v = getenv("OPENBLAS_NUM_THREADS");
    int n = 0;
    DIR *d = opendir("/proc/self/task");
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    printf("%s %d\n", v ? v : "unset", n);
    fflush(stdout);
    return 0;
}
"""


def test_rtdyld_run_starts_no_blas_threads_and_hands_the_program_its_environment(build):
    """numpy's OpenBLAS starts a thread per core at import; the command never
    calls BLAS, so it imports numpy with one, and the program still sees the
    environment it was given."""
    obj = build.cc_text(THREADS_PROGRAM, "-O2", "-fPIC", stem="count_threads")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("OPENBLAS_NUM_THREADS", None)

    def run(**extra) -> str:
        return subprocess.run([sys.executable, "-m", "rtdyld", "run", str(obj)], check=True, cwd=REPO,
                              env={**env, **extra}, capture_output=True, text=True, timeout=120).stdout

    plain = int(_child("import os, numpy\nprint(len(os.listdir('/proc/self/task')))"))
    assert run() == "unset 1\n"
    if plain > 1:  # (one core: OpenBLAS starts no thread either way)
        given = run(OPENBLAS_NUM_THREADS=str(plain))
        assert given == f"{plain} {plain}\n"  # a value the user set is theirs


RECORDS = ("rtdyld.objfile.model:Section", "rtdyld.objfile.model:Group", "rtdyld.objfile.model:ObjectFile",
           "rtdyld.symbols:SymbolDef")


@pytest.mark.parametrize("where", RECORDS)
def test_a_record_takes_its_fields_in_order(where):
    """The link cache walks these by their FIELDS (rtdyld.fieldwise) and makes
    them again with keyword arguments: __init__ must take exactly those, in
    that order; a default that is also a class attribute (which
    ProcessSymbolDef and a lazily loaded object read) is the same."""
    import importlib
    import inspect
    import types

    from rtdyld import fieldwise

    module, name = where.split(":")
    cls = getattr(importlib.import_module(module), name)
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in params] == list(cls.FIELDS)
    for p in params:
        held = vars(cls).get(p.name, inspect.Parameter.empty)  # a class attribute, a slot, or nothing
        if inspect.Parameter.empty in (p.default, held) or isinstance(held, types.MemberDescriptorType):
            continue
        assert held == p.default, p.name
    args = {p.name: object() for p in params if p.default is inspect.Parameter.empty}
    made = cls(**args)
    for p in params:
        assert getattr(made, p.name) is args.get(p.name, getattr(made, p.name)), p.name
    assert fieldwise.is_record(made) and not fieldwise.is_record(cls)
    first = cls.FIELDS[0]
    assert repr(made).startswith(f"{name}({first}={getattr(made, first)!r}, ")
    copy = fieldwise.replace(made, **{first: "other"})
    assert type(copy) is cls and getattr(copy, first) == "other"
    assert all(getattr(copy, f) is getattr(made, f) for f in cls.FIELDS[1:])
    with pytest.raises(TypeError, match=f"{name} has no field 'nonesuch'"):
        fieldwise.replace(made, nonesuch=1)
    # The enum fields the link cache restores are those annotated with an enum.
    import enum
    import typing

    import numpy

    hints = typing.get_type_hints(cls, localns={"np": numpy})
    annotated = {f: t for f, h in hints.items() for t in (h, *typing.get_args(h))
                 if isinstance(t, type) and issubclass(t, enum.Enum)}
    assert getattr(cls, "ENUM_FIELDS", {}) == annotated


def test_records_compare_as_before():
    """Sections and groups compare by value (the link cache's round trip is
    checked that way), objects and definitions by identity."""
    from rtdyld.fieldwise import replace
    from rtdyld.objfile.model import Group, ObjectFile, Section, SectionFlags
    from rtdyld.symbols import SymbolDef

    s = Section(".text", b"\x90", 1, 16, SectionFlags.EXEC)
    assert s == replace(s) and s != replace(s, align=8) and s != (s.name,)
    assert Group("g", [1, 2]) == Group("g", [1, 2]) != Group("g", [1])
    obj = ObjectFile("a.o", "elf", [s], None, [], None)
    assert obj != replace(obj)
    assert SymbolDef("f", 16) != SymbolDef("f", 16)
    with pytest.raises(TypeError, match="unhashable"):
        hash(s)


def test_rtdyld_run_generates_no_dataclass_methods_of_the_link_path(build):
    """A dataclass decoration execs generated code in every new process; the
    records ``rtdyld run`` loads are plain classes, or dataclasses with their
    methods written out.  (The listed ones belong to other layers.)"""
    obj = build.cc_text("int main(void) { return 7; }\n", "-O2", "-fPIC", stem="run_seven")
    code = (
        "import dataclasses, sys\n"
        "made = []\n"
        "plain = dataclasses.dataclass\n"
        "def record(cls=None, /, **kw):\n"
        "    def wrap(c):\n"
        "        if kw.get('init', True) or kw.get('repr', True) or kw.get('eq', True):\n"
        "            made.append(f'{c.__module__}.{c.__qualname__}')\n"
        "        return plain(c, **kw)\n"
        "    return wrap if cls is None else wrap(cls)\n"
        "dataclasses.dataclass = record\n"
        "from rtdyld.cli import main\n"
        f"status = main(['run', {str(obj)!r}])\n"
        "print(status, sorted(m for m in made if m.startswith(('rtdyld', 'memmgr'))))\n"
    )
    status, made = _child(code).split(" ", 1)
    assert status == "7"
    assert eval(made) == []


def test_a_command_named_first_is_parsed_by_its_own_parser_alone(capsys):
    """No top-level parser is made to pass ``rtdyld run ...`` on; the command's
    parser is the one the subcommand would have been, usage, errors and all."""
    from rtdyld.cli import build_parser, main

    args = build_parser("run").parse_args(["--stats", "-l", "m", "a.o", "b.o"])
    assert (args.command, args.inputs, args.libraries, args.stats) == ("run", ["a.o", "b.o"], ["m"], True)
    assert main(["run", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: rtdyld run [-h] ")
    assert main(["map", "a.o", "--no-such-option"]) == 1
    assert capsys.readouterr().err == (
        "rtdyld: error: unrecognized arguments: --no-such-option (see 'rtdyld map --help')\n")
    assert main(["run"]) == 1
    assert "the following arguments are required: INPUT (see 'rtdyld run --help')" in capsys.readouterr().err
    full = build_parser()
    assert full.parse_args(["symbols", "--undefined", "a.o"]).command == "symbols"
