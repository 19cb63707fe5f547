"""How close --dry_run's per-process memory estimate is to a measured CPU run.

    python benchmarks/memory_estimate.py                     # ~100M-parameter LM, MoSLoRA r=64, 2 ranks
    python benchmarks/memory_estimate.py --hidden 512 --layers 4 --steps 3   # quicker
    python benchmarks/memory_estimate.py --llava-7b          # the dry run alone, LLaVA-1.5-7B shapes

Builds a Llama-shaped LM (random weights) and a small CLIP tower, then for ZeRO-2 and ZeRO-3 runs
scripts/pretrain.sh twice with the same flags (stage-1 script, MoSLoRA on the LM, fp32, 2 CPU
processes): once with --dry_run (the estimate) and once for --steps steps (train_metrics.json's
peak memory: the highest rank's max RSS). The process baseline (Python, torch, transformers and
DeepSpeed imported, no model) is measured in a fresh process and subtracted from the peak, since
the estimate counts tensors only. Prints estimate, measured and their ratio.

--llava-7b writes configs (no weights) shaped like Vicuna-7B (32000-token tokenizer) and CLIP
ViT-L/14-336 and prints scripts/finetune.sh's --dry_run for LLaVA-1.5's stage 2 on 8 GPUs in
bf16 (MoSLoRA r=128, per-device batch 16, length 2048): what a user sees on a login node.
`--llava-7b --gpus 1 --per-device 4 --bits 4` is the one-GPU QLoRA recipe.

--qlora-peaks trains the same LM in one process at 16, 8 and 4 bits and prints each run's
training-phase peak RSS (what docs/TRAINING.md's QLoRA section reports for the CPU).

--startup-peaks trains one step under ZeRO-2, ZeRO-3 and ZeRO-3 with offload (2 CPU processes)
and prints each rank's peak RSS of start-up: building the model and DeepSpeed's engine, before
step 1 (train_metrics.json's startup_peak_memory_bytes_by_rank), and under ZeRO-3 how much of the
bases' parameters rank 0 holds once they are loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 ** 2
BASELINE = ("import resource, torch, transformers, deepspeed, llava_moslora.train.main, llava_moslora.data; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")


def make_bases(work: Path, hidden: int, layers: int) -> dict:
    from PIL import Image

    from llava_moslora.demo.tiny import save_tiny_clip, save_tiny_lm, train_tokenizer

    texts = ["What color is the image? The image is red, green, blue or yellow.", "Describe the image."] * 50
    tokenizer = train_tokenizer(texts, style="llama", vocab_size=512)
    lm = save_tiny_lm(work / "lm", tokenizer, hidden_size=hidden, num_layers=layers, num_heads=max(1, hidden // 64),
                      intermediate_size=int(hidden * 2.6875))
    tower = work / "clip"
    save_tiny_clip(tower, image_size=32, patch_size=8)
    (work / "images").mkdir(exist_ok=True)
    records = []
    for i, (name, rgb) in enumerate([("red", (220, 30, 30)), ("blue", (30, 40, 220))] * 32):
        Image.new("RGB", (32, 32), rgb).save(work / "images" / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat color is the image? " + "Please look closely. " * 8},
            {"from": "gpt", "value": f"The image is {name}. " * 12}]})
    (work / "data.json").write_text(json.dumps(records))
    return {"MODEL": str(lm), "VISION_TOWER": str(tower), "DATA_PATH": str(work / "data.json"),
            "IMAGE_FOLDER": str(work / "images")}


def llava_7b_configs(work: Path) -> dict:
    """Configs and tokenizer of LLaVA-1.5-7B's bases, without weights."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig

    from llava_moslora.demo.tiny import train_tokenizer

    tokenizer = train_tokenizer(["What color is the image? Describe the image."] * 20, style="llama", vocab_size=512)
    tokenizer.add_tokens([f"<w{i}>" for i in range(32000 - len(tokenizer))])  # Vicuna's vocabulary size
    LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                tie_word_embeddings=False).save_pretrained(work / "vicuna-7b")
    tokenizer.save_pretrained(work / "vicuna-7b")
    CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=336, patch_size=14, projection_dim=768).save_pretrained(work / "clip-336")
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(
        work / "clip-336")
    (work / "mix.json").write_text(json.dumps([{"id": str(i), "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]} for i in range(665298)]))
    return {"MODEL": str(work / "vicuna-7b"), "VISION_TOWER": str(work / "clip-336"), "DATA_PATH": str(work / "mix.json"),
            "IMAGE_FOLDER": str(work), "STAGE1_DIR": str(work / "mm_projector.bin")}


def run(script: str, env: dict, *flags: str) -> str:
    result = subprocess.run(["bash", str(ROOT / "scripts" / script), *flags], cwd=ROOT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True)
    if result.returncode != 0:
        sys.exit(f"{script} {' '.join(flags)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def pretrain(env: dict, *flags: str) -> str:
    return run("pretrain.sh", env, *flags)


def estimated_total(printed: str, zero: int) -> float:
    """The dry run's total for this ZeRO stage, in bytes."""
    unit = re.search(r"estimated \((MiB|GiB);", printed).group(1)
    totals = re.search(r"\n  total\s+([\d.]+)\s+([\d.]+)", printed).groups()
    return float(totals[0 if zero == 2 else 1]) * (MIB if unit == "MiB" else 1024 * MIB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="LM hidden size [1024]")
    parser.add_argument("--layers", type=int, default=8, help="LM layers [8]")
    parser.add_argument("--rank", type=int, default=64, help="MoSLoRA rank [64]")
    parser.add_argument("--steps", type=int, default=4, help="training steps per measured run [4]")
    parser.add_argument("--max-length", type=int, default=256, help="model_max_length [256]")
    parser.add_argument("--zero", type=int, nargs="+", choices=(2, 3), default=[2, 3], help="ZeRO stages to compare [2 3]")
    parser.add_argument("--llava-7b", action="store_true", help="only print the dry run of LLaVA-1.5-7B's stage 2")
    parser.add_argument("--gpus", type=int, default=8, help="with --llava-7b: GPUs [8]")
    parser.add_argument("--per-device", type=int, default=16, help="with --llava-7b: per-device batch [16]")
    parser.add_argument("--bits", type=int, default=16, choices=(4, 8, 16), help="with --llava-7b: QLoRA bits [16]")
    parser.add_argument("--qlora-peaks", action="store_true", help="peak RSS of one process at 16 / 8 / 4 bits")
    parser.add_argument("--startup-peaks", action="store_true", help="each rank's start-up peak RSS per ZeRO config")
    args = parser.parse_args()
    if args.llava_7b:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**llava_7b_configs(Path(tmp)), "NUM_GPUS": str(args.gpus), "PER_DEVICE_BATCH": str(args.per_device),
                   "BITS": str(args.bits), "OUTPUT_DIR": str(Path(tmp) / "out")}
            (Path(tmp) / "mm_projector.bin").write_bytes(b"")  # named, never read by a dry run
            print(run("finetune.sh", env, "--dry_run", "--bf16", "True"))
        return
    python = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").is_dir() else sys.executable
    baseline = int(subprocess.run([python, "-c", BASELINE], text=True, capture_output=True, check=True,
                                  env={**os.environ, "DS_ACCELERATOR": "cpu"}).stdout.split()[-1])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = {**make_bases(work, args.hidden, args.layers), "NUM_GPUS": "2", "GLOBAL_BATCH": "8",
               "PER_DEVICE_BATCH": "4"}
        flags = ["--tune_language_model", "adapter", "--adapter", "moslora", "--lora_r", str(args.rank),
                 "--lora_alpha", str(2 * args.rank), "--model_max_length", str(args.max_length),
                 "--dataloader_num_workers", "0", "--max_steps", str(args.steps), "--save_steps", "100000"]
        if args.qlora_peaks:
            print(f"LM hidden {args.hidden} x {args.layers} layers, MoSLoRA r={args.rank}, 1 CPU process, "
                  f"per-device batch 4, {args.steps} steps: training-phase peak RSS")
            for bits in (16, 8, 4):
                out = work / f"bits{bits}"
                pretrain({**env, "NUM_GPUS": "1", "GLOBAL_BATCH": "4", "BITS": str(bits), "OUTPUT_DIR": str(out)}, *flags)
                peak = json.loads((out / "train_metrics.json").read_text())["peak_memory_bytes"]
                print(f"  {bits:>2} bits: {peak / MIB:.0f} MiB")
            return
        if args.startup_peaks:
            print(f"LM hidden {args.hidden} x {args.layers} layers, MoSLoRA r={args.rank}, 2 CPU processes, fp32: "
                  f"peak RSS of start-up per rank (process baseline {baseline / MIB:.0f} MiB)")
            for zero in ("2", "3", "3_offload"):
                out = work / f"startup-zero{zero}"
                printed = pretrain({**env, "ZERO": zero, "OUTPUT_DIR": str(out)}, *flags[:-4], "--max_steps", "1",
                                   "--save_steps", "100000")
                peaks = json.loads((out / "train_metrics.json").read_text())["startup_peak_memory_bytes_by_rank"]
                held = re.search(r"this rank holds [\d.]+ MiB of their [\d.]+ MiB", printed)
                print(f"  ZeRO-{zero:<10}" + "".join(f"  rank {rank}: {peak / MIB:>6.0f} MiB" for rank, peak in enumerate(peaks))
                      + (f"  (the bases loaded partitioned, rank 0 {held.group(0)[10:]})" if held else ""))
            return
        for zero in args.zero:
            out = work / f"zero{zero}"
            env_zero = {**env, "ZERO": str(zero), "OUTPUT_DIR": str(out)}
            estimate = estimated_total(pretrain(env_zero, *flags, "--dry_run"), zero)
            pretrain(env_zero, *flags)
            peak = json.loads((out / "train_metrics.json").read_text())["peak_memory_bytes"]
            rows.append((zero, estimate, peak, peak - baseline))
    print(f"LM hidden {args.hidden} x {args.layers} layers, MoSLoRA r={args.rank}, 2 CPU processes, fp32, "
          f"per-device batch 4, max length {args.max_length}; process baseline {baseline / MIB:.0f} MiB")
    print(f"{'ZeRO':>4} {'estimate MiB':>13} {'peak RSS MiB':>13} {'peak - baseline':>16} {'estimate / measured':>20}")
    for zero, estimate, peak, above in rows:
        print(f"{zero:>4} {estimate / MIB:>13.0f} {peak / MIB:>13.0f} {above / MIB:>16.0f} {estimate / above:>20.2f}")


if __name__ == "__main__":
    main()
