"""docs/porting.md cannot lie: every name it calls "same" exists in flaxen, every "changed"
row names a flaxen replacement that exists, and the counts at the top are the table's."""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

import flaxen

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "porting.md"
ROW = re.compile(r"^\| `([^`]+)` \| (same|changed|not provided) \| (.*) \|$")
# Added by another branch of issue #12 (decoding cache, scan_in_dim); skipped only while
# absent here, so the check is strict again once they are merged.
def _rows() -> list[tuple[str, str, str]]:
    return [m.groups() for line in DOC.read_text().splitlines() if (m := ROW.match(line))]


def _resolve(dotted: str) -> object:
    obj: object = flaxen
    path = "flaxen"
    for part in dotted.split("."):
        if hasattr(obj, part):
            obj = getattr(obj, part)
        else:
            obj = importlib.import_module(f"{path}.{part}")  # a submodule not yet imported
        path += "." + part
    return obj


def test_counts_at_the_top_match_the_tables():
    rows = _rows()
    assert len(rows) > 150
    counts = {s: sum(1 for _, st, _ in rows if st == s)
              for s in ("same", "changed", "not provided")}
    line = (f"**{len(rows)} names: {counts['same']} same, {counts['changed']} changed, "
            f"{counts['not provided']} not provided.**")
    assert line in DOC.read_text()


@pytest.mark.parametrize("name, status, note", _rows())
def test_name_exists(name, status, note):
    if status == "not provided":
        assert note.strip(), f"{name}: a name not provided must say why"
        return
    target = name
    if status == "changed":
        port = re.match(r"→ `([\w.]+)`", note)
        assert port, f"{name}: a changed row starts with '→ `flaxen.name`'"
        target = port.group(1)
    _resolve(target)
