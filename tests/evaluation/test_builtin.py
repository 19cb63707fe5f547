"""The builtin scorer's prompt, answer parsing and VLMEvalKit-layout accuracy table."""
import pandas as pd
import pytest

from llava_moslora.evaluation.builtin import accuracy_table, mcq_prompt, parse_choice, parse_yes_no

ROW = {"question": "What color is the circle?", "hint": float("nan"), "A": "red", "B": "blue", "C": "green",
       "D": "yellow", "answer": "B"}


def test_mcq_prompt_is_llavas():
    assert mcq_prompt(ROW) == ("What color is the circle?\nA. red\nB. blue\nC. green\nD. yellow\n"
                               "Answer with the option's letter from the given choices directly.")
    with_hint = {**ROW, "hint": "Look closely.", "D": float("nan")}
    assert mcq_prompt(with_hint).startswith("Look closely.\nWhat color") and "D." not in mcq_prompt(with_hint)


@pytest.mark.parametrize("prediction, letter", [("B", "B"), ("B.", "B"), ("(C) green", "C"), ("A red one", "A"),
                                                ("blue", "B"), ("It is yellow.", "D"), ("no idea", None)])
def test_parse_choice(prediction, letter):
    assert parse_choice(prediction, ROW) == letter


@pytest.mark.parametrize("prediction, answer", [("Yes", "Yes"), ("no.", "No"), ("I think yes", "Yes"), ("Red.", None)])
def test_parse_yes_no(prediction, answer):
    assert parse_yes_no(prediction) == answer


def test_accuracy_table_matches_a_hand_count():
    scored = pd.DataFrame({
        "hit": [True, False, True, True, False, False],
        "l2-category": ["coarse perception"] * 2 + ["reasoning"] * 4,
        "category": ["counting"] * 2 + ["counting after removal"] * 4,
        "split": ["dev"] * 6})
    table = accuracy_table(scored)
    assert list(table.columns) == ["split", "Overall", "coarse perception", "reasoning", "counting",
                                   "counting after removal"]
    assert table.iloc[0].to_dict() == {"split": "dev", "Overall": 0.5, "coarse perception": 0.5, "reasoning": 0.5,
                                       "counting": 0.5, "counting after removal": 0.5}
