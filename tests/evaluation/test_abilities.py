"""Per-ability scores from VLMEvalKit result files: parsing, 0-100 scaling, normalization, reports, CLI.

Fixtures (fixtures/abilities/) are written in VLMEvalKit's layouts (pandas, csv.QUOTE_ALL): `lora/` is a
flat work dir with `lora_{dataset}` files; `moslora/{old,new}` are two run.py runs of a model named
`llava_moslora_v1`, laid out by `moslora_dirs` as `{work_dir}/{model}/T.../` with symlinks to the newest.
"""
import argparse
import json
import math
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


# --- radar plots ------------------------------------------------------------------------------

LONG_NAMES = ["fine-grained cross-instance perception", "fine-grained single-instance perception",
              "coarse perception", "science & technology", "instance reasoning", "logical reasoning"]


def mmbench_categories():
    """MMBench's 20 leaf abilities (snake_case, up to 38 characters) from the fixture's header."""
    header = (FIXTURES / "lora" / "lora_MMBench_DEV_EN_acc.csv").read_text().splitlines()[0]
    names = [name.strip('"') for name in header.split(",")]
    return names[names.index("RR") + 1:]


def radar_bench(names, series):
    """A compared benchmark with `series` checkpoints over `names`, built through normalize()."""
    from llava_moslora.evaluation.scores import AbilityScore, BenchmarkScores, CheckpointScores
    checkpoints = []
    for j in range(series):
        abilities_ = [AbilityScore("Overall", "overall", 50.0, 50.0)]
        abilities_ += [AbilityScore(name, "category", 0.0, 25.0 + (7 * i + 13 * j) % 70)
                       for i, name in enumerate(names)]
        bench = BenchmarkScores("BENCH", "mcq", Path("x.csv"), abilities_, "Overall", list(names))
        checkpoints.append(CheckpointScores(f"checkpoint_{j}", Path("."), {"BENCH": bench}))
    comparison = normalize(checkpoints)
    return comparison.benchmarks[0], comparison.labels


