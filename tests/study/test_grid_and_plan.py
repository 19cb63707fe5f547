"""The study's grid, budgets and plan: what makes the comparison fair, checked without training."""
import json
import os

import pytest
import yaml
from torch import nn

from helpers import ROOT
from llava_moslora.study.budget import adapter_parameters, match_rank
from llava_moslora.study.grid import DEFAULT_GRID, GridError, load_grid, merge
from llava_moslora.study.plan import allocate, check_flags, chosen_rates, final_runs, search_runs
from llava_moslora.adapters import AdapterConfig

LLM = str(ROOT / "bases" / "shapes-tiny" / "llm")


def write_grid(tmp_path, **changes):
    raw = merge(yaml.safe_load(DEFAULT_GRID.read_text()), changes)
    raw["stage1"]["bases"] = str(ROOT / "bases" / "shapes-tiny")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def linear_shapes():
    """(d_in, d_out) of every nn.Linear of the tiny language model, from a real (CPU) copy."""
    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_config(AutoConfig.from_pretrained(LLM))
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def test_default_grid_is_the_issue_grid_and_quick_narrows_it():
    grid = load_grid()
    assert [v.name for v in grid.variants] == ["lora", "moslora", "moslora_frozen", "moslora_identity", "moelora"]
    assert grid.seeds == [0, 1, 2, 3, 4] and grid.data["synth"]["num_test"] >= 1000
    assert [(b.name, b.reference, b.r) for b in grid.budgets] == [("r32", "lora", 32), ("r4", "lora", 4)]
    frozen, identity = grid.variant("moslora_frozen"), grid.variant("moslora_identity")
    assert frozen.flags["mixer_trainable"] is False and frozen.flags["mixer_init"] == "kaiming"
    assert identity.flags["mixer_init"] == "identity" and frozen.lr_from == identity.lr_from == "moslora"
    assert all(len(grid.rates(v, b)) == 3 for v in grid.variants for b in grid.budgets)  # an edge can be seen
    quick = load_grid(quick=True)
    assert [v.name for v in quick.variants] == ["lora", "moslora", "moelora"] and quick.seeds == [0]
    assert [b.name for b in quick.budgets] == ["r32"] and quick.rates(quick.variants[0], quick.budgets[0]) == [3e-3]
    assert quick.flags["max_steps"] < grid.flags["max_steps"]
    assert [v.name for v in load_grid(variants=["moelora"]).variants] == ["lora", "moelora"]  # reference kept
    # an ablation keeps the variant whose rate it takes
    assert [v.name for v in load_grid(variants=["moslora_frozen"]).variants] == ["lora", "moslora", "moslora_frozen"]


def test_the_power_grid_is_the_default_trained_longer_with_grsgd():
    """studies/shapes-power.yaml (docs/STUDY.md): the default's data, launch, budgets and
    variants (MoE-LoRA under gRSGD rather than AdamW), more seeds, 3 x the steps."""
    default, power = load_grid(), load_grid(ROOT / "studies" / "shapes-power.yaml")
    assert power.data == default.data and power.launch == default.launch
    assert power.seeds[:len(default.seeds)] == default.seeds  # more seeds, for the minimum detectable effect
    assert power.evaluation == default.evaluation
    assert power.flags == {**default.flags, "max_steps": 3 * default.flags["max_steps"],
                           "save_steps": 3 * default.flags["save_steps"]}
    assert [(b.name, b.reference, b.r, b.tolerance) for b in power.budgets] == \
        [(b.name, b.reference, b.r, b.tolerance) for b in default.budgets]
    for variant in default.variants:
        if variant.name != "moelora":  # MoE-LoRA is there as the paper trains it, gRSGD (3 hours at most)
            assert power.variant(variant.name) == variant
    grsgd = power.variant("moelora_grsgd")
    assert grsgd.flags["optim"] == "sgd" and grsgd.flags["riemannian"] is True and grsgd.flags["gate_rescale"] == "sqrt"
    assert len(grsgd.lr_grid) == 3


def test_parameter_counts_match_the_closed_forms():
    shapes = linear_shapes()
    sides = sum(i + o for i, o in shapes)
    inputs = sum(i for i, _ in shapes)
    assert adapter_parameters(LLM, AdapterConfig(kind="lora", r=32)) == 32 * sides
    assert adapter_parameters(LLM, AdapterConfig(kind="moslora", r=29)) == 29 * sides + len(shapes) * 29 ** 2
    assert adapter_parameters(LLM, AdapterConfig(kind="moelora", r=7, num_experts=4, top_k=2)) == \
        4 * 7 * sides + 4 * inputs  # E experts of rank r, and an E x d_in router per layer


