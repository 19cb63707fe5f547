"""Against the real VLMEvalKit: its infer_data_job and evaluate drive our model class, the builtin
backend writes identical scores, the judge plan follows its run.py, a set it cannot score fails
alone, and its own run.py evaluates our checkpoints through `llava-moslora vlmeval`. Needs vlmeval,
which CI does not install (it imports torchvision); run it in VLMEvalKit's venv (docs/EVALUATION.md):
    bash scripts/setup.sh --vlmeval && .venv-vlmeval/bin/python -m pytest tests/evaluation/test_vlmeval_backend.py
"""
import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("vlmeval")

from llava_moslora.evaluation.abilities import read_result_dir  # noqa: E402
from llava_moslora.evaluation.runner import evaluate_checkpoint  # noqa: E402

SHAPES = ("ShapesVQA_MCQ", "ShapesVQA_YN")
QUIET = dict(log=lambda text: None, progress=False)


def vlmevalkit_run_py() -> Path:
    import vlmeval

    run_py = Path(vlmeval.__file__).resolve().parents[1] / "run.py"
    if not run_py.is_file():
        pytest.skip(f"vlmeval is installed without its checkout's run.py ({run_py})")
    return run_py


@pytest.fixture
def root(shapes_root, tmp_path):
    """The shapes sets plus a free-form copy (answers are words, no options) VLMEvalKit cannot
    score, and one without answers; a copy of the folder, since vlmeval unpacks images next to the TSVs."""
    root = tmp_path / "lmu"
    root.mkdir()
    for name in SHAPES:
        shutil.copy(shapes_root / f"{name}.tsv", root)
    table = pd.read_csv(shapes_root / "ShapesVQA_MCQ.tsv", sep="\t")
    free = table.drop(columns=[c for c in "ABCD" if c in table]).assign(answer="circle")
    free.to_csv(root / "ShapesVQA_Free.tsv", sep="\t", index=False)
    free.drop(columns=["answer"]).to_csv(root / "ShapesVQA_NoAnswer.tsv", sep="\t", index=False)
    # a set of one's own, with a fifth option that is sometimes the answer, and a gap
    own = table.assign(E="none of these")
    own.loc[0, "E"], own.loc[0, "answer"] = own.loc[0, own.loc[0, "answer"]], "E"
    own.loc[1, "C"] = None
    own.to_csv(root / "MY_SCIENCEQA.tsv", sep="\t", index=False)
    return root


def test_vlmeval_and_builtin_backends_agree(tiny_checkpoint, root, tmp_path):
    names = [*SHAPES, "MY_SCIENCEQA"]
    real = evaluate_checkpoint(tiny_checkpoint, names, tmp_path / "vlmeval", backend="vlmeval", root=str(root), **QUIET)
    ours = evaluate_checkpoint(tiny_checkpoint, names, tmp_path / "builtin", backend="builtin", root=str(root), **QUIET)
    for name, kind in (("ShapesVQA_MCQ", "acc"), ("ShapesVQA_YN", "score"), ("MY_SCIENCEQA", "acc")):
        assert real[name].files[kind].read_text() == ours[name].files[kind].read_text(), name
    # vlmeval's own exact-matching record exists: its evaluate really ran
    assert (tmp_path / "vlmeval" / f"{tiny_checkpoint.name}_ShapesVQA_MCQ_exact_matching_result.xlsx").is_file()


