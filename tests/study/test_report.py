"""The study's report on scored runs made without training: answers written for a known test
set, scored by the evaluation's own builtin scorer, then reported per budget with intervals
over seeds and questions, a sentence per comparison and flags on edge learning rates."""
import json

import numpy as np
import pandas as pd
import pytest

from helpers import ROOT
from llava_moslora.evaluation.abilities import read_result_dir
from llava_moslora.evaluation.builtin import score_predictions
from llava_moslora.evaluation.result_index import record_benchmark
from llava_moslora.study.budget import Allocation
from llava_moslora.study.compare import BOTH, SEEDS, compare
from llava_moslora.study.grid import DEFAULT_GRID, load_grid, merge
from llava_moslora.study.questions import read_outcomes
from llava_moslora.study.report import FinishedRun, write_study_report

QUESTIONS = 120
CATEGORIES = ("color recognition", "counting", "spatial relation")


def own_benchmarks(tmp_path):
    """An MCQ TSV with a category per row (and a yes/no one), like a user's own benchmark."""
    rows = pd.DataFrame({"index": range(QUESTIONS), "question": [f"q{i}" for i in range(QUESTIONS)],
                         "A": "red", "B": "blue", "C": "green", "D": "two",
                         "answer": [("A", "B", "C", "D")[i % 4] for i in range(QUESTIONS)],
                         "category": [CATEGORIES[i % 3] for i in range(QUESTIONS)],
                         "l2-category": ["perception" if i % 3 < 2 else "reasoning" for i in range(QUESTIONS)],
                         "split": "dev"})
    rows.to_csv(tmp_path / "OWN_MCQ.tsv", sep="\t", index=False)
    yes_no = pd.DataFrame({"index": range(QUESTIONS), "question": [f"y{i}" for i in range(QUESTIONS)],
                           "answer": ["Yes" if i % 2 else "No" for i in range(QUESTIONS)],
                           "category": ["existence" if i % 2 else "count" for i in range(QUESTIONS)]})
    yes_no.to_csv(tmp_path / "OWN_YN.tsv", sep="\t", index=False)
    return rows, yes_no


def scored_run(tmp_path, tables, variant, seed, budget, accuracy, rng):
    """A FinishedRun whose answers are right with probability `accuracy` (question by question)."""
    mcq, yes_no = tables
    folder = tmp_path / "runs" / budget / variant / f"lr0.003-seed{seed}"
    work = folder / "eval-test"
    work.mkdir(parents=True)
    name = f"{variant}_seed{seed}"
    right = rng.random(QUESTIONS) < accuracy
    wrong_letter = {"A": "B", "B": "C", "C": "D", "D": "A"}
    letters = [a if ok else wrong_letter[a] for a, ok in zip(mcq["answer"], right)]
    # the builtin backend's prediction files: the rows, plus what the model said
    mcq.assign(prediction=[f"The answer is {x}" if i % 5 == 0 else x for i, x in enumerate(letters)]).to_excel(
        work / f"{name}_OWN_MCQ.xlsx", index=False)
    said = [a if ok else ("No" if a == "Yes" else "Yes") for a, ok in zip(yes_no["answer"], rng.random(QUESTIONS) < accuracy)]
    yes_no.assign(prediction=said).to_excel(work / f"{name}_OWN_YN.xlsx", index=False)
    for benchmark, kind in (("OWN_MCQ", "MCQ"), ("OWN_YN", "Y/N")):
        files = score_predictions(tmp_path / f"{benchmark}.tsv", work / f"{name}_{benchmark}.xlsx", kind)
        record_benchmark(work, folder / "model", name, benchmark, kind, files)
    metrics = {"tokens_per_second": 1000.0, "peak_memory_bytes": 2 ** 30, "trainable_parameters": 10,
               "peak_memory_measure": "cpu max rss, per process", "global_step": 80, "global_batch": 32,
               "data_order": f"order{seed}"}
    return FinishedRun(variant, seed, 0.003, folder, {"wall_s": 30.0}, metrics,
                       read_result_dir(work, f"{variant}/seed{seed}"), budget)


