"""Evaluation under torchrun with the builtin backend (`NUM_GPUS=2 bash eval/run.sh`, 2 gloo
ranks): each rank answers its share of the rows, rank 0 writes one prediction file and scores it,
the same files as one rank; a rank's failure reaches every rank instead of leaving them waiting;
each rank joins the process group on its own GPU."""
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import ROOT
from llava_moslora.evaluation import ranks

pytestmark = pytest.mark.slow

# Loaded at interpreter start in every process (PYTHONPATH): counts the rows each generation
# answers, into $ROWS_ANSWERED_LOG, by wrapping the model class's generate_batch once it exists.
COUNTER = '''
import importlib.abc, importlib.util, os, sys

class CountAnsweredRows(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "llava_moslora.evaluation.vlm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            generate_batch = module.LlavaMoSLoRAMixin.generate_batch

            def counted(self, messages, dataset=None):
                with open(os.environ["ROWS_ANSWERED_LOG"], "a") as log:
                    log.write(f"{os.environ.get('RANK', '0')} {dataset} {len(messages)}\\n")
                return generate_batch(self, messages, dataset)
            module.LlavaMoSLoRAMixin.generate_batch = counted
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, CountAnsweredRows())
'''


@pytest.fixture(scope="module")
def lmu_root(tmp_path_factory):
    """200 rows of each ShapesVQA kind."""
    from llava_moslora.demo.synth import write_shapesvqa

    root = tmp_path_factory.mktemp("lmudata")
    write_shapesvqa(root, seed=3, num_pretrain=0, num_instruct=0, num_test=200, progress=False)
    return root


def run_eval(checkpoint, root, work, processes, tmp_path, benchmarks="ShapesVQA_MCQ,ShapesVQA_YN"):
    """eval/run.sh with `processes` ranks; returns (process, {(rank, benchmark): rows answered})."""
    counter_dir = tmp_path / "counter"
    counter_dir.mkdir(exist_ok=True)
    (counter_dir / "sitecustomize.py").write_text(COUNTER)
    log = tmp_path / f"answered-{work.name}.log"
    log.unlink(missing_ok=True)
    env = {**os.environ, "PYTHON": sys.executable, "NUM_GPUS": str(processes), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(counter_dir), os.environ.get("PYTHONPATH", "")]),
           "ROWS_ANSWERED_LOG": str(log), "EVAL_ARGS": f"--data-root {root} --backend builtin", "BATCH_SIZE": "8"}
    result = subprocess.run(["bash", str(ROOT / "eval" / "run.sh"), str(checkpoint), benchmarks, str(work)],
                            env=env, capture_output=True, text=True, timeout=600)
    answered = {}
    for line in (log.read_text().splitlines() if log.is_file() else []):
        rank, dataset, rows = line.split()
        answered[(int(rank), dataset)] = answered.get((int(rank), dataset), 0) + int(rows)
    return result, answered


def result_files(work):
    return sorted(p.name for p in work.iterdir() if p.is_file() and p.name != "checkpoint.json")


@pytest.fixture(scope="module")
def one_rank(tiny_checkpoint, lmu_root, tmp_path_factory):
    """The reference: both benchmarks evaluated by one process."""
    tmp = tmp_path_factory.mktemp("one")
    result, answered = run_eval(tiny_checkpoint, lmu_root, tmp / "w", 1, tmp)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert answered == {(0, "ShapesVQA_MCQ"): 200, (0, "ShapesVQA_YN"): 200}
    return tmp / "w"