def test_plan_types_and_judges_are_vlmevalkits():
    """The hand table of test_plan.py is DATASET_TYPE's, and llm_judge_of agrees with run.py's
    get_judge_kwargs on every dataset VLMEvalKit supports that is not MCQ / yes-no."""
    from test_plan import PAPER_TYPES
    from vlmeval.dataset import DATASET_TYPE, SUPPORTED_DATASETS

    from llava_moslora.evaluation.plan import EXACT_MATCHING_TYPES, llm_judge_of

    assert {name: DATASET_TYPE(name) for name in PAPER_TYPES} == PAPER_TYPES
    spec = importlib.util.spec_from_file_location("vlmevalkit_run", vlmevalkit_run_py())
    run_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_module)
    args = argparse.Namespace(judge_api_nproc=None, api_nproc=4, judge_retry=None, retry=1, verbose=False,
                              judge_timeout=1, judge_args=None, judge_base_url=None, judge_key=None, judge=None,
                              use_verifier=False, use_vllm=False)
    differences = []
    for name in sorted(set(SUPPORTED_DATASETS)):
        kind = DATASET_TYPE(name)
        if kind not in EXACT_MATCHING_TYPES:
            theirs = run_module.get_judge_kwargs(name, kind, args).get("model")
            if theirs != llm_judge_of(name, kind):
                differences.append((name, kind, theirs, llm_judge_of(name, kind)))
    assert not differences


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "llava_moslora", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_a_free_form_set_is_scored_as_the_builtin_backend_does_and_an_unscorable_one_fails_alone(
        tiny_checkpoint, root, tmp_path):
    """VLMEvalKit has no scorer for a custom free-form set (its CustomVQADataset.evaluate raises):
    after its inference ours scores it, with the builtin backend's file; a set without answers
    fails alone."""
    sets = "ShapesVQA_MCQ,ShapesVQA_YN,ShapesVQA_Free,ShapesVQA_NoAnswer"
    args = ["eval", "--model", str(tiny_checkpoint), "--benchmarks", sets, "--data-root", str(root)]
    result = cli(*args, "--backend", "vlmeval", "--work-dir", str(tmp_path / "w"))
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("ShapesVQA_")}
    assert all(" scored " in lines[name] for name in ("ShapesVQA_MCQ", "ShapesVQA_YN", "ShapesVQA_Free"))
    assert " failed " in lines["ShapesVQA_NoAnswer"] and "no `answer` column" in lines["ShapesVQA_NoAnswer"]
    assert "3 scored, 1 failed" in result.stdout
    strict = cli(*args, "--backend", "vlmeval", "--work-dir", str(tmp_path / "w"), "--strict")
    assert strict.returncode == 1 and "3 scored, 1 failed" in strict.stdout
    builtin = cli("eval", "--model", str(tiny_checkpoint), "--benchmarks", "ShapesVQA_Free", "--data-root", str(root),
                  "--backend", "builtin", "--work-dir", str(tmp_path / "b"))
    assert builtin.returncode == 0, builtin.stdout + builtin.stderr
    [ours] = (tmp_path / "b").rglob("*ShapesVQA_Free_acc.csv")
    [theirs] = (tmp_path / "w").rglob("*ShapesVQA_Free_acc.csv")
    assert ours.read_bytes() == theirs.read_bytes()


def test_paper_suite_plan_without_a_judge(tiny_checkpoint, tmp_path):
    env = {k: "" for k in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "LOCAL_LLM")}
    result = cli("eval", "--model", str(tiny_checkpoint), "--benchmarks", "moslora-paper", "--work-dir", str(tmp_path / "w"),
                 "--data-root", str(tmp_path / "lmu"), "--backend", "vlmeval", "--strict", env=env)
    print(result.stdout)
    assert result.returncode == 2 and "MathVista_MINI, MMVet would be skipped" in result.stdout
    plan = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith(("Math", "MMVet", "MME "))}
    assert "SKIPPED: needs an LLM judge (run.py uses gpt-4o-mini)" in plan["MathVista_MINI"]
    assert "SKIPPED: needs an LLM judge (run.py uses gpt-4-turbo)" in plan["MMVet"]
    assert "exact matching" in plan["MME"]


