"""ShapesVQA generation and the tiny bases trained on its text."""
import base64
import hashlib
import io
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from llava_moslora.data import load_samples
from llava_moslora.data.prompts import MCQ_SUFFIX
from llava_moslora.demo.scenes import ABILITIES
from llava_moslora.demo.synth import write_shapesvqa

MCQ_COLUMNS = ["index", "image", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split"]


def digest(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapesvqa")
    write_shapesvqa(out, seed=3, num_pretrain=40, num_instruct=120, num_test=60, progress=False)
    return out


def test_same_seed_same_files_other_seed_other_files(shapes, tmp_path):
    write_shapesvqa(tmp_path / "again", seed=3, num_pretrain=40, num_instruct=120, num_test=60, progress=False)
    assert digest(tmp_path / "again") == digest(shapes)
    write_shapesvqa(tmp_path / "other", seed=4, num_pretrain=40, num_instruct=120, num_test=60, progress=False)
    assert digest(tmp_path / "other") != digest(shapes)


def test_training_files_are_valid_llava_data(shapes):
    pretrain, instruct = load_samples(shapes / "pretrain.json"), load_samples(shapes / "instruct.json")
    assert len(pretrain) == 40 and len(instruct) == 120
    assert all(len(s.images) == 1 for s in pretrain)
    assert any(not s.images for s in instruct), "some text-only samples"
    assert any(len(s.turns) > 1 for s in instruct), "multi-turn conversations"
    mcq_turns = [(q, a) for s in instruct for q, a in s.turns if q.endswith(MCQ_SUFFIX)]
    assert mcq_turns and all(a in "ABCD" for _, a in mcq_turns)
    for sample in pretrain + instruct:
        for image in sample.images:
            assert (shapes / "images" / image).is_file()


def test_benchmarks_have_vlmevalkit_columns_and_abilities(shapes):
    mcq = pd.read_csv(shapes / "ShapesVQA_MCQ.tsv", sep="\t")
    assert list(mcq.columns) == MCQ_COLUMNS and len(mcq) == 60
    assert set(mcq["l2-category"]) <= set(ABILITIES) and len(set(mcq["l2-category"])) == 4
    assert set(mcq["answer"]) <= set("ABCD")
    for _, row in mcq.head(5).iterrows():
        assert row[row["answer"]] in {row[c] for c in "ABCD"}
        Image.open(io.BytesIO(base64.b64decode(row["image"]))).verify()
    yn = pd.read_csv(shapes / "ShapesVQA_YN.tsv", sep="\t")
    assert list(yn.columns) == ["index", "image", "question", "answer", "category"]
    assert set(yn["answer"]) == {"Yes", "No"}


def test_validation_split_is_apart_from_the_test_split_and_changes_nothing_else(shapes, tmp_path):
    import json

    out = tmp_path / "with-val"
    counts = write_shapesvqa(out, seed=3, num_pretrain=40, num_instruct=120, num_test=60, num_val=30, progress=False)
    assert counts["mcq_val"] == counts["yes_no_val"] == 30
    before, after = digest(shapes), digest(out)
    assert all(after[name] == sha for name, sha in before.items() if name != "scenes.json")  # drawn last
    val = pd.read_csv(out / "ShapesVQA_MCQ_val.tsv", sep="\t")
    assert list(val.columns) == MCQ_COLUMNS and len(pd.read_csv(out / "ShapesVQA_YN_val.tsv", sep="\t")) == 30
    layouts = json.loads((out / "scenes.json").read_text())
    test_layouts = {layouts[f"test_{i:06d}.png"] for i in range(60)}
    val_layouts = {layouts[f"val_{i:06d}.png"] for i in range(30)}
    assert val_layouts and not val_layouts & test_layouts


def test_synth_and_init_tiny_commands(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, "-m", "llava_moslora", *args], check=True,
                                       capture_output=True, text=True)
    run("synth", "--out", str(tmp_path / "data"), "--num_pretrain", "8", "--num_instruct", "8", "--num_test", "4")
    run("init-tiny", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "base"), "--hidden_size", "32")
    from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "base" / "llm")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "base" / "llm")
    assert llm.config.hidden_size == 32 and llm.config.vocab_size == len(tokenizer)
    tower = CLIPVisionModel.from_pretrained(tmp_path / "base" / "vision")
    assert tower.config.image_size == 64 and AutoImageProcessor.from_pretrained(tmp_path / "base" / "vision")
    # the tokenizer was trained on the data: its words are single tokens, not letters
    assert len(tokenizer.tokenize(" triangle")) <= 2


