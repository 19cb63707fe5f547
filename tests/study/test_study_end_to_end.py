"""A two-variant, one-seed, few-step study through the real launch scripts: interrupted by a
SIGKILL of the whole process tree in the middle of a checkpoint save, then run again: it resumes
that run, keeps the finished ones, and reports; a third call launches nothing."""
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from helpers import ROOT, kill_tree, script_env
from llava_moslora.study.grid import DEFAULT_GRID, merge

pytestmark = pytest.mark.slow
DROP = {"moslora_frozen": None, "moslora_identity": None, "moelora": None}


def tiny_grid(tmp_path):
    raw = merge(yaml.safe_load(DEFAULT_GRID.read_text()), {
        "data": {"synth": {"seed": 0, "num_pretrain": 48, "num_instruct": 96, "num_test": 16, "num_val": 8}},
        "stage1": {"bases": str(ROOT / "bases" / "shapes-tiny"),
                   "flags": {"max_steps": 2, "save_strategy": "no", "logging_steps": 1}},
        "seeds": [0],
        "launch": {"GLOBAL_BATCH": 8, "PER_DEVICE_BATCH": 4},
        "lr_grid": [2e-3, 5e-3],
        "budgets": {"r4": None, "r32": {"lr_grid": [2e-3, 5e-3]}},  # one budget: runs/<variant>/...
        "flags": {"max_steps": 6, "save_steps": 2, "logging_steps": 1},
        "variants": DROP,
        # the test split: a benchmark of one's own (5 options, a name nobody listed) beside a shipped one
        "evaluation": {"test": "MY_SCIENCEQA,ShapesVQA_YN"}})
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def study(grid, out, **env):
    return subprocess.Popen([sys.executable, "-m", "llava_moslora", "study", "--grid", str(grid), "--out", str(out)],
                            cwd=ROOT, env=script_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def finish(process, timeout=900):
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode == 0, output[-5000:]
    return output


def own_benchmark(data_dir, scratch):
    """MY_SCIENCEQA.tsv in the study's data root: held-out ShapesVQA rows with a fifth option,
    which is the right one in some rows."""
    import pandas as pd

    from llava_moslora.demo.synth import write_shapesvqa

    write_shapesvqa(scratch, seed=5, num_pretrain=0, num_instruct=0, num_test=12, progress=False)
    table = pd.read_csv(scratch / "ShapesVQA_MCQ.tsv", sep="\t").assign(E="none of these")
    for row in range(0, len(table), 3):
        table.loc[row, "E"], table.loc[row, "answer"] = table.loc[row, table.loc[row, "answer"]], "E"
    data_dir.mkdir(parents=True)
    table.to_csv(data_dir / "MY_SCIENCEQA.tsv", sep="\t", index=False)


# Slowest ten of the suite (CI, 2 cores): ~117 s. One real study (2 variants x 2 seeds, each a 2-process
# launch of both stages, evaluated) killed mid-save and resumed: fairness, resume and report need it whole.
def test_study_is_fair_resumable_and_reported(tmp_path):
    grid, out = tiny_grid(tmp_path), tmp_path / "study"
    own_benchmark(out / "data", tmp_path / "scratch")
    instrumentation, marker = tmp_path / "instrumentation", tmp_path / "saving-step-4"
    instrumentation.mkdir()
    shutil.copy(ROOT / "tests" / "train" / "slow_save.py", instrumentation / "sitecustomize.py")
    first = study(grid, out, LLAVA_MOSLORA_TEST_SLOW_SAVE=f"4:{marker}",
                  PYTHONPATH=f"{instrumentation}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    deadline = time.time() + 600
    while not marker.exists():  # the first stage-2 run, inside its step-4 save
        assert first.poll() is None and time.time() < deadline, first.communicate()[0][-5000:]
        time.sleep(0.2)
    kill_tree(first.pid)  # the study, the launcher and both ranks, as a node failure would
    first.communicate(timeout=60)
    interrupted = out / "runs" / "lora" / "lr0.002-seed0"
    assert [a["finished"] for a in json.loads((interrupted / "run.json").read_text())["attempts"]] == [False]
    assert (interrupted / "model" / "checkpoint-2").is_dir()

    output = finish(study(grid, out))
    assert "[1/4] search lora/lr0.002-seed0" in output and "study done" in output
    assert "resuming from" in (interrupted / "train.log").read_text()
    assert [a["finished"] for a in json.loads((interrupted / "run.json").read_text())["attempts"]] == [False, True]
    report = (out / "report" / "study.md").read_text()
    for expected in ("| lora |", "| moslora |", "data order, seed 0: the same in all 4 runs", "Chosen at an edge",
                     "optimizer steps: the same for every run, 6", "## Learning-rate search"):
        assert expected in report, expected
    assert "MY_SCIENCEQA" in report
    for path in ("abilities/abilities.md", "abilities/radar_MY_SCIENCEQA.png", "loss_curves.png",
                 "abilities_all/abilities.md"):
        assert (out / "report" / path).is_file(), path

    # fairness, measured on what actually ran: same steps, batch and data order; equal budgets
    summary = json.loads((out / "report" / "study.json").read_text())["budgets"]["r32"]
    runs = sorted((out / "runs").glob("*/*/run.json"))
    assert len(runs) == 4  # 2 variants x 2 learning rates on seed 0; the chosen ones are the final runs
    metrics = {p.parent.relative_to(out / "runs").as_posix(): json.loads((p.parent / "model" / "train_metrics.json")
                                                                         .read_text()) for p in runs}
    assert {m["data_order"] for m in metrics.values()} == {metrics["lora/lr0.005-seed0"]["data_order"]}
    assert {(m["global_step"], m["global_batch"]) for m in metrics.values()} == {(6, 8)}
    assert metrics["lora/lr0.002-seed0"]["resumed_from"].endswith("checkpoint-2")
    for key, m in metrics.items():
        variant = key.split("/")[0]
        assert m["trainable_by_component"]["language_model"] == summary["variants"][variant]["adapter_parameters"]
    assert summary["variants"]["moslora"]["rank"] == 29 and summary["variants"]["lora"]["rank"] == 32
    assert 0.99 < summary["variants"]["moslora"]["budget_ratio"] <= 1.0
    for variant, scores in summary["search"].items():  # the best validation score was chosen
        assert summary["chosen_lr"][variant] == float(max(scores, key=scores.get))
    chosen = out / "runs" / "lora" / f"lr{summary['chosen_lr']['lora']:g}-seed0"
    tensors = set(load_file(chosen / "model" / "trainable.safetensors"))
    assert all(".multi_modal_projector." in n or ".lora_" in n for n in tensors)
    assert (chosen / "eval-test" / "done.json").is_file() and not list((chosen / "model").glob("checkpoint-*"))

    # a finished run is never run again
    attempts = {p: len(json.loads(p.read_text())["attempts"]) for p in runs}
    again = finish(study(grid, out))
    assert {p: len(json.loads(p.read_text())["attempts"]) for p in runs} == attempts
    assert "study done" in again and "stage 1 (projector alignment)" not in again
