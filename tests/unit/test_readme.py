"""The README is a contract: every setting is in its table, and every test it names exists."""

from __future__ import annotations

import ast
import re

from libs.common.settings import Settings
from tests.helpers import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in README]
    assert not missing, f"README configuration table lacks: {missing}"


def _tests_in(relative: str) -> set[str]:
    path = REPO_ROOT / "tests" / relative
    assert path.is_file(), f"README names tests/{relative}, which does not exist"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    }


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else len(README)]


def _table_rows(section: str) -> list[list[str]]:
    rows = [line.strip().strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return [cells for cells in rows[1:] if not set(cells[0]) <= {"-", " "}]  # skip the header and its rule


def test_every_scenario_of_the_resilience_table_names_tests_that_exist() -> None:
    """A file named once (`test_kills.py::test_a`) holds the bare names after it (`test_b`), as the table reads."""
    rows = _table_rows(_section("Resilience suite"))
    assert len(rows) >= 9
    current_file = ""
    for scenario, tests, _claim in rows:
        named = re.findall(r"`([\w./]+::)?(test_\w+)`", tests)
        assert named, f"resilience scenario {scenario!r} names no test"
        for file_part, name in named:
            current_file = file_part.removesuffix("::") or current_file
            assert name in _tests_in(f"e2e/{current_file}"), f"{scenario}: {current_file}::{name} does not exist"


def test_every_test_path_the_readme_names_exists() -> None:
    """Anywhere else in the README, `tests/DIR/test_x.py::test_y` and `tests/DIR/test_x.py` must exist."""
    named = re.findall(r"tests/([\w/]+\.py)(?:::(test_\w+))?", README)
    assert named
    for relative, name in named:
        defined = _tests_in(relative)
        assert not name or name in defined, f"README names tests/{relative}::{name}, which does not exist"
