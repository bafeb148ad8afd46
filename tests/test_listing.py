"""listing.py: how messages name many things."""

import pytest

from transformers_mixedae.listing import first_few


def test_short_lists_are_named_whole():
    assert first_few([]) == ""
    assert first_few(["a"]) == "a"
    assert first_few(["a", "b", "c"], most=3) == "a, b, c"


def test_long_lists_name_the_first_few_and_count_the_rest():
    assert first_few([f"f{index}" for index in range(10)]) == "f0, f1, f2, f3, f4, f5, f6, f7, and 2 more"
    assert first_few(["a", "b", "c"], most=2) == "a, b, and 1 more"


def test_the_count_covers_names_that_were_not_recorded():
    # 12 samples skipped, only the first 3 recorded by name
    assert first_few(["x", "y", "z"], total=12) == "x, y, z, and 9 more"
    assert first_few(["x", "y", "z"], most=2, total=12) == "x, y, and 10 more"


def test_a_count_smaller_than_the_names_adds_nothing_and_naming_none_is_refused():
    assert first_few(["a", "b"], total=1) == "a, b"
    with pytest.raises(ValueError, match=r"most=0 is not valid: name at least 1 item"):
        first_few(["a"], most=0)
