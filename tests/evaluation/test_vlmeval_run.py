"""`llava-moslora vlmeval`: our class registered where VLMEvalKit's run.py looks (supported_VLM for
--model, vlmeval.vlm for --config), then run.py run in-process. Against a stand-in VLMEvalKit with
the same registry shape (fixtures/standin); the real run.py is run by hand (docs/EVALUATION.md)."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from llava_moslora.evaluation.runner import evaluate_checkpoint
from llava_moslora.evaluation.vlmeval_run import SpecError, model_values, parse_spec, register

STANDIN = Path(__file__).parent / "fixtures" / "standin"


class Model:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


def test_model_values_are_found_up_to_the_next_option():
    argv = ["--data", "A", "B", "--model", "m1", "m2", "--work-dir", "w", "--model", "m3"]
    assert [argv[i] for i in model_values(argv)] == ["m1", "m2", "m3"]


def test_register_rewrites_our_models_and_leaves_the_rest(tmp_path):
    (tmp_path / "runs" / "stage2").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    registry, vlm = {"GPT4o": object()}, SimpleNamespace()
    argv = ["--data", "MME", "--model", f"llava_moslora:{tmp_path}/runs/stage2", "GPT4o",
            f"llava_moslora:mine={tmp_path}/other", "--reuse"]
    out = register(argv, registry, vlm, Model, "bf16", None)
    assert out == ["--data", "MME", "--model", "stage2", "GPT4o", "mine", "--reuse"]
    assert vlm.LlavaMoSLoRA is Model
    built = registry["stage2"]()
    assert built.kwargs == {"model_path": str(tmp_path / "runs" / "stage2"), "dtype": "bf16", "device": None}
    assert registry["mine"]().kwargs["model_path"] == str(tmp_path / "other")


def test_register_refuses_what_would_clash_or_is_missing(tmp_path):
    for name in ("a/stage2", "b/stage2", "llava_v1.5_7b"):
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(SpecError, match="both be named 'stage2'"):
        register(["--model", f"llava_moslora:{tmp_path}/a/stage2", f"llava_moslora:{tmp_path}/b/stage2"], {},
                 SimpleNamespace(), Model, "auto", None)
    with pytest.raises(SpecError, match="one of VLMEvalKit's own models"):
        register(["--model", f"llava_moslora:{tmp_path}/llava_v1.5_7b"], {"llava_v1.5_7b": object()},
                 SimpleNamespace(), Model, "auto", None)
    with pytest.raises(SpecError, match="checkpoint directory not found"):
        parse_spec(f"llava_moslora:{tmp_path}/nope")


def vlmeval_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "llava_moslora", "vlmeval", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(STANDIN), **env})


def test_run_py_evaluates_our_checkpoint_through_both_registries(tiny_checkpoint, shapes_root, tmp_path):
    """The stand-in run.py builds the model from supported_VLM (--model) and from vlmeval.vlm
    (--config); its answers equal `llava-moslora eval`'s predictions on the same TSV."""
    env = {"LMUData": str(shapes_root)}
    run_py = str(STANDIN / "run.py")
    by_name = vlmeval_cli("--run-py", run_py, "--", "--data", "ShapesVQA_MCQ", "ShapesVQA_YN",
                          "--model", f"llava_moslora:{tiny_checkpoint}", "--work-dir", str(tmp_path / "out"), env=env)
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    assert f"--model {tiny_checkpoint.name}: {tiny_checkpoint}" in by_name.stdout
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model": {"cfg": {"class": "LlavaMoSLoRA", "model_path": str(tiny_checkpoint)}},
                                  "data": {"ShapesVQA_MCQ": {}}}))
    by_config = vlmeval_cli("--run-py", run_py, "--", "--config", str(config), "--work-dir", str(tmp_path / "out"),
                            env=env)
    assert by_config.returncode == 0, by_config.stdout + by_config.stderr

    ours = evaluate_checkpoint(tiny_checkpoint, ["ShapesVQA_MCQ", "ShapesVQA_YN"], tmp_path / "eval",
                               backend="builtin", root=str(shapes_root), log=lambda text: None, progress=False)
    for model, datasets in ((tiny_checkpoint.name, ["ShapesVQA_MCQ", "ShapesVQA_YN"]), ("cfg", ["ShapesVQA_MCQ"])):
        for dataset in datasets:
            theirs = pd.read_csv(tmp_path / "out" / model / f"{model}_{dataset}.csv", keep_default_na=False)
            mine = pd.read_excel(ours[dataset].files["predictions"], keep_default_na=False)
            assert theirs["prediction"].astype(str).tolist() == mine["prediction"].astype(str).tolist(), (model, dataset)


def test_vlmeval_command_errors(tmp_path):
    missing = vlmeval_cli("--run-py", str(tmp_path / "run.py"), "--", "--data", "X", env={})
    assert missing.returncode == 2 and "run.py of a VLMEvalKit checkout" in missing.stderr
    bad = vlmeval_cli("--run-py", str(STANDIN / "run.py"), "--", "--data", "X", "--model",
                      f"llava_moslora:{tmp_path}/nope", env={})
    assert bad.returncode == 2 and "checkpoint directory not found" in bad.stderr
