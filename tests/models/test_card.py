"""The model card's result tables are generated from the committed results, not typed."""

from __future__ import annotations

import pytest

from models.card import CARD, README, render, section, update


def test_the_committed_card_and_readme_match_the_committed_results():
    assert not update(check=True), "MODEL_CARD.md is out of date: run `ml2p card`"
    assert not update(README, check=True), "README.md is out of date: run `ml2p card`"
    assert "<!-- generated: accuracy -->" in README.read_text()


def test_a_hand_edit_inside_a_generated_section_is_overwritten(tmp_path):
    card = tmp_path / "MODEL_CARD.md"
    original = CARD.read_text()
    assert "| ml2p | " in original
    card.write_text(original.replace("| ml2p | ", "| ml2p | 99.9 ", 1))
    assert update(card) and "| ml2p | 99.9" not in card.read_text()
    assert section("accuracy") in card.read_text()


def test_a_card_without_the_markers_is_refused():
    with pytest.raises(ValueError, match="generated: accuracy"):
        render("# a card with no generated section\n")
