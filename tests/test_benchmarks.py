"""The benchmark scripts run, and the per-expert-loop reference computes what MoE-LoRA computes.
(No timing is asserted: the scripts print ratios for people to read.)"""
import importlib.util
import re

import pytest
import torch

from helpers import ROOT


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loop_reference_equals_the_vectorised_moe_lora():
    bench = load("adapters")
    modules = bench.variants(48, 40, 4, torch.device("cpu"), torch.float32)
    vectorised, loop = modules["our MoE-LoRA E20 k10 r4"], modules["loop MoE-LoRA E20 k10 r4"]
    with torch.no_grad():
        vectorised.proj.lora_B.normal_()
    x = torch.randn(2, 5, 48)
    torch.testing.assert_close(loop(x), vectorised(x), rtol=1e-5, atol=1e-5)


def test_adapters_benchmark_prints_its_table_and_ratios(capsys):
    assert load("adapters").main(["--shapes", "64x96", "--tokens", "8", "--repeats", "1", "--warmup", "1",
                                  "--r", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| PEFT LoRA |" in out and "| loop MoE-LoRA E20 k10 r4 |" in out
    assert "our LoRA / PEFT LoRA" in out and "MoSLoRA / LoRA" in out


def test_train_step_benchmark_prints_every_case_and_the_ratios(capsys):
    bench = load("train_step")
    bench.PRESETS["micro"] = dict(bench.PRESETS["tiny"], batch=1, text_tokens=8, r=4,
                                  text={**bench.PRESETS["tiny"]["text"], "num_hidden_layers": 1})
    try:
        assert bench.main(["--preset", "micro", "--steps", "1", "--warmup", "0", "--device", "cpu"]) == 0
    finally:
        del bench.PRESETS["micro"]
    out = capsys.readouterr().out
    assert sum(line.startswith(("| lora |", "| moslora |", "| moelora |")) for line in out.splitlines()) == 6
    assert "MoSLoRA / LoRA per step" in out and "Riemannian / plain (moelora)" in out


def run_benchmark(name, *args):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(out, first_cell):
    """The cells of the Markdown table rows of `out` whose first cell matches `first_cell` (a regex)."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    return [row for row in rows if re.fullmatch(first_cell, row[0])]


def test_data_scale_benchmark_reports_consistent_numbers(tmp_path):
    # one world size, cold then warm: the two child processes the benchmark is made of
    out = run_benchmark("data_scale", "--records", "2000", "--ranks", "2", "--work-dir", str(tmp_path))
    rows = table_rows(out, r"2( cold)?")
    assert [row[0] for row in rows] == ["2 cold", "2"] and all(row[1] == "1000" for row in rows)
    targets = re.findall(r"start-up ([\d.]+) s = ([\d.]+) x the 60 s target.*; memory (\d+) MB = ([\d.]+) x the 1.5 GB", out)
    assert len(targets) == 2
    for row, (startup, startup_ratio, memory, memory_ratio) in zip(rows, targets):
        load, screen, total = map(float, row[2:5])
        assert abs(load + screen - total) <= 0.151 and float(startup) == total  # each printed to 0.1 s
        assert abs(float(startup_ratio) - total / 60) <= 0.006
        assert float(memory) == max(float(mb) for mb in row[5].split(" / "))
        assert abs(float(memory_ratio) - float(memory) / 1536) <= 0.006


def test_embedded_images_benchmark_reports_consistent_numbers(tmp_path):
    out = run_benchmark("embedded_images", "--records", "600", "--draws", "50", "--work-dir", str(tmp_path))
    assert len(re.findall(r"rank 0 of 8, .*: 600 samples,", out)) == 2  # cold and warm
    stages = table_rows(out, r"load .*|screen .*|draw 50 samples \((\d+) images\)")
    assert len(stages) == 6 and all(float(row[1]) >= 0 for row in stages)
    images_mb = float(re.search(r"(\d+) MiB of images in the file", out).group(1))
    share = re.search(r"anonymous memory at most (\d+) MB = ([\d.]+) x the images' bytes \(target <= 0.10\)", out)
    warm = stages[3:]  # the share is the warm run's largest anonymous figure
    assert float(share.group(1)) == max(float(row[3]) for row in warm)
    anon, ratio = float(share.group(1)), float(share.group(2))  # anon and images_mb printed to 1 MB, ratio to 0.001
    assert (anon - 0.5) / (images_mb + 0.5) - 0.0005 <= ratio <= (anon + 0.5) / max(images_mb - 0.5, 1e-9) + 0.0005


def test_web_load_benchmark_drives_the_server_and_reports_each_level(tiny_checkpoint):
    pytest.importorskip("gradio_client", reason="the web load benchmark drives the page with gradio_client")
    out = run_benchmark("web_load", "--model", str(tiny_checkpoint), "--clients", "1,3", "--requests", "6",
                        "--tokens", "4")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| 1 |", "| 3 |"))]
    assert [(row[0].strip(), row[1].strip(), row[2].strip()) for row in rows] == [("1", "6", "0"), ("3", "6", "0")]
    assert "server RSS" in out and "(target <= 10%)" in out


@pytest.mark.slow
def test_memory_estimate_benchmark_prints_estimate_and_measured():
    # ZeRO-3 alone: its estimate is the one that counts partitions; both stages share the code path
    out = run_benchmark("memory_estimate", "--hidden", "64", "--layers", "2", "--rank", "4", "--steps", "1",
                        "--zero", "3")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["2"], ["3"])]
    assert [row[0] for row in rows] == ["3"]
    for row in rows:
        estimate, peak, above, ratio = map(float, row[1:])
        assert estimate > 0 and peak > above > 0 and abs(ratio - estimate / above) < 0.01


def test_packing_benchmark_measures_the_mix_and_packs_below_padding(tmp_path):
    out = run_benchmark("packing_speed", "--records", "300", "--runs", "0", "--work-dir", str(tmp_path),
                        "--json", str(tmp_path / "packing.json"))
    import json

    ratios = json.loads((tmp_path / "packing.json").read_text())["processed_per_real_token"]
    assert "packed rows <= 2048" in out
    assert ratios["one_row/random"] == 1.0 and 1.0 <= ratios["packed/random"] < ratios["padded/random"]
    assert ratios["packed/grouped"] <= ratios["padded/grouped"] + 0.02  # grouped padding is already tight


def test_gpu_check_runs_every_check_at_tiny_sizes_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh --cpu-smoke: the script a GPU session runs cannot rot unnoticed."""
    import json
    import subprocess

    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke", "--out", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    checks = summary["checks"]
    assert set(checks) == {"stage2_step", "packing", "batched_eval", "qlora_step"}
    assert not any("error" in check for check in checks.values()), checks
    assert checks["packing"]["parity_ok"] and checks["batched_eval"]["differing_answers"] == 0
    assert checks["stage2_step"]["tokens_per_second"] > 0 and checks["qlora_step"]["four_bit_over_sixteen"] > 0
    assert "| packing |" in (tmp_path / "summary.md").read_text()
