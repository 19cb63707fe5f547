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


class OneAtATime:
    """The batched route over a fake network: each message answered by generate_inner."""

    def prompt_length(self, message, dataset=None):
        return 0

    def generate_batch(self, messages, dataset=None):
        return [self.generate(message, dataset) for message in messages]


class Scripted(OneAtATime, LlavaMoSLoRAMixin, ContractBase):
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


def test_a_free_form_tsv_is_scored_per_category_by_normalized_exact_match(tmp_path):
    """The question alone is the prompt (VLMEvalKit's for a free-form row); the _acc.csv is one
    row on 0-100, as VLMEvalKit's free-form sets write it."""
    rows = [dict(index=0, image=png(), question="Read the sign.", answer="STOP", category="ocr"),
            dict(index=1, image="0", question="What color is it?", answer="Red.", category="color"),
            dict(index=2, image="0", question="Describe it.", answer="A red sign and a pole.", category="description")]
    tsv = tmp_path / "Free.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
    answers = {"Read the sign.": "Stop", "What color is it?": "red", "Describe it.": "A pole, and a red sign."}
    model = Scripted(answers)
    files = evaluate_tsv(model, tsv, tmp_path / "work", "tiny", progress=False)
    score = pd.read_csv(files["acc"])
    assert score.iloc[0].to_dict() == {"Overall": 100.0, "color": 100.0, "description": 100.0, "ocr": 100.0}
    line = pd.read_csv(tsv, sep="\t").iloc[1]
    assert model.build_prompt(line, "Free")[-1] == {"type": "text", "value": "What color is it?"}


def test_a_tsv_without_answers_is_refused(tmp_path):
    tsv = tmp_path / "Free.tsv"
    pd.DataFrame([dict(index=0, image=png(), question="Read the sign.")]).to_csv(tsv, sep="\t")
    with pytest.raises(ValueError, match="no `answer` column"):
        evaluate_tsv(Scripted({}), tsv, tmp_path / "work", "tiny", progress=False)


class ReadsItsPrompt(OneAtATime, LlavaMoSLoRAMixin, ContractBase):
    """Answers with the letter its prompt shows beside the right option's text (a row's right
    text is known by question), so a score below 100% means the prompt hid or re-lettered it."""

    def __init__(self, right_texts):
        ContractBase.__init__(self)
        self.right_texts = right_texts

    def generate_inner(self, message, dataset=None):
        lines = message[-1]["value"].split("\n")
        shown = dict(line.split(". ", 1) for line in lines[1:-1])
        return next(letter for letter, text in shown.items() if text == self.right_texts[lines[0]])


def option_rows():
    """Rows as other benchmarks have them: five options (ScienceQA), nine (MMMU), and a gap."""
    five = dict(question="five", A="ant", B="bee", C="cat", D="dog", E="eel", answer="E")
    nine = dict(question="nine", **{letter: f"option {letter.lower()}" for letter in "ABCDEFGHI"}, answer="I")
    gapped = dict(question="gapped", A="one", B="two", D="four", answer="D")
    four = dict(question="four", A="w", B="x", C="y", D="z", answer="B")
    return [dict(index=i, image=png(), hint=None, **row) for i, row in enumerate([five, nine, gapped, four])]


def test_every_option_letter_a_row_has_is_shown_and_scored(tmp_path):
    rows = option_rows()
    tsv = tmp_path / "MY_SCIENCEQA.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
    model = ReadsItsPrompt({row["question"]: row[row["answer"]] for row in rows})
    model.set_dump_image(lambda line: [])
    prompt = model.build_prompt(pd.read_csv(tsv, sep="\t").iloc[2], "MY_SCIENCEQA")[-1]["value"]
    assert prompt.split("\n")[1:4] == ["A. one", "B. two", "D. four"]  # its own letters, the gap kept
    files = evaluate_tsv(model, tsv, tmp_path / "work", "tiny", progress=False)
    assert list(pd.read_excel(files["predictions"])["prediction"]) == ["E", "I", "D", "B"]
    assert pd.read_csv(files["acc"])["Overall"].tolist() == [1.0]


# VLMEvalKit's own rules, checked against its can_infer on the same row (commit e8e78f05): a
# letter among the last four words counts; its "answer is X" fallback reads the "b" of "blue".
@pytest.mark.parametrize("prediction, letter", [("E", "E"), ("(I) option i", "I"), ("The answer is G", "G"),
                                                ("option h", "H"), ("J", None), ("The answer is blue", "B"),
                                                ("H because it fits", "H"), ("H because it fits best", None)])
def test_parse_choice_beyond_d(prediction, letter):
    row = option_rows()[1]
    assert parse_choice(prediction, row) == letter


def test_parse_choice_on_a_gapped_row():
    row = option_rows()[2]
    assert parse_choice("D", row) == "D" and parse_choice("C", row) is None and parse_choice("four", row) == "D"