def test_training_conversations_favour_the_families_learned_last():
    import random

    from llava_moslora.demo.scenes import TRAINING_WEIGHTS, Question, weighted_sample

    pool = [Question(category, "q", "a", []) for category in TRAINING_WEIGHTS]
    rng = random.Random(0)
    drawn = [q.category for _ in range(20000) for q in weighted_sample(pool, 1, rng)]
    total = sum(TRAINING_WEIGHTS.values())
    for category, weight in TRAINING_WEIGHTS.items():
        assert drawn.count(category) / len(drawn) == pytest.approx(weight / total, abs=0.015)


def test_the_free_form_benchmark_asks_the_test_scenes_and_answers_from_them(shapes):
    """ShapesVQA_Open: every row about a held-out test image, its answer what the image's scene
    shows (scenes.json: each image's caption), every type present."""
    import json
    import re

    from llava_moslora.evaluation.benchmarks import tsv_type

    open_rows = pd.read_csv(shapes / "ShapesVQA_Open.tsv", sep="\t")
    assert list(open_rows.columns) == ["index", "image", "question", "answer", "category"]
    assert tsv_type(shapes / "ShapesVQA_Open.tsv") == "VQA"  # VLMEvalKit reads it as a free-form set
    counts = open_rows["category"].value_counts().to_dict()
    assert counts["count"] == counts["size"] == counts["place"] == 60 and counts["description"] == 15
    assert 0 < counts["color"] <= 60 and 0 < counts["shape"] <= 60
    scenes = json.loads((shapes / "scenes.json").read_text())
    mcq = pd.read_csv(shapes / "ShapesVQA_MCQ.tsv", sep="\t")
    caption_of = {image: scenes[f"test_{i:06d}.png"] for i, image in zip(mcq["index"], mcq["image"])}
    images = dict(zip(open_rows["index"], open_rows["image"]))
    pattern = re.compile(r"(small|large) (red|green|blue|yellow) (circle|square|triangle) at the (\w+ \w+)")
    for _, row in open_rows.iterrows():
        image = row["image"] if len(str(row["image"])) > 64 else images[int(row["image"])]
        caption = caption_of[image]  # a KeyError would be a row about a non-test image
        objects = pattern.findall(caption)
        question, answer = row["question"], row["answer"].rstrip(".").lower()
        expected = {
            "count": lambda: str(len(objects)),
            "color": lambda: next(c for _, c, k, _ in objects if f"the {k}?" in question),
            "shape": lambda: next(k for _, c, k, _ in objects if f"the {c} object?" in question),
            "size": lambda: next(z for z, c, k, _ in objects if f"the {c} {k}?" in question),
            "place": lambda: next(p for _, c, k, p in objects if f"the {c} {k}?" in question),
            "description": lambda: caption.rstrip(".").lower(),
        }[row["category"]]()
        assert answer == expected, (question, row["answer"], caption)
    assert len({caption_of[i if len(str(i)) > 64 else images[int(i)]] for i in open_rows["image"]}) <= 60


@pytest.mark.parametrize("prediction, answer, hit", [
    ("Red.", "Red.", True), ("red", "Red.", True), ("The red one", "Red.", False), ("2", "2.", True),
    ("Top right.", "top right", True), ("Top left.", "Top right.", False),
    ("A small blue circle at the top left and a large red square at the top right.",
     "A large red square at the top right and a small blue circle at the top left.", True),
    ("A large red square at the top right, a small blue circle at the top left and a small blue circle at the top left.",
     "A large red square at the top right and a small blue circle at the top left.", False),
    ("A large red square at the top left and a small blue circle at the top right.",
     "A large red square at the top right and a small blue circle at the top left.", False),
])
def test_free_form_answers_match_up_to_case_punctuation_articles_and_list_order(prediction, answer, hit):
    from llava_moslora.evaluation.builtin import free_form_hit

    assert free_form_hit(prediction, answer) is hit
