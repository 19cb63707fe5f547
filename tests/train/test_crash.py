"""Failures inside a run, through the stage script with 2 ranks, injected into rank 0's forward by
a sitecustomize that patches transformers' LLaVA (where a CUDA out-of-memory, a bug or a
diverging loss would show): an exception ends the whole run within seconds, said once with the
rank and step (train/crash.py); a NaN loss is left out of its step and counted, and several in a
row stop the run naming the steps and samples (train/nonfinite.py)."""
import json
import math
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from helpers import ROOT, losses, script_env, stage2_env

pytestmark = pytest.mark.slow

RAISE_IN_FORWARD = '''import os
if os.environ.get("RANK") == "0" and os.environ.get("CRASH_AT_STEP"):
    import torch
    import transformers.models.llava.modeling_llava as llava

    original, calls = llava.LlavaForConditionalGeneration.forward, [0]

    def forward(self, *args, **kwargs):
        if self.training:
            calls[0] += 1
            if calls[0] == int(os.environ["CRASH_AT_STEP"]):  # one forward per step: no accumulation here
                import time
                with open(os.environ["CRASH_MARK"], "w") as mark:
                    mark.write(str(time.time()))
                raise {error}("{message}")
        return original(self, *args, **kwargs)

    llava.LlavaForConditionalGeneration.forward = forward
'''


def processes_of(marker):
    """The pids whose command line names `marker` (the run's output folder is in every rank's)."""
    return subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()


@pytest.mark.parametrize("error, message", [
    ("RuntimeError", "a bug nobody foresaw"),
    ("torch.OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB"),
])
def test_an_exception_in_a_forward_ends_every_process_and_is_said_once(error, message, shapes_data, stage1, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(RAISE_IN_FORWARD.replace("{error}", error).replace("{message}", message))
    out = tmp_path / "crashing-run"
    mark = tmp_path / "crashed-at"
    env = script_env({**stage2_env(shapes_data, stage1, out), "PYTHONPATH": str(site), "CRASH_AT_STEP": "3",
                      "CRASH_MARK": str(mark)})
    result = subprocess.run(["bash", str(ROOT / "scripts" / "finetune.sh"), "--max_steps", "20",
                             "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--model_max_length", "256",
                             "--dataloader_num_workers", "2"], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    ended = time.time()
    left = processes_of(str(out))
    assert result.returncode != 0, result.stderr[-3000:]
    assert not left, f"processes of the run still alive: {left}"
    said = [line for line in result.stderr.splitlines() if line.startswith("llava-moslora train:")
            and (" failed: " in line or "out of memory on rank" in line)]
    assert len(said) == 1, result.stderr[-4000:]
    assert "rank 0, step 3" in said[0], said[0]
    if error == "torch.OutOfMemoryError":
        assert "per-device batch 4" in said[0] and "PER_DEVICE_BATCH=2" in said[0], said[0]
        assert "samples [qa-" in said[0] or "samples [text-" in said[0], said[0]
    assert "ChildFailedError" not in result.stderr  # the launcher says it in one line, no report
    assert "another rank failed" in result.stderr  # rank 1: why it stopped, in one line
    assert "is killed by signal" not in result.stderr  # its own workers' ending is no news
    after = ended - float(mark.read_text())
    print(f"\n[crash: {error}] every process gone {after:.1f} s after the exception (exit {result.returncode})")
    assert after < 30, after


NAN_IN_FORWARD = '''import os
if os.environ.get("RANK") == "0" and os.environ.get("NAN_AT_STEPS"):
    import transformers.models.llava.modeling_llava as llava

    original, calls = llava.LlavaForConditionalGeneration.forward, [0]
    steps = {int(step) for step in os.environ["NAN_AT_STEPS"].split(",")}

    def forward(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        if self.training:
            calls[0] += 1
            if calls[0] in steps and output.loss is not None:
                output.loss = output.loss * float("nan")
        return output

    llava.LlavaForConditionalGeneration.forward = forward
'''


def nan_run(shapes_data, stage1, tmp_path, steps):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(NAN_IN_FORWARD)
    out = tmp_path / "nan-run"
    env = script_env({**stage2_env(shapes_data, stage1, out), "PYTHONPATH": str(site), "NAN_AT_STEPS": steps})
    result = subprocess.run(["bash", str(ROOT / "scripts" / "finetune.sh"), "--max_steps", "8", "--save_steps", "2",
                             "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--model_max_length", "256",
                             "--dataloader_num_workers", "0"], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    return out, result


def test_a_nan_loss_in_one_step_is_left_out_and_counted(shapes_data, stage1, tmp_path):
    out, result = nan_run(shapes_data, stage1, tmp_path, "3")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "train_metrics.json").read_text())
    assert metrics["nonfinite_steps"] == [3] and metrics["global_step"] == 8
    logged = losses(out)
    assert all(math.isfinite(value) for value in logged), logged  # the NaN reached no weight
    weights = load_file(str(out / "trainable.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_nan_losses_in_a_row_stop_the_run_naming_steps_and_samples(shapes_data, stage1, tmp_path):
    out, result = nan_run(shapes_data, stage1, tmp_path, "3,4,5")
    assert result.returncode == 2, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "not finite" in line]
    assert len(said) == 1, result.stderr[-3000:]
    assert "3 steps in a row (steps 3, 4, 5; samples [" in said[0] and "qa-" in said[0], said[0]
    # the last checkpoint stays (step 4's: a left-out micro-batch leaves the weights as they were)
    assert (out / "checkpoint-4" / "trainer_state.json").is_file() and not list(out.glob("checkpoint-[5-9]"))
    assert not (out / "trainable.safetensors").exists()
