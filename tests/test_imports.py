"""What importing rtdyld costs: the linker loads on first use, optional parts only when used."""

from __future__ import annotations

import os
import subprocess
import sys

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
