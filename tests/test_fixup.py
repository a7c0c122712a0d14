"""The x86-64 fixup primitives (rtdyld.x86_64.fixup): range checks at the
edges of every field, and stores of mixed widths, overlapping and unaligned."""

from __future__ import annotations

import numpy as np

from rtdyld.x86_64 import fixup
from rtdyld.x86_64.edges import N_EDGES, WIDTH, Edge


def test_out_of_range_at_each_kinds_edges():
    kinds, values, expected = [], [], []
    for k in range(N_EDGES):
        lo, hi = int(fixup.LOW[k]), int(fixup.HIGH[k])
        for v in {lo, hi, lo - 1, hi + 1, 0, -1}:
            if not -(1 << 63) <= v < (1 << 63):
                continue  # a 64-bit field: nothing lies outside
            kinds.append(k)
            values.append(v)
            expected.append(not lo <= v <= hi)
    value = np.array(values, dtype=np.int64).view(np.uint64)
    got = fixup.out_of_range(np.array(kinds, dtype=np.uint8), value)
    assert got.tolist() == expected
    assert any(expected) and not all(expected)


def test_write_mixed_widths_as_bytes():
    kinds = np.array([Edge.Pointer64, Edge.Delta32, Edge.Pointer8, Edge.Delta16, Edge.Pointer64], dtype=np.uint8)
    where = np.array([1, 13, 20, 22, 40], dtype=np.int64)  # unaligned
    value = np.array([0x1122334455667788, 0xFFFFFFFF9ABCDEF0, 0x1FF, 0xFEDC, (1 << 64) - 2], dtype=np.uint64)
    mem = np.zeros(48, dtype=np.uint8)
    fixup.write(mem, where, kinds, value)
    expected = bytearray(48)
    for k, at, v in zip(kinds.tolist(), where.tolist(), value.tolist()):
        w = int(WIDTH[k])
        expected[at : at + w] = (v & ((1 << 8 * w) - 1)).to_bytes(w, "little")
    assert mem.tobytes() == bytes(expected)


def test_write_one_width_into_a_view():
    """A store into part of a larger memory (a slice) stays inside it."""
    big = np.full(32, 0xAA, dtype=np.uint8)
    part = big[8:24]
    fixup.write(part, np.array([0, 12], dtype=np.int64), np.array([Edge.Delta32] * 2, dtype=np.uint8),
                np.array([1, 2], dtype=np.uint64))
    assert big[:8].tolist() == [0xAA] * 8 and big[24:].tolist() == [0xAA] * 8
    assert part[:4].tolist() == [1, 0, 0, 0] and part[12:16].tolist() == [2, 0, 0, 0]


def test_census_given_or_counted_gives_the_same_values_and_bytes():
    """The kinds' census a caller passes (exact, or counting a kind that is
    absent) computes and stores what counting the kinds gives."""
    kinds = np.array([Edge.Pointer64, Edge.Delta32, Edge.GOTDelta32, Edge.Size32, Edge.Pointer8, Edge.Delta16],
                     dtype=np.uint8)
    n = len(kinds)
    S = np.array([0x1000, 0x2000, 0x3000, 0x4000, 0x10, 0x5000], dtype=np.uint64)
    A = np.array([8, -4, -4, 0, 1, 2], dtype=np.int64)
    P = np.array([0x100, 0x1F00, 0x2F00, 0x300, 0x400, 0x4FF0], dtype=np.uint64)
    G = np.full(n, 16, dtype=np.uint64)
    Z = np.full(n, 24, dtype=np.uint64)
    S2 = np.zeros(n, dtype=np.uint64)
    where = np.array([0, 9, 14, 19, 24, 26], dtype=np.int64)
    exact = np.bincount(kinds, minlength=N_EDGES).tolist()
    loose = list(exact)
    loose[Edge.Pointer32] += 1  # counted, absent: another width and no other formula
    loose[Edge.GOTOffset64] += 1  # another formula
    outputs = []
    for census in (None, exact, loose):
        value = fixup.compute(kinds, S, A, P, 0x8000, G, Z, S2, census)
        mem = np.zeros(32, dtype=np.uint8)
        fixup.write(mem, where, kinds, value, census)
        outputs.append((value.tolist(), mem.tobytes()))
    assert outputs[0] == outputs[1] == outputs[2]
    value, mem = outputs[0]
    assert value[:4] == [0x1008, 0x2000 - 4 - 0x1F00, 0x8000 + 16 - 4 - 0x2F00, 24]
    assert mem[9:13] == (0xFC).to_bytes(4, "little")
