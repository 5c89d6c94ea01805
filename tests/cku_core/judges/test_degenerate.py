"""Degenerate output: empty, loops, non-language, one-word answers; normal text passes."""

import pytest

from cku_core.judges.degenerate import DegenerateDetector


@pytest.mark.parametrize("text,reason", [
    ("", "empty"), ("   \n ", "empty"), ("!!! ???", "empty"),
    ("1. 1. 1. 1. 1.", "non_language"), ("12345 67890 %%%% 1111", "non_language"),
    ("Sure", "too_short"),
    ("the the the the", "repetition"),
    ("yes yes yes yes no yes yes", "repetition"),
    ("I will go now and I will go now and I will go now and I will go now and I will go now", "loop"),
])
def test_degenerate_is_flagged(text, reason):
    assert DegenerateDetector().reason(text) == reason


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "Step 1: preheat the oven to 200 degrees. Step 2: mix flour, water and salt. Step 3: bake for 30 minutes.",
    "Paris is the capital of France.",
])
def test_language_is_not_flagged(text):
    assert DegenerateDetector().reason(text) is None
