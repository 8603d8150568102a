"""The Makefile is the interface: every target it declares does something, and `make help` lists it."""

from __future__ import annotations

import re

from tests.helpers import REPO_ROOT

MAKEFILE = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")


def _phony() -> list[str]:
    declared = re.search(r"^\.PHONY:((?:.*\\\n)*.*)$", MAKEFILE, re.M)
    assert declared
    return declared.group(1).replace("\\\n", " ").split()


def test_every_declared_target_has_a_recipe_and_a_help_line() -> None:
    silent, undocumented = [], []
    for target in _phony():
        rule = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)*)", MAKEFILE, re.M)
        if rule is None or not rule.group(1).strip():
            silent.append(target)
        elif not re.search(rf"^{re.escape(target)}:.*## ", MAKEFILE, re.M):
            undocumented.append(target)
    assert not silent, f"declared with no recipe (make exits 0 and runs nothing): {silent}"
    assert not undocumented, f"missing from make help (no '## ' description): {undocumented}"


def test_the_test_tiers_select_by_marker() -> None:
    for target, selection in (
        ("test-unit", '-m "not integration and not e2e"'),
        ("test-integration", "-m integration"),
        ("test-fast", '-m "not e2e"'),
        ("test-e2e", "-m e2e"),
    ):
        assert re.search(rf"^{target}:.*\n\t.*pytest {re.escape(selection)}", MAKEFILE, re.M), target