def drawn(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    return canvas.get_renderer()


def shown(labels):
    return [text for text in labels if text.get_visible() and text.get_text().strip()]


@pytest.mark.parametrize("names", [LONG_NAMES[:3], LONG_NAMES, mmbench_categories()], ids=["3", "6", "20"])
@pytest.mark.parametrize("series", [1, 2, 5])
def test_radar_labels_do_not_overlap(names, series):
    from llava_moslora.evaluation.report import radar_figure
    figure = radar_figure(*radar_bench(names, series))
    renderer = drawn(figure)
    boxes = []
    for index, axes in enumerate(figure.axes):
        radial, angular = shown(axes.yaxis.get_ticklabels()), shown(axes.xaxis.get_ticklabels())
        assert len(radial) >= 4 and len(angular) == len(names)  # the check below is not vacuous
        boxes += [(f"panel {index} ring value {t.get_text()!r}", t.get_window_extent(renderer)) for t in radial]
        boxes += [(f"panel {index} ability {t.get_text()!r}", t.get_window_extent(renderer)) for t in angular]
        boxes.append((f"panel {index} title", axes.title.get_window_extent(renderer)))
    boxes += [("legend", legend.get_window_extent(renderer)) for legend in figure.legends]
    clashes = [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]
    assert not clashes
    page = figure.bbox
    cut = [name for name, box in boxes if box.x0 < page.x0 or box.y0 < page.y0 or box.x1 > page.x1 or box.y1 > page.y1]
    assert not cut  # every label is inside the saved image


@pytest.mark.parametrize("names", [LONG_NAMES[:3], LONG_NAMES, mmbench_categories()], ids=["3", "6", "20"])
def test_radar_ability_names_stay_outside_the_circle(names):
    from llava_moslora.evaluation.report import radar_figure
    figure = radar_figure(*radar_bench(names, 2))
    renderer = drawn(figure)
    for axes in figure.axes:
        floor, top = axes.get_ylim()
        (cx, cy), (rx, ry) = axes.transData.transform([(0, floor), (0, top)])
        radius = math.hypot(rx - cx, ry - cy)
        for text in shown(axes.xaxis.get_ticklabels()):
            box = text.get_window_extent(renderer)
            nearest = (min(max(cx, box.x0), box.x1), min(max(cy, box.y0), box.y1))
            assert math.dist((cx, cy), nearest) > radius, f"{text.get_text()!r} reaches into the circle"


@pytest.mark.parametrize("lowest, ticks", [(5.0, [20, 40, 60, 80, 100]), (62.0, [60, 70, 80, 90, 100]),
                                           (85.0, [75, 80, 85, 90, 95, 100]), (100.0, [92, 94, 96, 98, 100])])
def test_radar_normalized_rings(lowest, ticks):
    from llava_moslora.evaluation.report import radar_figure
    bench, labels = radar_bench(LONG_NAMES, 2)
    for ability in bench.abilities:
        ability.normalized = {label: max(lowest, 100.0 if i else lowest) for i, label in enumerate(labels)}
    normalized = radar_figure(bench, labels).axes[1]
    assert [t for t in normalized.get_yticks() if t > normalized.get_ylim()[0]] == ticks


def filled(axes):
    from matplotlib.colors import to_rgba
    patches = [p for p in axes.patches if p.get_fill() and to_rgba(p.get_facecolor())[3] > 0]
    collections = [c for c in axes.collections if len(c.get_facecolors()) and c.get_facecolors()[:, 3].max() > 0]
    return patches + collections


@pytest.mark.parametrize("series", [4, 5, 8])
def test_radar_of_many_checkpoints_is_outlines(series):
    from llava_moslora.evaluation.report import radar_figure
    figure = radar_figure(*radar_bench(LONG_NAMES, series))
    assert len(figure.axes) == 2
    for axes in figure.axes:
        assert not filled(axes)
        lines = axes.get_lines()
        assert len(lines) == series
        assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == min(series, 7)


def test_radar_of_two_checkpoints_is_filled():
    from llava_moslora.evaluation.report import radar_figure
    figure = radar_figure(*radar_bench(LONG_NAMES, 2))
    assert [len(filled(axes)) for axes in figure.axes] == [2, 2]


def test_radar_panels_titles_and_legend(result_dirs, tmp_path):
    from llava_moslora.evaluation.report import NORMALIZED_TITLE, RAW_TITLE, radar_figure
    comparison = normalize(collect_scores(result_dirs, labels="LoRA,MoSLoRA"))
    bench, _ = compared(comparison, "MMBench_DEV_EN")
    figure = radar_figure(bench, comparison.labels)
    raw, normalized = figure.axes
    assert raw.get_title() == RAW_TITLE == "score on 0-100" and raw.get_ylim() == (0, 100)
    assert NORMALIZED_TITLE == "normalized: 100 = the best compared checkpoint on each ability"
    floor = normalized.get_ylim()[0]
    assert floor == 60  # lowest normalized radar value: lora's AR, 75
    assert normalized.get_title() == f"{NORMALIZED_TITLE}\n(radius starts at {floor:g}, not 0)"
    assert [line.get_ydata()[0] for line in raw.get_lines()] == pytest.approx([60.0, 80.0])  # AR scores
    assert [line.get_ydata()[0] for line in normalized.get_lines()] == pytest.approx([75.0, 100.0])
    assert len(figure.legends) == 1 and not raw.get_legend() and not normalized.get_legend()
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["LoRA", "MoSLoRA"]
    seed = next(b for b in comparison.benchmarks if b.benchmark == "SEEDBench_IMG")  # only LoRA ran it
    single = radar_figure(seed, comparison.labels)
    assert [axes.get_title() for axes in single.axes] == [RAW_TITLE] and single.axes[0].get_ylim() == (0, 100)
    assert [t.get_text() for t in single.legends[0].get_texts()] == ["LoRA"]
    files = write_report(comparison, tmp_path / "out")
    assert (tmp_path / "out" / "radar_MMBench_DEV_EN.png") in files.plots


def test_radar_normalized_radius_from_zero_has_no_note():
    from llava_moslora.evaluation.report import NORMALIZED_TITLE, radar_figure
    bench, labels = radar_bench(LONG_NAMES, 2)
    bench.abilities[1].normalized[labels[0]] = 5.0
    assert radar_figure(bench, labels).axes[1].get_title() == NORMALIZED_TITLE


@pytest.mark.parametrize("name, width, expected", [
    ("fine-grained single-instance perception", 18, "fine-grained\nsingle-instance\nperception"),
    ("structuralized_imagetext_understanding", 13, "structuralized_\nimagetext_\nunderstanding"),
    ("ocr", 13, "ocr"),
])
def test_wrap_name(name, width, expected):
    from llava_moslora.evaluation.report import wrap_name
    assert wrap_name(name, width) == expected