@pytest.mark.parametrize("kind, experts", [("moslora", 1), ("moelora", 4), ("moelora", 8)])
def test_matched_rank_is_the_largest_within_the_budget(kind, experts):
    budget = adapter_parameters(LLM, AdapterConfig(kind="lora", r=32))
    config = AdapterConfig(kind=kind, r=1, num_experts=experts, top_k=min(2, experts))
    r = match_rank(LLM, config, budget)
    cost = lambda rank: adapter_parameters(LLM, AdapterConfig.from_dict({**config.to_dict(), "r": rank}))
    assert cost(r) <= budget < cost(r + 1)


def test_allocations_give_every_variant_the_reference_budget():
    grid = load_grid()
    r32, r4 = grid.budgets
    allocations = allocate(grid, LLM, r32)
    budget = allocations["lora"].adapter_parameters
    assert allocations["lora"].r == 32 and allocations["lora"].ratio == 1.0
    assert allocations["moslora"].r == allocations["moslora_frozen"].r == allocations["moslora_identity"].r == 29
    for allocation in allocations.values():
        assert allocation.budget == budget and 0.9 < allocation.ratio <= 1.0, allocation
        assert allocation.alpha == 2 * allocation.r  # the same scale alpha / r for all
    assert allocations["moelora"].rank_text == "4 x 7"
    low = allocate(grid, LLM, r4)
    assert low["lora"].r == 4 and low["moslora"].r == 4  # its 4 x 4 mixers fit in the 2% tolerance
    assert 1.0 < low["moslora"].ratio <= 1 + r4.tolerance
    assert not low["moelora"].fits and "rank 1 already costs" in low["moelora"].unfit  # the router alone is too big
    assert "moelora" not in {r.variant for r in search_runs(grid, r4, low)}


def flags_of(run):
    pairs = dict(zip(run.flags[::2], run.flags[1::2]))
    assert len(pairs) == len(run.flags) // 2, "a flag given twice"
    return pairs


def test_runs_of_a_seed_share_steps_seeds_and_data_and_differ_only_by_variant():
    grid = load_grid()
    budget = grid.budgets[0]
    allocations = allocate(grid, LLM, budget)
    search = search_runs(grid, budget, allocations)
    searched = ["lora", "moslora", "moelora"]  # the ablations take MoSLoRA's rate
    assert sorted({r.variant for r in search}) == sorted(searched) and len(search) == 3 * 3
    assert {r.seed for r in search} == {0} and all(r.key.startswith("r32/") for r in search)
    scores = {v: {lr: (10.0 if lr == grid.rates(grid.variant(v), budget)[1] else 5.0) for lr in grid.rates(grid.variant(v), budget)}
              for v in searched}
    chosen = chosen_rates(grid, budget, allocations, scores)
    assert chosen["moslora_frozen"] == chosen["moslora_identity"] == chosen["moslora"] == budget.lr_grid[1]
    finals = final_runs(grid, budget, allocations, chosen)
    assert len(finals) == 5 * len(grid.variants)
    assert {r.key for r in search} & {r.key for r in finals} == {r.key for r in finals if r.seed == 0
                                                                  and r.variant in searched}
    shared = ["--max_steps", "--seed", "--data_seed", "--model_max_length", "--logging_steps", "--lora_dropout"]
    for seed in grid.seeds:
        runs = [flags_of(r) for r in finals if r.seed == seed]
        for flag in shared:
            assert len({f[flag] for f in runs}) == 1, flag
        assert runs[0]["--seed"] == runs[0]["--data_seed"] == str(seed)
    by_variant = {r.variant: flags_of(r) for r in finals if r.seed == 0}
    assert by_variant["moslora_frozen"]["--mixer_trainable"] == "False"
    assert by_variant["moslora_identity"]["--mixer_init"] == "identity"
    assert by_variant["moslora"]["--lora_r"] == "29" and by_variant["moslora"]["--lora_alpha"] == "58.0"
    assert by_variant["moslora"]["--mm_projector_lr"] == by_variant["moslora"]["--learning_rate"]
    assert all(f["--resume_from_checkpoint"] == "auto" for f in by_variant.values())
    power = load_grid(ROOT / "studies" / "shapes-power.yaml")
    power_runs = final_runs(power, budget, allocate(power, LLM, budget),
                            {v.name: power.rates(v, budget)[0] for v in power.variants})
    check_flags(search + finals + power_runs)  # every run's flags parse as `llava-moslora train` flags


