"""Batched evaluation: the same answers as one row at a time, for every kind of benchmark and of
checkpoint, in fewer forward calls; and a run killed in the middle answers only what it lost."""
import json
import os
import signal
import subprocess
import sys

import pandas as pd
import pytest

from llava_moslora.evaluation.batching import answer_rows
from llava_moslora.evaluation.builtin import decode_image, partial_file, predict_tsv, score_predictions
from llava_moslora.evaluation.vlm import model_class

KINDS = {"Shapes_MCQ": "MCQ", "Shapes_YN": "Y/N", "Shapes_Free": "VQA"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An MCQ, a yes/no and a free-form TSV of 24 rows each."""
    from llava_moslora.demo.synth import write_shapesvqa

    root = tmp_path_factory.mktemp("batching")
    write_shapesvqa(root, seed=3, num_pretrain=0, num_instruct=0, num_test=24, progress=False)
    (root / "ShapesVQA_MCQ.tsv").rename(root / "Shapes_MCQ.tsv")
    (root / "ShapesVQA_YN.tsv").rename(root / "Shapes_YN.tsv")
    table = pd.read_csv(root / "Shapes_MCQ.tsv", sep="\t")
    table.drop(columns=list("ABCD")).assign(answer="circle").to_csv(root / "Shapes_Free.tsv", sep="\t", index=False)
    return root


@pytest.fixture(scope="module")
def quickstart_style(tmp_path_factory):
    """A stage-2 checkpoint on the shipped pretrained bases (MoSLoRA, small random adapters): it
    answers in its domain, as the quickstart's does. (A model of random weights rambles in near
    ties, where a batched matmul's other summation order can pick the other token: one of 24
    64-token free-form answers did, 30 tokens in.)"""
    from helpers import ROOT, save_tiny_checkpoint

    bases = ROOT / "bases" / "shapes-tiny"
    return save_tiny_checkpoint({"vision_tower": str(bases / "vision"), "language_model": str(bases / "llm")},
                                tmp_path_factory.mktemp("ckpt") / "quickstart-style", scale=0.02)


@pytest.fixture(scope="module")
def merged(quickstart_style, tmp_path_factory):
    from llava_moslora.model.export import merge_checkpoint

    return merge_checkpoint(quickstart_style, tmp_path_factory.mktemp("merged") / "merged")


def one_at_a_time(model, tsv, folder, calls):
    """The per-sample route: generate() on each row's prompt, as VLMEvalKit's infer_data does;
    also each row's prompt length and forward calls (one per new token)."""
    table = pd.read_csv(tsv, sep="\t")

    def dump(line):
        path = folder / f"{tsv.stem}-{line['index']}.png"
        decode_image(line["image"]).save(path)
        return [str(path)]

    model.set_dump_image(dump)
    answers, lengths, steps = [], [], []
    for _, line in table.iterrows():
        message, before = model.build_prompt(line, tsv.stem), len(calls)
        answers.append(model.generate(message, tsv.stem))
        lengths.append(model.prompt_length(message, tsv.stem))
        steps.append(len(calls) - before)
    return answers, lengths, steps


def expected_calls(lengths, steps, batch_size):
    """Forward calls of the batched route: per batch (shortest prompts first), its longest answer's."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return sum(max(steps[i] for i in order[k:k + batch_size]) for k in range(0, len(order), batch_size))


def counted(model):
    """Counts the language model's forward calls (one per generated token and batch)."""
    calls = []
    model.answerer.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