def test_outcomes_rebuild_every_score_of_the_result_files(tmp_path):
    tables = own_benchmarks(tmp_path)
    run = scored_run(tmp_path, tables, "lora", 0, "r32", 0.6, np.random.default_rng(0))
    outcomes = read_outcomes(run.scores)
    assert not outcomes.missing
    for benchmark, scores in run.scores.benchmarks.items():
        for ability in scores.abilities:
            assert 100 * outcomes.get(benchmark, ability.ability).mean() == pytest.approx(ability.score)
    assert len(outcomes.get("OWN_MCQ", "Overall")) == QUESTIONS
    # a result file that the answers do not rebuild (another scoring rule) has no outcomes
    acc = next(run.folder.glob("eval-test/*_OWN_MCQ_acc.csv"))
    table = pd.read_csv(acc)
    table.loc[0, "Overall"] = 0.99
    table.to_csv(acc, index=False)
    changed = read_outcomes(read_result_dir(run.folder / "eval-test", "lora/seed0"))
    assert "OWN_MCQ" in changed.missing and "another scoring rule" in changed.missing["OWN_MCQ"]
    assert "OWN_YN" in changed.hits


def test_report_has_a_section_per_budget_intervals_and_edge_flags(tmp_path):
    tables = own_benchmarks(tmp_path)
    raw = merge(__import__("yaml").safe_load(DEFAULT_GRID.read_text()), {"evaluation": {"test": "OWN_MCQ,OWN_YN"}})
    raw["stage1"]["bases"] = str(ROOT / "bases" / "shapes-tiny")
    grid_path = tmp_path / "grid.yaml"
    grid_path.write_text(__import__("yaml").safe_dump(raw))
    grid = load_grid(grid_path)
    rng = np.random.default_rng(1)
    accuracy = {"lora": 0.6, "moslora": 0.9, "moslora_frozen": 0.6, "moslora_identity": 0.9, "moelora": 0.6}
    finished, allocations = [], {}
    for budget in grid.budgets:
        allocations[budget.name] = {v.name: Allocation(v.name, v.flags["adapter"], budget.r, 2.0 * budget.r, 1, 100,
                                                       100, True) for v in grid.variants}
        allocations[budget.name]["moelora"].unfit = "too big" if budget.name == "r4" else None
        for seed in range(3):
            finished += [scored_run(tmp_path, tables, v.name, seed, budget.name, accuracy[v.name], rng)
                         for v in grid.variants if allocations[budget.name][v.name].fits]
    rates = {b.name: b.lr_grid for b in grid.budgets}
    search = {b.name: {v: {lr: float(i) for i, lr in enumerate(rates[b.name])} for v in ("lora", "moslora")}
              for b in grid.budgets}  # the highest rate scores best: an edge
    search["r32"]["moslora"] = {rates["r32"][0]: 1.0, rates["r32"][1]: 3.0, rates["r32"][2]: 2.0}  # the middle
    chosen = {b: {v: max(s, key=s.get) for v, s in search[b].items()} for b in search}
    for b in chosen:
        chosen[b].update(moslora_frozen=chosen[b]["moslora"], moslora_identity=chosen[b]["moslora"], moelora=3e-3)
    path = write_study_report(tmp_path, grid, allocations, finished, [], search, chosen, plots=False)
    report = path.read_text()
    summary = json.loads((tmp_path / "report" / "study.json").read_text())

    assert "## Budget r32: lora at rank 32" in report and "## Budget r4: lora at rank 4" in report
    assert "not run: moelora (too big)" in report
    assert "data order, seed 0: the same in all 9 runs" in report  # 5 variants at r = 32, 4 at r = 4
    assert (tmp_path / "report" / "abilities_r32" / "abilities.md").is_file()
    assert (tmp_path / "report" / "abilities_r4" / "abilities.md").is_file()
    r32 = summary["budgets"]["r32"]
    assert set(r32["edges"]) == {"lora"} and "highest" in r32["edges"]["lora"]
    assert set(summary["budgets"]["r4"]["edges"]) == {"lora", "moslora"}
    assert "**yes**: chose 0.009, the highest" in report
    # a better variant (90% against 60% on 120 questions x 3 seeds) is shown to be better, over
    # seeds and questions; equal ones are not, and the ablations are compared with MoSLoRA too
    better = r32["comparisons"]["moslora vs lora"]
    assert better["overall"]["method"] == BOTH and better["overall"]["low"] > 0 and better["overall"]["mde"] > 0
    same = r32["comparisons"]["moslora_frozen vs lora"]["OWN_MCQ: Overall"]
    assert same["low"] <= 0 <= same["high"] or abs(same["mean"]) > same["mde"]
    assert "moslora_frozen vs moslora" in r32["comparisons"] and "moslora_identity vs moslora" in r32["comparisons"]
    assert "- moslora vs lora: moslora is higher on overall by" in report
    by_variant = {}
    for run in finished:
        by_variant.setdefault((run.budget, run.variant), []).append(run)
    one_seed = compare(by_variant["r32", "moslora"][:1], by_variant["r32", "lora"])
    assert one_seed.method == SEEDS and one_seed.interval is None