def test_vlmevalkits_run_py_scores_as_eval_does(tiny_checkpoint, root, tmp_path):
    """The documented command, on a stage checkpoint and its merged directory: the same _acc.csv /
    _score.csv as `llava-moslora eval`; yes/no through --data-config's ImageYORNDataset."""
    merged = tmp_path / "merged"
    assert cli("merge", "--checkpoint", str(tiny_checkpoint), "--out", str(merged)).returncode == 0
    ours = evaluate_checkpoint(tiny_checkpoint, list(SHAPES), tmp_path / "eval", backend="vlmeval", root=str(root),
                               **QUIET)
    data_config = json.dumps({"ShapesVQA_YN": {"class": "ImageYORNDataset", "dataset": "ShapesVQA_YN"}})
    work = tmp_path / "outputs"
    result = cli("vlmeval", "--run-py", str(vlmevalkit_run_py()), "--", "--data", *SHAPES, "--data-config", data_config,
                 "--model", f"llava_moslora:{tiny_checkpoint}", f"llava_moslora:{merged}", "--work-dir", str(work),
                 env={"LMUData": str(root)})
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    for model in (tiny_checkpoint.name, "merged"):
        for name, kind in (("ShapesVQA_MCQ", "acc"), ("ShapesVQA_YN", "score")):
            found = sorted((work / model).glob(f"T*/{model}_{name}_{kind}.csv"))
            assert found, (model, name)
            assert found[-1].read_text() == ours[name].files[kind].read_text(), (model, name)
        scores = read_result_dir(work / model, model)  # `abilities` reads run.py's layout
        assert set(SHAPES) <= set(scores.benchmarks)


def test_prompts_and_answer_parsing_are_vlmevalkits_on_rows_beyond_four_options():
    """Our MCQ prompt equals VLMEvalKit's own LLaVA class's build_prompt, and parse_choice equals
    its can_infer, on rows with 5 and 9 options, a gap (A, B, D) and a hint."""
    from test_builtin import option_rows
    from vlmeval.dataset.utils.multiple_choice import build_choices
    from vlmeval.utils.matching_util import can_infer
    from vlmeval.vlm.llava.llava import LLaVA

    from llava_moslora.evaluation.builtin import parse_choice
    from llava_moslora.evaluation.vlm import model_class

    class Bare(model_class(False)):
        def __init__(self):  # the prompt building only: no checkpoint
            self.benchmark_kinds = {"MY_SCIENCEQA": "MCQ"}

        def dump_image(self, line, dataset=None):
            return []

    class TheirLlava:  # what LLaVA.build_prompt uses of its instance
        def use_custom_prompt(self, dataset):
            return True

        def dump_image(self, line, dataset=None):
            return []

    rows = [pd.Series(row) for row in option_rows()]
    rows.append(pd.Series({**option_rows()[0], "hint": "Think of water."}))
    for row in rows:
        assert Bare().build_prompt(row, "MY_SCIENCEQA") == LLaVA.build_prompt(TheirLlava(), row, "MY_SCIENCEQA")
    predictions = ["E", "(I) option i", "The answer is G", "option h", "J", "The answer is blue", "H because it fits",
                   "H because it fits best", "B", "the answer is a dog", "option b or option c", "D", "C", "four",
                   "Answer: D", "Z", "z", "Cannot determine the answer: B"]
    for row in rows:
        for prediction in predictions:
            theirs = can_infer(prediction, build_choices(row)) or None
            assert parse_choice(prediction, row) == (None if theirs == "Z" else theirs), (row["question"], prediction)


def test_batch_sizes_give_identical_files_through_vlmevalkit(tiny_checkpoint, root, tmp_path):
    """Batched inference behind VLMEvalKit's own evaluate: batch 16 and batch 1 write the same
    scores; a run killed after its rank file was saved generates nothing more when run again."""
    names = [*SHAPES, "MY_SCIENCEQA"]
    runs = {size: evaluate_checkpoint(tiny_checkpoint, names, tmp_path / f"b{size}", backend="vlmeval",
                                      root=str(root), batch_size=size, **QUIET) for size in (1, 16)}
    for name, kind in (("ShapesVQA_MCQ", "acc"), ("ShapesVQA_YN", "score"), ("MY_SCIENCEQA", "acc")):
        assert runs[1][name].files[kind].read_bytes() == runs[16][name].files[kind].read_bytes(), name
    again = evaluate_checkpoint(tiny_checkpoint, names, tmp_path / "b16", backend="vlmeval", root=str(root),
                                batch_size=16, **QUIET)  # every row answered: nothing is generated, same files
    assert {n: o.status for n, o in again.items()} == {n: "scored" for n in names}