def test_two_ranks_answer_each_row_once_and_write_what_one_rank_writes(one_rank, tiny_checkpoint, lmu_root, tmp_path):
    two, answered = run_eval(tiny_checkpoint, lmu_root, tmp_path / "w", 2, tmp_path)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    print(f"\nrows answered by two ranks: {answered}")
    for dataset in ("ShapesVQA_MCQ", "ShapesVQA_YN"):
        assert answered[(0, dataset)] == answered[(1, dataset)] == 100  # each row once, in total
    work = tmp_path / "w"
    assert result_files(work) == result_files(one_rank)  # no rank's partial file left behind
    for dataset in ("ShapesVQA_MCQ", "ShapesVQA_YN"):
        predictions = [pd.read_excel(w / f"{tiny_checkpoint.name}_{dataset}.xlsx") for w in (one_rank, work)]
        pd.testing.assert_frame_equal(predictions[0], predictions[1])
        assert predictions[0]["prediction"].nunique() > 1  # answers that differ by row
    for name in ("ShapesVQA_MCQ_acc.csv", "ShapesVQA_YN_score.csv"):
        stem = f"{tiny_checkpoint.name}_{name}"
        assert (work / stem).read_text() == (one_rank / stem).read_text()
    assert (work / "results.json").is_file() and "2 scored" in two.stdout
    assert two.stdout.count("ShapesVQA_MCQ  scored") == 1  # one summary, rank 0's


def test_two_ranks_go_on_from_one_ranks_saved_answers(one_rank, tiny_checkpoint, lmu_root, tmp_path):
    """An interrupted one-rank run's answers are kept; two ranks answer only the rest."""
    from llava_moslora.evaluation.builtin import partial_file, prediction_file

    answers = pd.read_excel(prediction_file(one_rank, tiny_checkpoint.name, "ShapesVQA_YN"))
    work = tmp_path / "resumed"
    work.mkdir()
    kept = answers.iloc[:70]  # rows 0-69 answered before the interruption
    partial_file(prediction_file(work, tiny_checkpoint.name, "ShapesVQA_YN")).write_text(
        "".join(json.dumps({"index": int(i), "prediction": str(p)}) + "\n" for i, p in zip(kept["index"], kept["prediction"])))
    resumed, answered = run_eval(tiny_checkpoint, lmu_root, work, 2, tmp_path, "ShapesVQA_YN")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "reusing 70 predictions" in resumed.stdout
    assert answered == {(0, "ShapesVQA_YN"): 65, (1, "ShapesVQA_YN"): 65}  # 130 rows left, split evenly
    pd.testing.assert_frame_equal(pd.read_excel(prediction_file(work, tiny_checkpoint.name, "ShapesVQA_YN")), answers)


def test_a_failure_on_one_rank_reaches_every_rank(tiny_checkpoint, lmu_root, tmp_path):
    """A row only rank 1 answers has an image that is not one: the benchmark fails on both ranks
    (rank 0 names rank 1), nothing waits for ever, and the next benchmark is still scored."""
    root = tmp_path / "lmudata"
    root.mkdir()
    table = pd.read_csv(lmu_root / "ShapesVQA_YN.tsv", sep="\t")
    table.loc[1, "image"] = base64.b64encode(b"not an image, but long enough to be no row index" * 2).decode()
    table.to_csv(root / "Broken_YN.tsv", sep="\t", index=False)
    (root / "ShapesVQA_MCQ.tsv").symlink_to(lmu_root / "ShapesVQA_MCQ.tsv")
    result, _ = run_eval(tiny_checkpoint, root, tmp_path / "w", 2, tmp_path, "Broken_YN,ShapesVQA_MCQ")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]  # something was scored
    assert "answering Broken_YN failed on rank 1 of 2" in result.stdout, result.stdout[-3000:]
    assert "ShapesVQA_MCQ  scored" in result.stdout
    assert (tmp_path / "w" / "Broken_YN.rank1.error.log").is_file()  # the failing rank's own traceback


def test_each_rank_loads_onto_its_own_gpu(monkeypatch):
    chosen, joined = [], []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kwargs: joined.append(backend))
    assert ranks.init_distributed() == (6, 4)
    assert chosen == [2] and joined == ["nccl"]


def test_one_process_joins_nothing(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: pytest.fail("no group for one rank"))
    assert ranks.init_distributed() == (0, 1)
    assert ranks.on_every_rank(lambda: "answered", "a job") == "answered"
