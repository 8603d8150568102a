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
    """`test_kills.py::test_a` (in tests/e2e) or `tests/alerts/x.py::test_a`; a bare `test_b` after it is in the
    same file, as the table reads; a bare `tests/alerts/x.py` names every test of that file."""
    rows = _table_rows(_section("Resilience suite"))
    assert len(rows) >= 9
    current_file = ""
    for scenario, tests, _claim in rows:
        named = re.findall(r"`(?:([\w./]+\.py)(?:::)?)?(test_\w+)?`", tests)
        named = [(file, name) for file, name in named if file or name]
        assert named, f"resilience scenario {scenario!r} names no test"
        for file, name in named:
            if file:
                current_file = file.removeprefix("tests/") if file.startswith("tests/") else f"e2e/{file}"
            defined = _tests_in(current_file)
            assert defined, f"{scenario}: tests/{current_file} holds no test"
            assert not name or name in defined, f"{scenario}: tests/{current_file}::{name} does not exist"


def test_every_test_path_the_readme_names_exists() -> None:
    """Anywhere else in the README, `tests/DIR/test_x.py::test_y` and `tests/DIR/test_x.py` must exist."""
    named = re.findall(r"tests/([\w/]+\.py)(?:::(test_\w+))?", README)
    assert named
    for relative, name in named:
        defined = _tests_in(relative)
        assert not name or name in defined, f"README names tests/{relative}::{name}, which does not exist"


def test_where_things_live_names_every_common_module_and_service_and_nothing_else() -> None:
    section = README[README.index("\n### Where things live\n") :]
    section = section[: section.index("\n## ")]
    named = {row[0].strip().strip("`") for row in _table_rows(section)}
    modules = {f"libs/common/{p.name}" for p in (REPO_ROOT / "libs" / "common").glob("*.py")}
    modules.discard("libs/common/__init__.py")
    services = {f"services/{p.name}/" for p in (REPO_ROOT / "services").iterdir() if (p / "__main__.py").is_file()}
    assert named == modules | services