def test_a_typo_in_a_flag_fails_before_anything_runs(tmp_path):
    grid = load_grid(write_grid(tmp_path, flags={"max_stesp": 10}))
    budget = grid.budgets[0]
    runs = final_runs(grid, budget, allocate(grid, LLM, budget), {v.name: grid.rates(v, budget)[0] for v in grid.variants})
    with pytest.raises(ValueError, match="max_stesp"):
        check_flags(runs)


@pytest.mark.parametrize("changes, message", [
    ({"flags": {"seed": 3}}, "set by the study"),
    ({"evaluation": {"validation": "ShapesVQA_MCQ,ShapesVQA_YN"}}, "must not be the test split"),
    ({"evaluation": {"validation": None}}, "needs evaluation.validation"),
    ({"budgets": {"r32": {"reference": "dora"}}}, "reference must name a variant"),
    ({"budget": {"reference": "lora", "r": 8}}, "not both"),
    ({"budgets": {"r4": {"tolerance": 2}}}, "tolerance"),
    ({"budgets": {"r4": {"rank": 4}}}, "unknown keys"),
    ({"variants": {"moslora_frozen": {"lr_from": "nope"}}}, "lr_from must name"),
    ({"variants": {"moslora_frozen": {"lr_from": "moslora_identity"}}}, "lr_from must name"),
    ({"variants": {"moslora_frozen": {"lr_grid": [1e-3, 2e-3, 3e-3]}}}, "both lr_from and lr_grid"),
    ({"variants": {"bad name": {"adapter": "lora"}}}, "names a folder"),
    ({"variants": {"plain": {"mixer_init": "kaiming"}}}, "needs `adapter:`"),
    ({"seeds": [0, 0]}, "distinct integers"),
    ({"lr_grid": [1e-3, -1]}, "positive learning rates"),
    ({"epochs": 3}, "unknown top-level keys"),
    ({"lr_grid": None, "budgets": {"r4": {"lr_grid": None}}}, "variants.lora has no learning rate"),
])
def test_grid_mistakes_are_named(tmp_path, changes, message):
    with pytest.raises(GridError, match=message):
        load_grid(write_grid(tmp_path, **changes))


def test_a_malformed_grid_file_is_named_with_where_it_breaks(tmp_path):
    (tmp_path / "grid.yaml").write_text("name: x\nbudgets: [1, 2\n")
    with pytest.raises(GridError, match=r"grid.yaml: malformed YAML at line 3, column 1"):
        load_grid(tmp_path / "grid.yaml")
    (tmp_path / "grid.json").write_text('{"name": "x",}')
    with pytest.raises(GridError, match=r"grid.json: malformed JSON at line 1"):
        load_grid(tmp_path / "grid.json")


def test_a_json_grid_reads_like_the_yaml_one(tmp_path):
    raw = yaml.safe_load(DEFAULT_GRID.read_text())
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(raw))
    grid = load_grid(path)
    assert [v.name for v in grid.variants] == [v.name for v in load_grid().variants]
    assert grid.resolve("../bases") == (tmp_path / "../bases").resolve()  # relative to the grid file


def test_a_variant_may_not_change_what_every_run_shares(tmp_path):
    with pytest.raises(GridError, match="every run shares"):
        load_grid(write_grid(tmp_path, variants={"moslora": {"adapter": "moslora", "max_steps": 500}}))


