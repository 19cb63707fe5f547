"""`llava-moslora prepare-mc`: Visual7W and VMCBench, a few rows written here in the layouts their
authors ship, become training data that validate-data accepts and a TSV the builtin backend scores."""
import io
import json
import subprocess
import sys

import pandas as pd
import pytest
from PIL import Image

from helpers import ROOT
from llava_moslora.data.records import load_samples
from llava_moslora.evaluation.benchmarks import tsv_type


def png(colour):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def prepare(*args):
    return subprocess.run([sys.executable, "-m", "llava_moslora", "prepare-mc", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_visual7w_train_split_trains_and_the_first_test_questions_are_scored(tmp_path):
    """dataset_v7w_telling.json: images[].{image_id, filename, split, qa_pairs[].{qa_id, question,
    answer, multiple_choices, type}}."""
    (tmp_path / "images").mkdir()
    images = []
    for k, split in enumerate(["train", "train", "val", "test", "test"]):
        filename = f"v7w_{100 + k}.jpg"
        Image.new("RGB", (20, 16), (40 * k, 90, 200)).save(tmp_path / "images" / filename, format="JPEG")
        images.append({"image_id": 100 + k, "filename": filename, "split": split, "qa_pairs": [
            {"qa_id": 10 * k + j, "image_id": 100 + k, "question": f"What is shown {j}?", "answer": "A dog.",
             "multiple_choices": ["A cat.", "A bird.", "A horse."], "type": "what"} for j in range(2)]})
    (tmp_path / "dataset_v7w_telling.json").write_text(json.dumps({"images": images}))
    out = tmp_path / "v7w"
    result = prepare("--task", "visual7w", "--source", tmp_path / "dataset_v7w_telling.json",
                     "--image_folder", tmp_path / "images", "--out", out, "--eval_rows", "3")
    assert result.returncode == 0, result.stderr
    assert "4 training samples" in result.stdout and "3 scored rows" in result.stdout
    samples = list(load_samples(str(out / "train.json")))
    assert len(samples) == 4
    question, reply = samples[0].turns[0]
    letter = reply.removeprefix("The answer is ").removesuffix(".")
    assert question.startswith("<image>\nWhat is shown 0?\nA. ") and f"\n{letter}. A dog." in question
    table = pd.read_csv(out / "Visual7W_MCQ.tsv", sep="\t")
    assert list(table["index"]) == [30, 31, 40]  # test questions only, the first 3
    assert all(row[row["answer"]] == "A dog." for _, row in table.iterrows())
    assert tsv_type(out / "Visual7W_MCQ.tsv") == "MCQ"
    again = prepare("--task", "visual7w", "--source", tmp_path / "dataset_v7w_telling.json",
                    "--image_folder", tmp_path / "images", "--out", tmp_path / "again", "--eval_rows", "3")
    assert again.returncode == 0 and (tmp_path / "again" / "train.json").read_text() == (out / "train.json").read_text()


def test_vmcbench_first_rows_train_and_the_rest_are_scored(tmp_path):
    """suyc21/VMCBench's dev parquet: index, question, A-D, answer, category, image {bytes, path}."""
    rows = [{"index": k, "question": f"Which colour {k}?", "A": "red", "B": "green", "C": "blue", "D": "grey",
             "answer": "ABCD"[k % 4], "category": ["ChartQA", "MMMU"][k % 2],
             "image": {"bytes": png((60 * (k % 4), 100, 50)), "path": None}} for k in range(6)]
    pd.DataFrame(rows).to_parquet(tmp_path / "dev-00000-of-00001.parquet")
    out = tmp_path / "vmc"
    result = prepare("--task", "vmcbench", "--source", tmp_path / "dev-00000-of-00001.parquet", "--out", out,
                     "--train_rows", "4")
    assert result.returncode == 0, result.stderr
    samples = list(load_samples(str(out / "train.json")))
    assert [s.id for s in samples] == ["vmcbench-0", "vmcbench-1", "vmcbench-2", "vmcbench-3"]
    assert samples[1].turns[0][1] == "The answer is B."
    assert Image.open(out / "images" / "vmcbench-1.png").size == (20, 16)
    table = pd.read_csv(out / "VMCBench_MCQ.tsv", sep="\t")
    assert list(table["index"]) == [4, 5] and list(table["answer"]) == ["A", "B"]
    assert list(table["category"]) == ["ChartQA", "MMMU"]


def test_a_file_of_another_layout_is_said_in_one_line(tmp_path):
    pd.DataFrame([{"question": "?", "answer": "A"}]).to_parquet(tmp_path / "other.parquet")
    result = prepare("--task", "vmcbench", "--source", tmp_path / "other.parquet", "--out", tmp_path / "o")
    assert result.returncode == 2 and "lacks VMCBench's columns" in result.stderr
    (tmp_path / "list.json").write_text("[]")
    result = prepare("--task", "visual7w", "--source", tmp_path / "list.json", "--image_folder", tmp_path,
                     "--out", tmp_path / "o")
    assert result.returncode == 2 and "is not Visual7W's telling JSON" in result.stderr
