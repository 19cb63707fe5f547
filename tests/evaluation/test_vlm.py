"""The VLMEvalKit model class on a tiny MoSLoRA checkpoint, against the BaseModel contract."""
import os

import pandas as pd
import pytest

from llava_moslora.data.prompts import MCQ_SUFFIX, SHORT_SUFFIX
from llava_moslora.evaluation.answer import Answerer
from llava_moslora.evaluation.builtin import decode_image
from llava_moslora.evaluation.vlm import model_class
from llava_moslora.model import load_checkpoint


@pytest.fixture(scope="module")
def model(tiny_checkpoint, shapes_root, tmp_path_factory):
    instance = model_class(False)(tiny_checkpoint, benchmark_kinds={"ShapesVQA_MCQ": "MCQ", "ShapesVQA_YN": "Y/N"})
    folder = tmp_path_factory.mktemp("images")

    def dump(line):
        path = folder / f"{line['index']}.png"
        decode_image(line["image"]).save(path)
        return [str(path)]

    instance.set_dump_image(dump)
    return instance


def first_row(root, name):
    return pd.read_csv(root / f"{name}.tsv", sep="\t").iloc[0]


def test_mcq_rows_get_llavas_prompt(model, shapes_root):
    row = first_row(shapes_root, "ShapesVQA_MCQ")
    assert model.use_custom_prompt("ShapesVQA_MCQ")
    message = model.build_prompt(row, "ShapesVQA_MCQ")
    assert [item["type"] for item in message] == ["image", "text"]
    options = "".join(f"\n{letter}. {row[letter]}" for letter in "ABCD")
    assert message[1]["value"] == f"{row['question']}{options}\n{MCQ_SUFFIX}"


def test_yes_no_rows_get_the_short_answer_prompt(model, shapes_root):
    row = first_row(shapes_root, "ShapesVQA_YN")
    message = model.build_prompt(row, "ShapesVQA_YN")
    assert message[1]["value"] == f"{row['question']}\n{SHORT_SUFFIX}"


def test_generate_takes_a_message_list_and_returns_the_greedy_answer(model, tiny_checkpoint, shapes_root):
    row = first_row(shapes_root, "ShapesVQA_MCQ")
    message = model.build_prompt(row, "ShapesVQA_MCQ")
    answer = model.generate(message, "ShapesVQA_MCQ")
    assert isinstance(answer, str)
    reference = Answerer(load_checkpoint(tiny_checkpoint), max_new_tokens=8)
    assert answer == reference(message[1]["value"], decode_image(row["image"]))
    # VLMEvalKit also passes bare strings: image paths and text
    assert model.generate([message[0]["value"], message[1]["value"]], "ShapesVQA_MCQ") == answer


def test_text_only_and_bad_items(model):
    assert isinstance(model.generate("How many corners does a square have?"), str)
    with pytest.raises(ValueError, match="unsupported message item"):
        model.generate([{"type": "video", "value": "clip.mp4"}])


def test_options_beyond_d_and_gaps_keep_their_letters(model):
    row = pd.Series({"index": 0, "question": "Which?", "hint": "Look closely.", "A": "a1", "B": "b2", "C": float("nan"),
                     "D": "d4", "E": "e5", "F": float("nan"), "answer": "E"})
    text = mcq_text(model, row)
    assert text == f"Look closely.\nWhich?\nA. a1\nB. b2\nD. d4\nE. e5\n{MCQ_SUFFIX}"


def mcq_text(model, row):
    dump = model.dump_image_func
    model.set_dump_image(lambda line: [])
    try:
        return model.build_prompt(row, "ANY_NAME")[-1]["value"]
    finally:
        model.set_dump_image(dump)


def test_benchmark_kinds_belong_to_each_model_not_the_process(model, tiny_checkpoint, shapes_root, tmp_path, monkeypatch):
    """Whatever an earlier model or evaluation was told, a model phrases a name by its own kinds,
    else by that name's TSV in its data root."""
    root = tmp_path / "root"
    root.mkdir()
    pd.read_csv(shapes_root / "ShapesVQA_YN.tsv", sep="\t").to_csv(root / "ShapesVQA_MCQ.tsv", sep="\t", index=False)
    monkeypatch.delenv("LMUData", raising=False)
    other = model_class(False)(tiny_checkpoint, data_root=root)  # the same name, a yes/no TSV there
    assert model.kind_of("ShapesVQA_MCQ") == "MCQ" and other.kind_of("ShapesVQA_MCQ") == "Y/N"
    assert model.kind_of("ShapesVQA_MCQ") == "MCQ" and "LMUData" not in os.environ