def test_runs_get_the_launch_settings_but_not_the_shells_training_variables(monkeypatch):
    from llava_moslora.study.execute import Launcher

    monkeypatch.setenv("RIEMANNIAN", "1")  # finetune.sh would turn it into --riemannian True for every run
    monkeypatch.setenv("LORA_R", "8")
    monkeypatch.setenv("BITS", "4")  # would quantize every run
    monkeypatch.setenv("SOME_FUTURE_SCRIPT_SETTING", "x")  # nobody listed it: not passed either
    monkeypatch.setenv("NUM_GPUS", "4")
    monkeypatch.setenv("NNODES", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    for name in ("ZERO", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "HOSTFILE", "LAUNCHER_ARGS", "SHUTDOWN_TIMEOUT",
                 "GLOBAL_BATCH", "PER_DEVICE_BATCH", "MODEL", "VISION_TOWER", "PYTHON"):
        monkeypatch.delenv(name, raising=False)
    launcher = Launcher({"NUM_GPUS": "2", "ZERO": "2"})
    env = launcher.environment(OUTPUT_DIR="/tmp/x")
    for name in ("RIEMANNIAN", "LORA_R", "BITS", "SOME_FUTURE_SCRIPT_SETTING"):
        assert name not in env, name
    assert env["OUTPUT_DIR"] == "/tmp/x" and env["PATH"] == os.environ["PATH"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["SLURM_JOB_ID"] == "77"
    # what run.json records: every launch setting the run gets, the environment winning over the grid
    assert launcher.settings() == {"NUM_GPUS": "4", "NNODES": "1", "ZERO": "2"}


def test_a_run_made_from_another_stage1_is_refused(tmp_path):
    from llava_moslora.study.execute import Inputs, Launcher, check_record

    grid = load_grid()
    budget = grid.budgets[0]
    run = final_runs(grid, budget, allocate(grid, LLM, budget), {v.name: grid.rates(v, budget)[0] for v in grid.variants})[0]
    launcher = Launcher({"NUM_GPUS": "2"})
    inputs = Inputs(tmp_path / "stage1", tmp_path / "data.json", tmp_path / "images", None, LLM)
    folder = run.folder(tmp_path)
    folder.mkdir(parents=True)
    record = {"flags": list(run.flags), "inputs": inputs.record(launcher.settings()), "done": True}
    (folder / "run.json").write_text(json.dumps(record))
    assert check_record(run, tmp_path, inputs, launcher)["done"]
    other = Inputs(tmp_path / "other-stage1", tmp_path / "data.json", tmp_path / "images", None, LLM)
    with pytest.raises(GridError, match="other stage1"):
        check_record(run, tmp_path, other, launcher)


def test_the_best_validation_score_chooses_and_a_tie_goes_to_the_middle_of_the_grid():
    grid = load_grid()
    budget = grid.budgets[1]
    allocations = allocate(grid, LLM, budget)
    low, middle, high = budget.lr_grid

    def chosen(lora, moslora):
        return chosen_rates(grid, budget, allocations, {"lora": dict(zip(budget.lr_grid, lora)),
                                                        "moslora": dict(zip(budget.lr_grid, moslora))})

    picked = chosen([80.0, 70.0, 60.0], [50.0, 60.0, 90.0])
    assert picked["lora"] == low and picked["moslora"] == high and picked["moslora_frozen"] == high
    assert "moelora" not in picked  # it does not fit this budget
    assert chosen([88.2, 88.2, 50.0], [70.0, 88.0, 88.0]) == {
        "lora": middle, "moslora": middle, "moslora_frozen": middle, "moslora_identity": middle}
    assert chosen([90.0, 80.0, 90.0], [1.0, 1.0, 1.0])["lora"] == low  # equally near the middle: the lower


def test_budgets_may_search_different_ranges_but_a_budgets_variants_search_alike(tmp_path):
    """A lower rank may need a wider search (r4 four rates, r32 three); within one budget a
    variant tried at more rates than its rivals would be favoured, so that is refused."""
    grid = load_grid(write_grid(tmp_path, budgets={"r4": {"lr_grid": [1e-3, 3e-3, 9e-3, 2.7e-2]}}))
    r32, r4 = grid.budgets
    searches = {b.name: search_runs(grid, b, allocate(grid, LLM, b)) for b in grid.budgets}
    assert {run.lr for run in searches["r4"] if run.variant == "lora"} == {1e-3, 3e-3, 9e-3, 2.7e-2}
    assert {run.lr for run in searches["r32"] if run.variant == "lora"} == {1e-3, 3e-3, 9e-3}
    uneven = load_grid(write_grid(tmp_path, variants={"moslora": {"adapter": "moslora", "lr_grid": [1e-3, 2e-3]}}))
    with pytest.raises(GridError, match=r"under budget r32 .*lora: 3, moslora: 2"):
        search_runs(uneven, uneven.budgets[0], allocate(uneven, LLM, uneven.budgets[0]))


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_grid_reads_and_its_flags_are_train_flags(path):
    from transformers import HfArgumentParser

    from llava_moslora.model import ModelArguments
    from llava_moslora.study.grid import flag_list
    from llava_moslora.study.plan import variant_settings
    from llava_moslora.train.arguments import DataArguments, LlavaTrainingArguments

    grid = load_grid(path)
    parser = HfArgumentParser((ModelArguments, DataArguments, LlavaTrainingArguments))
    for variant in grid.variants:
        parser.parse_args_into_dataclasses(args=[*flag_list(variant_settings(grid, variant)), "--output_dir", "unused",
                                                 "--use_cpu", "True"])
