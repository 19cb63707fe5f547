"""Judge planning: each benchmark's scoring is decided from its VLMEvalKit type and name, as
VLMEvalKit's run.py decides it, before anything runs. The types below are what vlmeval's
DATASET_TYPE gives at commit e8e78f05 (checked by hand in a venv with VLMEvalKit)."""
import pytest

from llava_moslora.evaluation.benchmarks import suites, table_type
from llava_moslora.evaluation.plan import (Located, judge_problem, llm_judge_of, locate_local, make_plan,
                                           plan_benchmark, render_plan)

PAPER_TYPES = {"MMBench_DEV_EN": "MCQ", "MMBench_DEV_CN": "MCQ", "SEEDBench_IMG": "MCQ", "AI2D_TEST": "MCQ",
               "ScienceQA_TEST": "MCQ", "TextVQA_VAL": "VQA", "MathVista_MINI": "VQA", "MMVet": "VQA", "MME": "Y/N"}


def official(name):
    return Located(PAPER_TYPES[name], "VLMEvalKit", official=True)


def test_the_table_is_the_paper_suite():
    assert list(PAPER_TYPES) == suites()["moslora-paper"]


def test_no_judge_configured_skips_mathvista_and_mmvet_with_the_reason():
    plans = {p.name: p for p in make_plan(suites()["moslora-paper"], official, judge=None, env={})}
    assert [name for name, p in plans.items() if not p.runs] == ["MathVista_MINI", "MMVet"]
    assert "needs an LLM judge (run.py uses gpt-4o-mini)" in plans["MathVista_MINI"].skip
    assert "needs an LLM judge (run.py uses gpt-4-turbo)" in plans["MMVet"].skip
    assert "OPENAI_API_KEY" in plans["MMVet"].skip
    for name in ("MMBench_DEV_EN", "SEEDBench_IMG", "AI2D_TEST", "ScienceQA_TEST", "MME"):
        assert plans[name].judge == "exact_matching" and plans[name].scoring == "exact matching", name
    assert plans["TextVQA_VAL"].runs and plans["TextVQA_VAL"].scoring == "VLMEvalKit's metric for the benchmark"
    table = render_plan(list(plans.values()))
    assert "MathVista_MINI" in table and "SKIPPED: needs an LLM judge" in table


@pytest.mark.parametrize("env", [{"OPENAI_API_KEY": "sk-test"}, {"AZURE_OPENAI_API_KEY": "k"}, {"LOCAL_LLM": "qwen"}])
def test_a_configured_judge_runs_the_judged_sets(env):
    plans = {p.name: p for p in make_plan(suites()["moslora-paper"], official, judge=None, env=env)}
    assert all(p.runs for p in plans.values())
    assert plans["MathVista_MINI"].judge == "gpt-4o-mini" and plans["MMVet"].judge == "gpt-4-turbo"
    assert plans["MME"].judge == "exact_matching"  # MCQ / yes-no stay on exact matching unless --judge says


def test_an_explicit_judge_goes_to_every_benchmark():
    plans = {p.name: p for p in make_plan(["MMBench_DEV_EN", "MMVet"], official, judge="gpt-4o",
                                          env={"OPENAI_API_KEY": "sk-x"})}
    assert plans["MMVet"].judge == "gpt-4o" and plans["MMBench_DEV_EN"].judge == "gpt-4o"
    assert "exact matching if it does not answer" in plans["MMBench_DEV_EN"].scoring
    # exact_matching cannot stand in for an LLM judge, even with a key
    mmvet = plan_benchmark("MMVet", official("MMVet"), "exact_matching", {"OPENAI_API_KEY": "sk-x"})
    assert not mmvet.runs and "exact_matching cannot score" in mmvet.skip


@pytest.mark.parametrize("name, kind, judge", [
    ("MathVista_MINI", "VQA", "gpt-4o-mini"), ("MMVet", "VQA", "gpt-4-turbo"), ("LLaVABench", "VQA", "gpt-4-turbo"),
    ("LLaVABench_KO", "VQA", "gpt-4o-0806"), ("MME-Reasoning", "VQA", "gpt-4o-mini"), ("VDC", "Video-VQA", "llama31-8b"),
    ("TextVQA_VAL", "VQA", None), ("OCRBench", "VQA", None), ("MMBench_DEV_EN", "MCQ", None), ("POPE", "Y/N", None),
    ("WeMath", "MCQ", None),  # run.py gives it gpt-4o-mini, but MCQ evaluators fall back to exact matching
])
def test_run_pys_judges(name, kind, judge):
    assert llm_judge_of(name, kind) == judge


def test_judge_variables_as_build_judge_reads_them():
    assert judge_problem("gpt-4o-mini", {}) is not None
    assert judge_problem("gpt-4o-mini", {"OPENAI_API_KEY": "sk-1"}) is None
    assert "SiliconFlow_API_KEY" in judge_problem("qwen-72b", {"OPENAI_API_KEY": "sk-1"})
    assert judge_problem("qwen-72b", {"SiliconFlow_API_KEY": "k"}) is None
    assert judge_problem("llama31-8b", {}) is None  # a local Hugging Face model


def test_builtin_backend_view(shapes_root, tmp_path):
    mcq = locate_local("ShapesVQA_MCQ", shapes_root)
    assert mcq.kind == "MCQ" and mcq.source.endswith("ShapesVQA_MCQ.tsv") and not mcq.official
    assert locate_local("ShapesVQA_YN", shapes_root).kind == "Y/N"
    assert "no " in locate_local("MME", tmp_path) and "--backend vlmeval" in locate_local("MME", tmp_path)
    # only the vlmeval backend runs LLM judges, keys or not
    plan = plan_benchmark("MMVet", locate_local("MMVet", tmp_path), None, {"OPENAI_API_KEY": "sk-1"}, llm_judges=False)
    assert "only the vlmeval backend runs LLM judges" in plan.skip and "no " in plan.skip


def test_custom_free_form_tsv_runs_with_our_normalized_exact_match():
    plan = plan_benchmark("MyVQA", Located("VQA", "/data/MyVQA.tsv", official=False), None, {})
    assert plan.runs and plan.scoring.startswith("normalized exact match") and "no scorer" in plan.scoring


def test_table_types():
    import pandas as pd

    assert table_type(pd.DataFrame({"A": [1], "B": [2], "answer": ["A"]})) == "MCQ"
    assert table_type(pd.DataFrame({"answer": ["Yes", "No"]})) == "Y/N"
    assert table_type(pd.DataFrame({"answer": ["Yes", "STOP"]})) == "VQA"
