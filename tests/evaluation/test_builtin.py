"""The builtin backend: VLMEvalKit's exact matching, its result layouts, scores on a hand-made fixture."""
import base64
import io

import pandas as pd
import pytest
from PIL import Image

from llava_moslora.evaluation.builtin import accuracy_table, evaluate_tsv, parse_choice, parse_yes_no
from llava_moslora.evaluation.vlm import ContractBase, LlavaMoSLoRAMixin

ROW = {"question": "What color is the circle?", "hint": float("nan"), "A": "red", "B": "blue", "C": "green",
       "D": "yellow", "answer": "B"}


@pytest.mark.parametrize("prediction, letter", [("B", "B"), ("B.", "B"), ("(C) green", "C"), ("A red one", "A"),
                                                ("blue", "B"), ("It is yellow.", "D"), ("no idea", None),
                                                ("The answer is C", "C"), ("A or B", None),
                                                ("B is the letter of the answer, not A", None)])
def test_parse_choice(prediction, letter):
    assert parse_choice(prediction, ROW) == letter


@pytest.mark.parametrize("prediction, answer", [("Yes", "Yes"), ("no.", "No"), ("I think yes", "Yes"), ("Red.", None),
                                                ("Yes and no", None), ("Yesterday", None)])
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


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Scripted(LlavaMoSLoRAMixin, ContractBase):
    """The real prompt building over a fake network: answers come from a table by question."""

    def __init__(self, answers):
        ContractBase.__init__(self)
        self.answers = answers

    def generate_inner(self, message, dataset=None):
        question = message[-1]["value"].split("\n")[0]
        return self.answers[question]


def test_mcq_file_scores_equal_a_hand_count(tmp_path):
    rows = [dict(index=i, image=png() if i == 0 else "0", question=f"q{i}", hint=None, A="red", B="blue", C="green",
                 D="yellow", answer=answer, category=category, **{"l2-category": l2}, split=split)
            for i, (answer, category, l2, split) in enumerate([
                ("A", "color", "perception", "dev"), ("B", "color", "perception", "dev"),
                ("C", "count", "perception", "dev"), ("D", "removal", "reasoning", "dev"),
                ("A", "removal", "reasoning", "test"), ("B", "color", "perception", "test")])]
    tsv = tmp_path / "Tiny_MCQ.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
    # dev: right, wrong, right (by option text), wrong; test: right, unparseable
    answers = {"q0": "A", "q1": "C", "q2": "green", "q3": "A", "q4": "A.", "q5": "no idea"}
    files = evaluate_tsv(Scripted(answers), tsv, tmp_path / "work", "tiny", progress=False)
    text = files["acc"].read_text().splitlines()
    assert text[0] == '"split","Overall","perception","reasoning","color","count","removal"'
    acc = pd.read_csv(files["acc"]).set_index("split")
    assert acc.loc["dev"].to_dict() == {"Overall": 0.5, "perception": 2 / 3, "reasoning": 0.0, "color": 0.5,
                                        "count": 1.0, "removal": 0.0}
    assert acc.loc["test", "Overall"] == 0.5 and pd.isna(acc.loc["test", "count"])
    predictions = pd.read_excel(files["predictions"])
    assert list(predictions["prediction"]) == list(answers.values()) and "image" not in predictions
    assert (tmp_path / "work" / "images" / "Tiny_MCQ" / "5.png").is_file()  # "0" referred to row 0's image


def test_yes_no_file_scores_equal_a_hand_count(tmp_path):
    rows = [dict(index=i, image=png(), question=f"q{i}", answer=answer, category=category)
            for i, (answer, category) in enumerate([("Yes", "existence"), ("No", "existence"), ("Yes", "count"),
                                                    ("No", "count")])]
    tsv = tmp_path / "Tiny_YN.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
    answers = {"q0": "Yes.", "q1": "Yes", "q2": "yes", "q3": "No"}
    files = evaluate_tsv(Scripted(answers), tsv, tmp_path / "work", "tiny", progress=False)
    score = pd.read_csv(files["score"])
    assert score.iloc[0].to_dict() == {"Overall": 75.0, "count": 100.0, "existence": 50.0}


def test_a_tsv_that_is_neither_is_refused(tmp_path):
    tsv = tmp_path / "Free.tsv"
    pd.DataFrame([dict(index=0, image=png(), question="Read the sign.", answer="STOP")]).to_csv(tsv, sep="\t")
    with pytest.raises(ValueError, match="multiple-choice"):
        evaluate_tsv(Scripted({}), tsv, tmp_path / "work", "tiny", progress=False)
