"""The VLMEvalKit model class on a tiny MoSLoRA checkpoint, against the BaseModel contract."""
import os

import pandas as pd
import pytest

from llava_moslora.data.prompts import MCQ_SUFFIX, SHORT_SUFFIX
from llava_moslora.model.inference import Answerer
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


def test_multi_image_messages_fill_placeholders_in_order_alone_and_batched(model, tiny_checkpoint, tmp_path):
    """VLMEvalKit's interleaved messages: each image at its place, as one conversation with two
    `<image>` placeholders; the batched route answers as one at a time does."""
    from PIL import Image

    paths = []
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 40, 220))):
        Image.new("RGB", (24, 20), colour).save(tmp_path / f"{name}.png")
        paths.append(str(tmp_path / f"{name}.png"))
    interleaved = [{"type": "text", "value": "First:"}, {"type": "image", "value": paths[0]},
                   {"type": "text", "value": "Second:"}, {"type": "image", "value": paths[1]},
                   {"type": "text", "value": "Which image is red?"}]
    text, images = model.question(interleaved)
    assert text == "First:\n<image>\nSecond:\n<image>\nWhich image is red?" and images == paths
    answer = model.generate(interleaved)
    reference = Answerer(load_checkpoint(tiny_checkpoint), max_new_tokens=model.answer_tokens(None))
    opened = [Image.open(p).convert("RGB") for p in paths]
    assert answer == reference(text, opened)
    ids = reference.prompt_ids(text, 2)
    assert ids.count(reference.bundle.model.config.image_token_id) == 2 * reference.bundle.recipe.num_image_tokens
    one = [{"type": "image", "value": paths[0]}, {"type": "text", "value": "What color is it?"}]
    batched = model.generate_batch([interleaved, one, interleaved])
    assert batched[0] == batched[2] == answer and batched[1] == model.generate(one)


def test_the_builtin_backend_dumps_every_image_of_a_multi_image_row(tmp_path):
    import base64
    import io

    from PIL import Image

    from llava_moslora.evaluation.builtin import predict_tsv

    def b64(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    seen = []

    class Records:
        def set_dump_image(self, dump):
            self.dump = dump

        def build_prompt(self, line, dataset):
            paths = self.dump(line)
            seen.append([Image.open(p).getpixel((0, 0)) for p in paths])
            return [{"type": "image", "value": p} for p in paths] + [{"type": "text", "value": line["question"]}]

        def prompt_length(self, message, dataset=None):
            return 0

        def generate_batch(self, messages, dataset=None):
            return ["A"] * len(messages)

    rows = [dict(index=0, image=str([b64((255, 0, 0)), b64((0, 0, 255))]), question="Which is red?", A="first",
                 B="second", answer="A"),
            dict(index=1, image=b64((0, 255, 0)), question="Is it green?", A="yes", B="no", answer="A")]
    tsv = tmp_path / "My_Pairs.tsv"
    pd.DataFrame(rows).to_csv(tsv, sep="\t", index=False)
    predict_tsv(Records, tsv, tmp_path / "work", "m", progress=False)
    assert seen == [[(255, 0, 0), (0, 0, 255)], [(0, 255, 0)]]
