"""String-table decoding (rtdyld.objfile.strtab): each path gives the same
names, and a bad offset is named whatever the table's size or encoding."""

from __future__ import annotations

import numpy as np
import pytest

from rtdyld.objfile import strtab
from rtdyld.objfile.strtab import names_at, read_names

TABLE = b"\0.text\0.rela.text\0main\0"  # ".text" is also the tail of ".rela.text"
OFFSETS = [0, 1, 7, 12, 18]
NAMES = ["", ".text", ".rela.text", ".text", "main"]


@pytest.mark.parametrize("few", [0, 128])
def test_names_including_suffix_shared_ones(monkeypatch, few):
    monkeypatch.setattr(strtab, "FEW", few)  # the split-once path, then the one slicing each name
    assert names_at(TABLE, OFFSETS) == NAMES
    assert read_names(memoryview(TABLE), np.array(OFFSETS, dtype=np.uint32)) == NAMES


@pytest.mark.parametrize("few", [0, 128])
def test_non_ascii_names_keep_their_bytes(monkeypatch, few):
    monkeypatch.setattr(strtab, "FEW", few)
    table = b"\0caf\xc3\xa9\0bad\xff\0"
    assert names_at(table, [1, 7]) == ["caf\u00e9", "bad\udcff"]


@pytest.mark.parametrize("few", [0, 128])
@pytest.mark.parametrize(
    ("table", "offsets", "message"),
    [
        (TABLE, [1, 40], "name offset 40 is past the string table (23 bytes)"),
        (TABLE + b"tail", [1, 24], "name at offset 24 is not NUL-terminated"),
        (b"\0caf\xc3\xa9\0x", [1, 7], "name at offset 7 is not NUL-terminated"),
    ],
)
def test_a_bad_offset_is_named(monkeypatch, few, table, offsets, message):
    monkeypatch.setattr(strtab, "FEW", few)
    with pytest.raises(ValueError, match=f"^{message}$".replace("(", r"\(").replace(")", r"\)")):
        names_at(table, offsets)
