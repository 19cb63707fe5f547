"""Per-ability scores from VLMEvalKit result files: parsing, 0-100 scaling, normalization, reports, CLI.

Fixtures (fixtures/abilities/) are written in VLMEvalKit's layouts (pandas, csv.QUOTE_ALL): `lora/` is a
flat work dir with `lora_{dataset}` files; `moslora/{old,new}` are two run.py runs of a model named
`llava_moslora_v1`, laid out by `moslora_dirs` as `{work_dir}/{model}/T.../` with symlinks to the newest.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava_moslora.evaluation import abilities
from llava_moslora.evaluation.abilities import (AbilitiesError, benchmark_name, collect_scores, normalize,
                                                read_result_file, write_report)

FIXTURES = Path(__file__).parent / "fixtures" / "abilities"
MODEL = "llava_moslora_v1"
MMB_L2 = ["AR", "CP", "FP-C", "FP-S", "LR", "RR"]


@pytest.fixture
def result_dirs(tmp_path):
    """lora/ as is; moslora/ in run.py's layout: two eval_id runs, symlinks in {model}/ to the newer."""
    lora = shutil.copytree(FIXTURES / "lora", tmp_path / "lora")
    model_dir = tmp_path / "moslora" / MODEL
    runs = (("T20250101-100000", "old", 1_700_000_000), ("T20250102-100000", "new", 1_800_000_000))
    for run_id, source, mtime in runs:
        shutil.copytree(FIXTURES / "moslora" / source, model_dir / run_id)
        for file in (model_dir / run_id).iterdir():
            os.utime(file, (mtime, mtime))
    for file in (model_dir / "T20250102-100000").iterdir():
        (model_dir / file.name).symlink_to(Path("T20250102-100000") / file.name)
    return Path(lora), tmp_path / "moslora"


def by_name(bench):
    return {a.ability: a for a in bench.abilities}


def compared(comparison, benchmark):
    bench = next(b for b in comparison.benchmarks if b.benchmark == benchmark)
    return bench, {a.ability: a for a in bench.abilities}


@pytest.mark.parametrize("stem, prefixes, expected", [
    ("llava_v1_MMBench_DEV_EN", [], "MMBench_DEV_EN"),
    ("llava_v1_MMBench_DEV_EN_V11", [], "MMBench_DEV_EN_V11"),  # the longest known name at the end
    ("my_model_MME", [], "MME"),
    ("m_MathVista_MINI_gpt-4o-mini", [], "MathVista_MINI"),  # judge name after the dataset
    ("lora_tiny_yn", ["lora"], "tiny_yn"),
    ("other_tiny_yn", ["lora"], "other_tiny_yn"),
])
def test_benchmark_name(stem, prefixes, expected):
    assert benchmark_name(stem, prefixes) == expected


def test_mmbench_uses_the_dev_row_and_drops_empty_cells():
    bench = read_result_file(FIXTURES / "lora" / "lora_MMBench_DEV_EN_acc.csv")
    scores = by_name(bench)
    assert (bench.benchmark, bench.kind, bench.split, bench.headline) == ("MMBench_DEV_EN", "mcq", "dev", "Overall")
    assert scores["Overall"].raw == 0.7 and scores["Overall"].score == pytest.approx(70.0)
    assert scores["CP"].raw == 0.8 and scores["FP-S"].score == pytest.approx(75.0)
    assert [a.ability for a in bench.abilities if a.level == "l2-category"] == MMB_L2
    leaves = [a.ability for a in bench.abilities if a.level == "category"]
    assert len(leaves) == 19 and "ocr" not in leaves  # empty in the dev row
    assert scores["structuralized_imagetext_understanding"].raw == pytest.approx(0.69)
    assert bench.radar == MMB_L2


def test_mme_is_rescaled_to_0_100():
    scores = by_name(read_result_file(FIXTURES / "lora" / "lora_MME_score.csv"))
    assert scores["OCR"].raw == 150.0 and scores["OCR"].score == pytest.approx(75.0)
    assert scores["perception"].raw == 1500.0 and scores["perception"].score == pytest.approx(75.0)
    assert scores["reasoning"].score == pytest.approx(50.0)
    assert scores["Total"].raw == 1900.0 and scores["Total"].score == pytest.approx(1900 / 2800 * 100)
    assert sum(a.level == "subtask" for a in scores.values()) == 14


