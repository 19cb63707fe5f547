"""The benchmark scripts run, and the per-expert-loop reference computes what MoE-LoRA computes.
(No timing is asserted: the scripts print ratios for people to read.)"""
import importlib.util

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


def test_data_scale_benchmark_prints_its_table_and_the_targets(tmp_path):
    out = run_benchmark("data_scale", "--records", "2000", "--ranks", "2,1", "--work-dir", str(tmp_path))
    assert "| W | samples on rank 0 | load s | screen s | start-up s |" in out
    assert "| 2 | 1000 |" in out and "| 1 | 2000 |" in out
    assert "x the 60 s target" in out and "x the 1.5 GB target" in out


def test_embedded_images_benchmark_reads_a_parquet_with_images_lazily(tmp_path):
    out = run_benchmark("embedded_images", "--records", "600", "--draws", "50", "--work-dir", str(tmp_path))
    assert out.count("| draw 50 samples (") == 2 and "600 samples" in out  # cold and warm
    assert "x the images' bytes (target <= 0.10)" in out


def test_web_load_benchmark_drives_the_server_and_reports_each_level(tiny_checkpoint):
    pytest.importorskip("gradio_client", reason="the web load benchmark drives the page with gradio_client")
    out = run_benchmark("web_load", "--model", str(tiny_checkpoint), "--clients", "1,3", "--requests", "6",
                        "--tokens", "4")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith(("| 1 |", "| 3 |"))]
    assert [(row[0].strip(), row[1].strip(), row[2].strip()) for row in rows] == [("1", "6", "0"), ("3", "6", "0")]
    assert "server RSS" in out and "(target <= 10%)" in out


@pytest.mark.slow
def test_memory_estimate_benchmark_prints_estimate_and_measured():
    out = run_benchmark("memory_estimate", "--hidden", "64", "--layers", "2", "--rank", "4", "--steps", "1")
    rows = [line.split() for line in out.splitlines() if line.split()[:1] in (["2"], ["3"])]
    assert [row[0] for row in rows] == ["2", "3"]
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