@pytest.mark.parametrize("which", ["stage", "merged", "qlora"])
def test_batched_answers_equal_one_at_a_time(which, quickstart_style, merged, root, tmp_path):
    path = merged if which == "merged" else quickstart_style
    model = model_class(False)(path, bits=4 if which == "qlora" else None, benchmark_kinds=KINDS)
    calls = counted(model)
    for name in KINDS:
        tsv = root / f"{name}.tsv"
        alone, lengths, steps = one_at_a_time(model, tsv, tmp_path, calls)
        scores = set()
        for batch_size in (1, 4, 16):
            del calls[:]
            predictions = predict_tsv(lambda: model, tsv, tmp_path / f"{name}-{batch_size}", "m", progress=False,
                                      batch_size=batch_size)
            batched = pd.read_excel(predictions)["prediction"].fillna("").astype(str).tolist()
            assert batched == alone, (name, batch_size)
            assert len(calls) == expected_calls(lengths, steps, batch_size), (name, batch_size)
            files = score_predictions(tsv, predictions, KINDS[name])
            scores.add((files.get("acc") or files["score"]).read_bytes())
        assert len(scores) == 1  # byte-identical score files whatever the batch
        # 24 rows one at a time: a forward per new token of each; at 16: two batches, each as long as its longest
        assert expected_calls(lengths, steps, 1) == sum(steps) and expected_calls(lengths, steps, 16) <= 2 * max(steps)


def test_rows_come_back_in_their_order_and_halve_on_out_of_memory(monkeypatch):
    import torch

    class Model:
        def __init__(self):
            self.sizes = []

        def prompt_length(self, message, dataset):
            return len(message)

        def generate_batch(self, messages, dataset):
            self.sizes.append(len(messages))
            if len(messages) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory")
            return [f"answer to {m}" for m in messages]

    model = Model()
    rows = [(i, "x" * (10 - i)) for i in range(7)]  # the last rows have the shortest prompts
    saved, cleared = [], []
    # the cache is emptied once the failed batch's traceback (and the tensors it holds) is gone
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: cleared.append(sys.exc_info()[0]))
    answers = answer_rows(model, rows, "D", 8, on_batch=saved.append, progress=False)
    assert cleared == [None, None]
    assert answers == {i: f"answer to {m}" for i, m in rows}
    assert model.sizes == [7, 3] + [1] * 7  # 7 rows (of a batch of 8) -> 3 -> 1
    assert [list(batch) for batch in saved][:2] == [[6], [5]]  # shortest first, one by one after the halvings
    with pytest.raises(ValueError, match="batch-size"):
        answer_rows(model, rows, "D", 0)


KILLED_RUN = """
import os, signal, sys
from pathlib import Path
from llava_moslora.evaluation.builtin import predict_tsv
from llava_moslora.evaluation.vlm import model_class

model = model_class(False)(sys.argv[1], benchmark_kinds={"Shapes_MCQ": "MCQ"})
batches = []
original = model.generate_batch

def generate_batch(messages, dataset=None):
    batches.append(len(messages))
    if len(batches) == 3:  # in the middle of the third batch, two saved
        os.kill(os.getpid(), signal.SIGKILL)
    return original(messages, dataset)

model.generate_batch = generate_batch
predict_tsv(lambda: model, Path(sys.argv[2]), Path(sys.argv[3]), "m", progress=False, batch_size=4)
"""


def test_a_killed_run_answers_only_the_rows_it_had_not_saved(tiny_checkpoint, root, tmp_path):
    tsv, work = root / "Shapes_MCQ.tsv", tmp_path / "work"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(tiny_checkpoint), str(tsv), str(work)],
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    saved = [json.loads(line) for line in partial_file(work / "m_Shapes_MCQ.xlsx").read_text().splitlines()]
    assert len(saved) == 8 and not (work / "m_Shapes_MCQ.xlsx").exists()

    model = model_class(False)(tiny_checkpoint, benchmark_kinds={"Shapes_MCQ": "MCQ"})
    asked = []
    original = model.generate_batch
    model.generate_batch = lambda messages, dataset=None: asked.extend(messages) or original(messages, dataset)
    predictions = predict_tsv(lambda: model, tsv, work, "m", progress=False, batch_size=4)
    assert len(asked) == 24 - 8  # the saved rows are not asked again
    assert not partial_file(predictions).exists()
    whole = predict_tsv(lambda: model, tsv, tmp_path / "whole", "m", progress=False, batch_size=4)
    assert pd.read_excel(predictions).equals(pd.read_excel(whole))
    assert os.path.getsize(predictions) > 0
