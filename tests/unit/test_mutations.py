"""`make mutation`'s catalogue stays in step with the code: each deliberate bug still has its one place."""

from __future__ import annotations

import pytest

from tests.helpers import REPO_ROOT
from tests.mutation import MUTATIONS, Mutation


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_each_mutation_finds_its_text_exactly_once(mutation: Mutation) -> None:
    text = (REPO_ROOT / mutation.path).read_text(encoding="utf-8")
    assert text.count(mutation.find) == 1, f"{mutation.path}: update the mutation to the code as it is now"
    assert mutation.replace != mutation.find
    for hint in mutation.hints:
        assert (REPO_ROOT / hint).is_file(), hint