def test_mmstar_pope_and_custom_yes_no():
    mmstar = read_result_file(FIXTURES / "lora" / "lora_MMStar_acc.csv")
    assert mmstar.split == "none" and by_name(mmstar)["math"].score == pytest.approx(30.0)
    assert mmstar.radar == ["coarse perception", "fine-grained perception", "instance reasoning",
                            "logical reasoning", "math", "science & technology"]
    pope = read_result_file(FIXTURES / "lora" / "lora_POPE_score.csv")
    scores = by_name(pope)
    assert (pope.kind, pope.headline, pope.headline_score) == ("pope", "F1", 80.0)
    assert scores["acc"].score == 82.0 and scores["adversarial F1"].score == 70.0
    assert sorted(pope.radar) == ["adversarial F1", "popular F1", "random F1"]
    yes_no = read_result_file(FIXTURES / "lora" / "lora_tiny_yn_score.csv", "tiny_yn")
    assert yes_no.kind == "yes_no" and {a.ability: a.score for a in yes_no.abilities} == {
        "Overall": 60.0, "count": 50.0, "existence": 70.0}
    assert yes_no.radar == []  # two categories: no radar


@pytest.mark.parametrize("rows, split, overall", [
    (['"test","0.1"', '"validation","0.6"', '"dev","0.5"'], "validation", 60.0),  # MMMU reports validation
    (['"test","0.1"', '"none","0.3"'], "none", 30.0),
    (['"a",""', '"b","0.4"'], "b", 40.0),  # no known split: the first with an Overall
])
def test_mcq_split_choice(tmp_path, rows, split, overall):
    path = tmp_path / "m_custom_acc.csv"
    path.write_text('"split","Overall"\n' + "\n".join(rows) + "\n")
    bench = read_result_file(path)
    assert (bench.split, bench.headline_score) == (split, pytest.approx(overall))


@pytest.mark.parametrize("name, text, kind, headline, score", [
    ("m_TextVQA_VAL_acc.csv", '"Overall"\n"58.2"\n', "vqa", "Overall", 58.2),  # VQA _acc.csv is 0-100
    ("m_HallusionBench_score.csv", '"split","aAcc","fAcc","qAcc"\n"Overall","60.0","30.0","30.0"\n'
     '"VD","55.0","25.0","20.0"\n', "hallusion", "Overall", 40.0),
    ("m_MathVista_MINI_gpt-4o-mini_score.csv", '"Task&Skill","tot","hit","acc"\n"Overall","1000","250","25.0"\n'
     '"FQA","100","30","30.0"\n', "vqa", "Overall", 25.0),
])
def test_other_layouts(tmp_path, name, text, kind, headline, score):
    (tmp_path / name).write_text(text)
    bench = read_result_file(tmp_path / name)
    assert (bench.kind, bench.headline, bench.headline_score) == (kind, headline, pytest.approx(score))


def test_newest_copy_is_used_in_the_run_py_layout(result_dirs):
    _, moslora = collect_scores(result_dirs)
    assert moslora.label == "moslora"
    assert sorted(moslora.benchmarks) == ["MMBench_DEV_EN", "MME", "MMStar", "POPE", "tiny_yn"]
    mmbench = moslora.benchmarks["MMBench_DEV_EN"]
    newest = result_dirs[1] / MODEL / "T20250102-100000" / f"{MODEL}_MMBench_DEV_EN_acc.csv"
    assert mmbench.source == newest.resolve() and mmbench.headline_score == pytest.approx(80.0)
    assert mmbench.others == [(result_dirs[1] / MODEL / "T20250101-100000" / newest.name).resolve()]
    assert moslora.benchmarks["MME"].others == []  # the symlink and its target count once


def test_normalization_on_hand_computed_numbers(result_dirs):
    comparison = normalize(collect_scores(result_dirs))
    assert comparison.labels == ["lora", "moslora"]
    _, mmbench = compared(comparison, "MMBench_DEV_EN")
    assert mmbench["AR"].score == pytest.approx({"lora": 60.0, "moslora": 80.0})
    assert mmbench["AR"].normalized == pytest.approx({"lora": 75.0, "moslora": 100.0})
    assert mmbench["FP-S"].normalized == pytest.approx({"lora": 100.0, "moslora": 70 / 75 * 100})
    assert mmbench["CP"].normalized == pytest.approx({"lora": 100.0, "moslora": 100.0})
    assert mmbench["ocr"].normalized == pytest.approx({"moslora": 100.0})  # lora's dev cell is empty
    _, mme = compared(comparison, "MME")
    assert mme["OCR"].normalized == pytest.approx({"lora": 75.0, "moslora": 100.0})
    assert mme["reasoning"].normalized == pytest.approx({"lora": 400 / 600 * 100, "moslora": 100.0})


def test_zero_best_gives_zero(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / f"{label}_x_score.csv").write_text('"Overall","cat"\n"0.0","0.0"\n')
    comparison = normalize(collect_scores([tmp_path / "a", tmp_path / "b"]))
    assert comparison.benchmarks[0].abilities[0].normalized == {"a": 0.0, "b": 0.0}


