"""docs/RELIABILITY.md stays true: every row names a test that exists, and there are enough rows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_CELL = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(\[[^`]*\])?`\s*\|\s*$")


def named_tests() -> list[tuple[str, str]]:
    """(file, test function) of every table row of docs/RELIABILITY.md."""
    found = []
    for line in (ROOT / "docs" / "RELIABILITY.md").read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| bad input"):
            match = TEST_CELL.search(line)
            assert match, f"a row without a test: {line[:100]}"
            found.append((match.group(1), match.group(2)))
    return found


def test_every_row_names_a_test_that_exists():
    rows = named_tests()
    assert len(rows) >= 60
    sources: dict[str, str] = {}
    for file, name in rows:
        path = ROOT / file
        assert path.is_file(), f"docs/RELIABILITY.md names {file}, which does not exist"
        source = sources.setdefault(file, path.read_text())
        assert re.search(rf"^def {name}\(", source, re.M), f"docs/RELIABILITY.md names {file}::{name}, not found"
