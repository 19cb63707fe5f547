"""`llava-moslora eval`: suites, one work directory per checkpoint, the plan printed before any
model is loaded, failures that do not stop the others, modes and dtypes, the builtin backend end
to end."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch

from helpers import ROOT
from llava_moslora.evaluation import vlm
from llava_moslora.evaluation.benchmarks import resolve_benchmarks, suites
from llava_moslora.evaluation.runner import PlanRefused, claim_work_dir, evaluate_checkpoint, exit_code
from llava_moslora.evaluation.toolkit import vlmeval_available
from llava_moslora.model import inference_dtype


def test_suites_expand_and_names_pass_through():
    assert suites()["shapes"] == ["ShapesVQA_MCQ", "ShapesVQA_YN", "ShapesVQA_Open"]
    assert "MMBench_DEV_EN" in suites()["moslora-paper"] and "MME" in suites()["moslora-paper"]
    assert resolve_benchmarks("shapes, MME,ShapesVQA_YN") == ["ShapesVQA_MCQ", "ShapesVQA_YN", "ShapesVQA_Open", "MME"]
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
    args = ["eval", "--model", str(tiny_checkpoint), "--benchmarks", "NoSuchSet", "--data-root", str(tmp_path),
            "--backend", "builtin"]
    result = cli(*args, "--work-dir", str(tmp_path / "w"))  # nothing could be scored: exit 1, the reason in the plan and the summary
    assert result.returncode == 1 and "SKIPPED: no " in result.stdout and "NoSuchSet.tsv" in result.stdout
    assert "1 skipped" in result.stdout
    result = cli(*args, "--work-dir", str(tmp_path / "strict"), "--strict")  # stops before anything runs
    assert result.returncode == 2 and "would be skipped" in result.stdout
    assert not (tmp_path / "strict").exists()
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


@pytest.fixture
def loads(monkeypatch):
    """Records model loads (and the plan's printing) in order."""
    events = []
    real = vlm.load_checkpoint

    def load(path, **kwargs):
        events.append(("load", kwargs.get("dtype")))
        return real(path, **kwargs)
    monkeypatch.setattr(vlm, "load_checkpoint", load)
    for variable in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LOCAL_LLM", "SiliconFlow_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    return events


def test_paper_suite_plan_comes_before_any_model(tiny_checkpoint, shapes_root, tmp_path, loads):
    """No judge configured: the plan says at start that MathVista_MINI and MMVet are skipped, and
    why; the rest of the moslora-paper suite has no local TSV here; the shapes sets are scored."""
    def log(text):
        loads.append(("log", text))
    outcomes = evaluate_checkpoint(tiny_checkpoint, resolve_benchmarks("moslora-paper,shapes"), tmp_path / "w",
                                   backend="builtin", root=str(shapes_root), log=log, progress=False)
    kinds = [kind for kind, _ in loads]
    assert kinds[0] == "log" and "load" in kinds and kinds.count("load") == 1
    plan = loads[0][1]
    for line in plan.splitlines():
        if line.startswith(("MathVista_MINI", "MMVet")):
            assert "SKIPPED: needs an LLM judge" in line
    assert {name: o.status for name, o in outcomes.items()} == {
        **{name: "skipped" for name in suites()["moslora-paper"]}, "ShapesVQA_MCQ": "scored", "ShapesVQA_YN": "scored",
        "ShapesVQA_Open": "scored"}
    assert "needs an LLM judge (run.py uses gpt-4-turbo)" in outcomes["MMVet"].detail
    assert exit_code(outcomes, strict=False) == 0 and exit_code(outcomes, strict=True) == 1
    with pytest.raises(PlanRefused, match="MathVista_MINI"):
        evaluate_checkpoint(tiny_checkpoint, resolve_benchmarks("moslora-paper,shapes"), tmp_path / "w2",
                            backend="builtin", root=str(shapes_root), strict=True, log=lambda text: None)
    assert kinds.count("load") == 1 and not (tmp_path / "w2").exists()


def broken_copy(shapes_root, tmp_path):
    """The shapes sets plus Broken_MCQ, whose images do not decode."""
    root = tmp_path / "lmu"
    root.mkdir()
    for name in ("ShapesVQA_MCQ", "ShapesVQA_YN"):
        shutil.copy(shapes_root / f"{name}.tsv", root)
    table = pd.read_csv(shapes_root / "ShapesVQA_MCQ.tsv", sep="\t")
    table["image"] = "not-an-image-" * 8
    table.to_csv(root / "Broken_MCQ.tsv", sep="\t", index=False)
    return root


def test_a_failing_benchmark_does_not_stop_the_others(tiny_checkpoint, shapes_root, tmp_path):
    root = broken_copy(shapes_root, tmp_path)
    args = ["eval", "--model", str(tiny_checkpoint), "--benchmarks", "ShapesVQA_MCQ,Broken_MCQ,ShapesVQA_YN",
            "--data-root", str(root), "--backend", "builtin"]
    result = cli(*args, "--work-dir", str(tmp_path / "w"))
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout[result.stdout.index("status"):]
    assert "2 scored, 1 failed" in summary
    broken = next(line for line in summary.splitlines() if line.startswith("Broken_MCQ"))
    assert "failed" in broken and "Error" in broken
    traceback_file = tmp_path / "w" / "Broken_MCQ.error.log"  # the whole cause is kept, and named
    assert str(traceback_file) in broken and traceback_file.read_text().startswith("Traceback (most recent call last)")
    assert (tmp_path / "w" / f"{tiny_checkpoint.name}_ShapesVQA_YN_score.csv").is_file()
    strict = cli(*args, "--work-dir", str(tmp_path / "w"), "--strict")
    assert strict.returncode == 1 and "2 scored, 1 failed" in strict.stdout


def test_infer_now_score_later(tiny_checkpoint, shapes_root, tmp_path, loads):
    name, benchmarks = tiny_checkpoint.name, ["ShapesVQA_MCQ", "ShapesVQA_YN"]
    run = dict(backend="builtin", root=str(shapes_root), log=lambda text: None, progress=False)
    predicted = evaluate_checkpoint(tiny_checkpoint, benchmarks, tmp_path / "w", mode="infer", **run)
    assert {o.status for o in predicted.values()} == {"predicted"}
    assert (tmp_path / "w" / f"{name}_ShapesVQA_MCQ.xlsx").is_file()
    assert not list((tmp_path / "w").glob("*_acc.csv")) and len(loads) == 1
    scored = evaluate_checkpoint(tiny_checkpoint, benchmarks, tmp_path / "w", mode="eval", **run)
    assert {o.status for o in scored.values()} == {"scored"} and len(loads) == 1  # no model for --mode eval
    again = evaluate_checkpoint(tiny_checkpoint, benchmarks, tmp_path / "w", mode="all", **run)
    assert len(loads) == 1  # every row already answered: reused, nothing loaded
    fresh = evaluate_checkpoint(tiny_checkpoint, benchmarks, tmp_path / "fresh", mode="all", **run)
    for benchmark, kind in (("ShapesVQA_MCQ", "acc"), ("ShapesVQA_YN", "score")):
        assert scored[benchmark].files[kind].read_text() == fresh[benchmark].files[kind].read_text()
        assert again[benchmark].files[kind].read_text() == fresh[benchmark].files[kind].read_text()
    empty = evaluate_checkpoint(tiny_checkpoint, benchmarks, tmp_path / "empty", mode="eval", **run)
    assert {o.status for o in empty.values()} == {"failed"} and "no predictions" in empty["ShapesVQA_MCQ"].detail


def test_dtype_choice(tiny_checkpoint, shapes_root, tmp_path, loads, monkeypatch):
    assert inference_dtype("auto", "cpu") == torch.float32
    assert inference_dtype("bf16", "cpu") == torch.bfloat16 and inference_dtype("fp16", "cuda") == torch.float16
    with monkeypatch.context() as patch:  # a GPU, with and without bf16
        patch.setattr(torch.cuda, "is_available", lambda: True)
        patch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        assert inference_dtype("auto", "cuda:0") == torch.bfloat16
        patch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
        assert inference_dtype("auto", "cuda") == torch.float32
    outcomes = evaluate_checkpoint(tiny_checkpoint, ["ShapesVQA_YN"], tmp_path / "w", backend="builtin",
                                   root=str(shapes_root), dtype="bf16", device="cpu", log=lambda text: None,
                                   progress=False)
    assert loads[-1] == ("load", torch.bfloat16) and outcomes["ShapesVQA_YN"].status == "scored"


def test_custom_names_are_read_back_by_the_work_dirs_index(tiny_checkpoint, shapes_root, tmp_path):
    """Benchmarks and a model name nobody listed (underscores in both, a benchmark named like a
    suffix of another): `abilities` finds each by the index the evaluation wrote, not by parsing."""
    from llava_moslora.evaluation.abilities import read_result_dir
    from llava_moslora.evaluation.result_index import INDEX

    root = tmp_path / "lmu"
    root.mkdir()
    table = pd.read_csv(shapes_root / "ShapesVQA_MCQ.tsv", sep="\t").assign(E="none of these")
    table.to_csv(root / "MY_SCIENCEQA.tsv", sep="\t", index=False)
    shutil.copy(shapes_root / "ShapesVQA_YN.tsv", root / "QA.tsv")
    work = tmp_path / "work"
    result = cli("eval", "--model", str(tiny_checkpoint), "--benchmarks", "MY_SCIENCEQA,QA", "--work-dir", str(work),
                 "--data-root", str(root), "--backend", "builtin", "--model-name", "lora_lr0.002_MY")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "lora_lr0.002_MY_MY_SCIENCEQA_acc.csv").is_file() and (work / INDEX).is_file()
    scores = read_result_dir(work, "lora/seed0")  # a label that is not the model name, as the study's
    assert sorted(scores.benchmarks) == ["MY_SCIENCEQA", "QA"] and not scores.warnings
    assert scores.benchmarks["QA"].kind == "yes_no"


def test_a_model_that_fails_to_load_keeps_its_traceback(tiny_checkpoint, shapes_root, tmp_path):
    """A checkpoint fault of our own kind is one line; any other error keeps its traceback."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "llava_moslora.json").write_text("{not json")
    args = ["--benchmarks", "ShapesVQA_YN", "--data-root", str(shapes_root), "--backend", "builtin"]
    result = cli("eval", "--model", str(broken), *args, "--work-dir", str(tmp_path / "w1"))
    assert result.returncode == 2 and "is not valid JSON" in result.stdout and "traceback" not in result.stdout
    recipe = json.loads((tiny_checkpoint / "llava_moslora.json").read_text())
    (broken / "llava_moslora.json").write_text(json.dumps({**recipe, "projector_type": "no-such-projector"}))
    result = cli("eval", "--model", str(broken), *args, "--work-dir", str(tmp_path / "w2"))
    assert result.returncode == 2 and "unknown projector_type" in result.stdout, result.stdout + result.stderr
    log = tmp_path / "w2" / "model.error.log"
    assert f"traceback: {log}" in result.stdout and "Traceback (most recent call last)" in log.read_text()
