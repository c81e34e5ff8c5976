"""`make mutate` (tests/mutate.py) only proves something while each mutation still finds its line:
a refactor that moves the line would leave the mutation with nothing to break. Each original
fragment must occur exactly once in its file, and each named test file must exist."""

from __future__ import annotations

import pytest

from tests.mutate import MUTATIONS, ROOT, SRC


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_mutation_still_finds_its_line_and_its_tests(mutation):
    name, file, original, mutated, tests = mutation
    text = (ROOT / SRC / file).read_text()
    assert text.count(original) == 1, f"{name}: the fragment occurs {text.count(original)} times in {file}"
    assert original != mutated
    for test in tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{name}: {test} does not exist"
