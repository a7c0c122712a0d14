"""Which system library a missing symbol lives in, and the hints built from it."""

from __future__ import annotations

import pytest

from rtdyld import suggest


@pytest.mark.parametrize(
    ("name", "prefix", "library"),
    [
        ("cos", "", ("m", "libm.so.6")),
        ("_cos", "_", ("m", "libm.so.6")),  # Mach-O spelling
        ("zlibVersion", "", ("z", "libz.so.1")),
        ("BZ2_bzlibVersion", "", ("bz2", "libbz2.so.1.0")),
        ("__cxa_throw", "", ("stdc++", "libstdc++.so.6")),
        ("__atomic_load", "", ("atomic", "libatomic.so.1")),
        ("GOMP_parallel", "", ("gomp", "libgomp.so.1")),
        # libgcc_s comes with libstdc++: loading libstdc++ makes it available.
        ("_Unwind_Resume", "", ("stdc++", "libstdc++.so.6")),
        ("_cos", "", None),
        ("rtdyld_defined_nowhere", "", None),
    ],
)
def test_library_defining(name, prefix, library):
    assert suggest.library_defining(name, prefix) == library


def test_undefined_hints_group_by_library():
    assert suggest.undefined_hints(["cos", "nowhere_a", "sin", "nowhere_b"]) == [
        "link with -l m (Linker.load_library('m')): libm.so.6 provides 'cos', 'sin'",
        (
            "define 'nowhere_a', 'nowhere_b' with Linker.define(name, address_or_callback) "
            "or add an object or archive that defines them"
        ),
    ]


def test_overflow_hint_by_kind():
    from rtdyld.x86_64.edges import Edge

    assert "-fPIC" in suggest.overflow_hint([int(Edge.Pointer32Signed)])
    assert "-mcmodel=large" in suggest.overflow_hint([int(Edge.Delta32)])
    assert suggest.overflow_hint([int(Edge.Delta8)]) == ""