def test_paper_style_average_over_shared_benchmarks(result_dirs):
    comparison = normalize(collect_scores(result_dirs))
    assert comparison.averaged == ["MMBench_DEV_EN", "MME", "MMStar", "POPE", "tiny_yn"]
    assert comparison.left_out == {"SEEDBench_IMG": ["moslora"]}
    lora = (70.0 + 1900 / 2800 * 100 + 50.0 + 80.0 + 60.0) / 5
    moslora = (80.0 + 2200 / 2800 * 100 + 55.0 + 84.0 + 70.0) / 5
    assert comparison.average == pytest.approx({"lora": lora, "moslora": moslora})
    assert comparison.average_normalized == pytest.approx({"lora": 100 * lora / moslora, "moslora": 100.0})


def test_report_files(result_dirs, tmp_path):
    comparison = normalize(collect_scores(result_dirs, labels="LoRA,MoSLoRA"))
    files = write_report(comparison, tmp_path / "out")
    data = json.loads(files.json.read_text())
    assert data["labels"] == ["LoRA", "MoSLoRA"] and "100 * score / max" in data["formula"]
    ar = next(a for b in data["benchmarks"] if b["benchmark"] == "MMBench_DEV_EN" for a in b["abilities"]
              if a["ability"] == "AR")
    assert ar["raw"] == {"LoRA": 0.6, "MoSLoRA": 0.8}
    assert ar["normalized"] == pytest.approx({"LoRA": 75.0, "MoSLoRA": 100.0})
    markdown = files.markdown.read_text()
    assert "normalized = 100 * score / max over the compared checkpoints" in markdown
    assert "| ability | level | LoRA | MoSLoRA |" in markdown
    assert "| AR | l2-category | 60.0 (75.0) | 80.0 (100.0) |" in markdown
    assert "left out: SEEDBench_IMG (missing for MoSLoRA)" in markdown
    assert "newest of 2 copies" in markdown
    names = sorted(p.name for p in files.plots)
    assert names == ["radar_MMBench_DEV_EN.png", "radar_MME.png", "radar_MMStar.png", "radar_POPE.png",
                     "radar_SEEDBench_IMG.png"]
    for plot in files.plots:
        assert plot.stat().st_size > 1000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_layout_is_warned_about_and_skipped(result_dirs, caplog):
    bad = result_dirs[0] / "lora_Weird_acc.csv"
    bad.write_text('"foo","bar"\n"1","2"\n')
    with caplog.at_level("WARNING"):
        lora, _ = collect_scores(result_dirs)
    assert "Weird" not in lora.benchmarks and "MME" in lora.benchmarks
    assert any(str(bad.resolve()) in w and "unknown layout" in w for w in lora.warnings)
    assert str(bad.resolve()) in caplog.text


def test_missing_and_empty_dirs_are_named(tmp_path, result_dirs):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "x_MME.xlsx").write_text("not a result")
    with pytest.raises(AbilitiesError) as error:
        collect_scores([result_dirs[0], empty, tmp_path / "nowhere"])
    message = str(error.value)
    assert f"not a directory: {tmp_path / 'nowhere'}" in message
    assert str(empty) in message and "*_acc.csv" in message and "*_score.csv" in message
    assert str(result_dirs[0]) not in message


def test_label_count_must_match(result_dirs):
    with pytest.raises(AbilitiesError, match="--labels has 3 name"):
        collect_scores(result_dirs, labels="a,b,c")
    with pytest.raises(AbilitiesError, match="unique"):
        collect_scores(result_dirs, labels=["a", "a"])


def run_cli(argv):
    parser = argparse.ArgumentParser()
    abilities.add_arguments(parser, "abilities")
    return abilities.run(parser.parse_args(argv), "abilities")


def test_cli_end_to_end(result_dirs, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_cli([*map(str, result_dirs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| AR | l2-category | 60.0 (75.0) | 80.0 (100.0) |" in printed and "abilities.json" in printed
    assert (out / "abilities.json").is_file() and (out / "abilities.md").is_file()
    assert (out / "radar_MMBench_DEV_EN.png").read_bytes()[:4] == b"\x89PNG"
    assert run_cli([*map(str, result_dirs), "--out", str(tmp_path / "plain"), "--no-plot"]) == 0
    assert not list((tmp_path / "plain").glob("*.png"))


def test_cli_errors_exit_2(result_dirs, tmp_path, capsys):
    assert run_cli([str(result_dirs[0]), str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert run_cli([*map(str, result_dirs), "--out", str(tmp_path / "o"), "--labels", "only_one"]) == 2
    assert "--labels has 1 name" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_matplotlib_is_imported_only_for_plots():
    code = ("import sys, llava_moslora.evaluation.abilities; "
            "print('matplotlib' in sys.modules, 'pandas' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
