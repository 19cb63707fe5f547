"""`llava-moslora eval`: suites, one work directory per checkpoint, the builtin backend end to end."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from helpers import ROOT
from llava_moslora.evaluation.runner import claim_work_dir, resolve_benchmarks, suites
from llava_moslora.evaluation.vlm import vlmeval_available


def test_suites_expand_and_names_pass_through():
    assert suites()["shapes"] == ["ShapesVQA_MCQ", "ShapesVQA_YN"]
    assert "MMBench_DEV_EN" in suites()["paper"] and "MME" in suites()["paper"]
    assert resolve_benchmarks("shapes, MME,ShapesVQA_YN") == ["ShapesVQA_MCQ", "ShapesVQA_YN", "MME"]
    with pytest.raises(ValueError, match="no benchmarks"):
        resolve_benchmarks(" , ")


def test_a_work_dir_belongs_to_one_checkpoint(tmp_path):
    claim_work_dir(tmp_path / "work", tmp_path / "ckpt-a")
    claim_work_dir(tmp_path / "work", tmp_path / "ckpt-a")  # the same checkpoint again: resume
    with pytest.raises(ValueError, match="distinct --work-dir"):
        claim_work_dir(tmp_path / "work", tmp_path / "ckpt-b")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "llava_moslora", *args], capture_output=True, text=True)


def test_eval_command_writes_vlmevalkits_files(tiny_checkpoint, shapes_root, tmp_path):
    work = tmp_path / "work"
    result = cli("eval", "--model", str(tiny_checkpoint), "--benchmarks", "shapes", "--work-dir", str(work),
                 "--data-root", str(shapes_root), "--backend", "builtin")
    assert result.returncode == 0, result.stdout + result.stderr
    name = tiny_checkpoint.name
    acc = pd.read_csv(work / f"{name}_ShapesVQA_MCQ_acc.csv")
    assert list(acc.columns[:2]) == ["split", "Overall"] and 0 <= acc["Overall"].iloc[0] <= 1
    predictions = pd.read_excel(work / f"{name}_ShapesVQA_MCQ.xlsx")
    assert "prediction" in predictions and "image" not in predictions and len(predictions) == 6
    score = pd.read_csv(work / f"{name}_ShapesVQA_YN_score.csv")
    assert score.columns[0] == "Overall" and 0 <= score["Overall"].iloc[0] <= 100
    assert "ShapesVQA_MCQ" in result.stdout and "Overall" in result.stdout


def test_eval_command_names_what_is_missing(tiny_checkpoint, tmp_path):
    result = cli("eval", "--model", str(tiny_checkpoint), "--benchmarks", "NoSuchSet", "--work-dir",
                 str(tmp_path / "w"), "--data-root", str(tmp_path), "--backend", "builtin")
    assert result.returncode == 2 and "NoSuchSet.tsv not found" in result.stdout
    result = cli("eval", "--model", str(tmp_path / "nope"), "--benchmarks", "shapes", "--work-dir", str(tmp_path / "w"))
    assert result.returncode == 2 and "checkpoint directory not found" in result.stdout


@pytest.mark.skipif(vlmeval_available(), reason="checks the message shown when vlmeval is absent")
def test_asking_for_vlmeval_without_it_says_how_to_install(tiny_checkpoint, tmp_path):
    result = cli("eval", "--model", str(tiny_checkpoint), "--benchmarks", "MME", "--work-dir", str(tmp_path / "w"),
                 "--backend", "vlmeval")
    assert result.returncode == 2 and "pip install -e VLMEvalKit" in result.stdout


def test_eval_run_sh_evaluates_a_suite_and_reports_abilities(tiny_checkpoint, shapes_root, tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable,
           "EVAL_ARGS": f"--data-root {shapes_root} --backend builtin"}
    result = subprocess.run(["bash", str(ROOT / "eval" / "run.sh"), str(tiny_checkpoint), "shapes", str(work)],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (work / "abilities" / "abilities.md").is_file() and "ShapesVQA_MCQ" in result.stdout
    usage = subprocess.run(["bash", str(ROOT / "eval" / "run.sh")], capture_output=True, text=True)
    assert usage.returncode == 2 and "CHECKPOINT" in usage.stdout
