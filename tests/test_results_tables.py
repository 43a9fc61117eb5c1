"""Results tables are regenerated from committed records; the committed docs match their regeneration."""
from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.results_tables import RENDERERS, regenerate, table_names

ROOT = Path(__file__).resolve().parents[1]


def test_marked_blocks_are_rewritten_and_the_rest_is_kept():
    text = "intro\n<!-- table:t -->\nold 1\n<!-- /table:t -->\nmiddle\n<!-- table:u -->\n<!-- /table:u -->\nend\n"
    renderers = {"t": lambda root: "| a |\n", "u": lambda root: f"{root.name}\n"}
    fresh = regenerate(text, Path("/x/repo"), renderers)
    assert fresh == "intro\n<!-- table:t -->\n| a |\n<!-- /table:t -->\nmiddle\n<!-- table:u -->\nrepo\n<!-- /table:u -->\nend\n"
    assert table_names(fresh) == ["t", "u"]
    with pytest.raises(KeyError, match="nope"):
        regenerate("<!-- table:nope -->\n<!-- /table:nope -->", ROOT, renderers)


@pytest.mark.parametrize("name", ["README.md", "docs/RESULTS.md"])
def test_committed_tables_equal_their_regeneration(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert set(table_names(text)) <= set(RENDERERS)
    assert regenerate(text, ROOT) == text, f"{name} has stale tables: run python scripts/results_tables.py"


def test_results_page_has_the_duplicates_table():
    assert "idrid-duplicates" in table_names((ROOT / "docs/RESULTS.md").read_text(encoding="utf-8"))
