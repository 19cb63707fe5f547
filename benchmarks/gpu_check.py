"""Every measurement that needs a GPU, in one run of <= 8 minutes on one GPU (see gpu_check.sh).

    bash benchmarks/gpu_check.sh                   # on a GPU machine: writes gpu_check/{summary.json,summary.md}
    bash benchmarks/gpu_check.sh --cpu-smoke       # the same checks at tiny sizes on the CPU (CI runs it)

Checks, each timed and recorded even when another fails:
  stage2_step  a stage-2 step at LLaVA-1.5-7B shapes (random weights, MoSLoRA r=128, bf16,
               activation checkpointing): s/step, tokens/s, MFU; and the Riemannian
               preconditioner's overhead (plain and preconditioned steps taking turns)
  packing      --packing against padding on the LLaVA-665K-shaped length mix
               (benchmarks/packing_speed.py): per-sample losses of a packed batch against each
               sample alone (parity), real tokens/s packed / padded; flash_attention_2 where
               flash_attn is installed (one row per batch), else sdpa (rows <= 2,048)
  batched_eval batched evaluation (batch 16) against batch 1 on the shipped tiny bases: rows/s
               ratio in bf16, and in fp32 how many answers differ (must be none; in bf16 batch 1
               takes SDPA's unmasked causal kernel and a left-padded batch the masked one, whose
               roundings can flip a greedy answer, so bf16 differences are counted, not failed)
  qlora_step   a QLoRA step (4-bit NF4 base on bitsandbytes' CUDA kernels, MoSLoRA) at 7B width
               (4 layers): s/step, and its loss against the 16-bit base's on the same batch
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
BASES = ROOT / "bases" / "shapes-tiny"


def stage2_step(smoke: bool, device, dtype) -> dict:
    import train_step

    preset = train_step.PRESETS["tiny" if smoke else "7b"]
    result = train_step.run_kind(preset, "moslora", steps=1 if smoke else 5, warmup=1 if smoke else 2, device=device,
                                 dtype=dtype, checkpointing=not smoke)
    seconds, peak = result[False]
    found = {"preset": "tiny" if smoke else "7b", "batch": preset["batch"], "tokens": result["tokens"],
             "seconds_per_step": round(seconds, 4), "tokens_per_second": round(result["tokens"] / seconds, 1),
             "peak_gib": None if peak != peak else round(peak, 2),
             "riemannian_over_plain": round(result["ratio"], 3)}
    if device.type == "cuda":
        found["mfu"] = round(result["flops"] / seconds / 989e12, 4)  # H100 SXM dense bf16 peak
    return found


def packing(smoke: bool, device, dtype) -> dict:
    import packing_speed
    from transformers.utils import is_flash_attn_2_available

    from llava_moslora.data import LlavaCollator
    from llava_moslora.data.collator import packed_row_length

    flash = device.type == "cuda" and is_flash_attn_2_available()
    attention = "flash_attention_2" if flash else "sdpa"
    samples, image_token = packing_speed.load_mix(400 if smoke else 4000, 0, None)
    ratios = packing_speed.token_ratios(samples, 16, 8, 0)
    # parity: each packed sample's loss against the same sample alone
    hidden = 128 if smoke else 1024
    model = packing_speed.small_llava(4096, hidden, 2, attention, device, dtype).eval()
    chosen = packing_speed.batches(samples, "random", 4, 1, 0)[0]
    items = packing_speed.features(samples, chosen, 4096, image_token)
    packed = LlavaCollator(0, packing=True, max_length=packed_row_length(attention, packing_speed.MAX_LENGTH))(items)
    with torch.no_grad():
        batch = packing_speed.on(packed, device, dtype)
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        losses = per_sample_losses(logits, batch["labels"], batch["position_ids"])
        alone = [model(**packing_speed.on(LlavaCollator(0)([item]), device, dtype)).loss.float() for item in items]
    order = [i for row in packing_rows(items, attention) for i in row]
    relative = max(abs(losses[k] - alone[i]).item() / abs(alone[i]).item() for k, i in enumerate(order))
    runs = packing_speed.throughput(samples, image_token, runs=1 if smoke else 3, steps=1 if smoke else 4,
                                    batch=4 if smoke else 16,
                                    hidden=hidden if smoke else 4096, layers=2 if smoke else 4, attention=attention,
                                    device=device, dtype=dtype, log=lambda line: None)
    return {"attention": attention, "processed_per_real_token": ratios, "parity_max_relative_loss_difference": relative,
            "parity_ok": relative <= (1e-5 if dtype == torch.float32 else 2e-2),
            "packed_over_padded": [run["packed_over_padded"] for run in runs],
            "packed_over_padded_grouped": [run["packed_over_padded_grouped"] for run in runs]}


def packing_rows(items: list[dict], attention: str) -> list[list[int]]:
    import packing_speed

    from llava_moslora.data.collator import pack_rows, packed_row_length
    return pack_rows([len(item["input_ids"]) for item in items], packed_row_length(attention, packing_speed.MAX_LENGTH))


def per_sample_losses(logits, labels, position_ids) -> list[torch.Tensor]:
    """Mean next-token loss of each sample of a packed batch, row by row (a sample starts where
    the positions restart)."""
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none",
                                             ignore_index=-100)
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    owner = (starts.long().cumsum(-1) - 1)[:, 1:]
    target = labels[:, 1:] != -100
    found = []
    for row in range(labels.shape[0]):
        for sample in owner[row].unique():
            where = target[row] & (owner[row] == sample)
            if where.any():
                found.append(loss[row][where].sum() / where.sum())
    return found


def batched_eval(smoke: bool, device, dtype) -> dict:
    import eval_speed

    from llava_moslora.model import build_llava, save_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        bundle = build_llava(str(BASES / "vision"), str(BASES / "llm"))
        save_checkpoint(bundle, scratch / "model")
        subprocess.run([sys.executable, "-m", "llava_moslora", "synth", "--out", str(scratch / "data"),
                        "--num_pretrain", "8", "--num_instruct", "8", "--num_test", "16" if smoke else "200",
                        "--num_val", "8"], check=True, capture_output=True)
        names = ["ShapesVQA_MCQ", "ShapesVQA_YN"]
        result = eval_speed.compare_batch_sizes(str(scratch / "model"), scratch / "data", names, [1, 16],
                                                repeats=1 if smoke else 2, device=device.type)
        exact = result if dtype == torch.float32 else eval_speed.compare_batch_sizes(
            str(scratch / "model"), scratch / "data", names, [1, 16], repeats=1, device=device.type, dtype="fp32")
    return {"rows": result["rows"], "dtype": result["dtype"], "device": result["device"],
            "rows_per_second": {str(k): round(v, 2) for k, v in result["rows_per_second"].items()},
            "batch16_over_batch1": round(result["ratio"], 2),
            "differing_answers": exact["differing_answers"],  # fp32: batching must not change an answer
            "differing_answers_half": result["differing_answers"] if dtype != torch.float32 else None}


def qlora_step(smoke: bool, device, dtype) -> dict:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes is not installed"}
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from llava_moslora.adapters import AdapterConfig
    from llava_moslora.model import Recipe, apply_tuning, build_llava
    from llava_moslora.model.quantize import Quantization

    with tempfile.TemporaryDirectory() as scratch:
        llm = Path(scratch) / "llm"
        config = AutoConfig.from_pretrained(BASES / "llm")
        if not smoke:  # 7B's width, 4 layers
            config.update(dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4,
                               num_attention_heads=32, num_key_value_heads=32, head_dim=128))
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(llm)
        AutoTokenizer.from_pretrained(BASES / "llm").save_pretrained(llm)
        losses, seconds = {}, {}
        for bits in (16, 4):
            bundle = build_llava(str(BASES / "vision"), str(llm), dtype=dtype,
                                 quantization=Quantization(4) if bits == 4 else None)
            recipe = Recipe(**{**bundle.recipe.to_dict(), "stage": 2, "tune_language_model": "adapter",
                               "llm_adapter": AdapterConfig(kind="moslora", r=16, alpha=32).to_dict()})
            apply_tuning(bundle.model, recipe)
            model = bundle.model.to(device).train()
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            generator = torch.Generator().manual_seed(1)
            ids = torch.randint(3, config.vocab_size - 1, (2, 256 if not smoke else 32), generator=generator).to(device)
            steps = []
            for step in range(3):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                begin = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                steps.append(time.perf_counter() - begin)
                if step == 0:
                    losses[bits] = loss.item()
            seconds[bits] = min(steps[1:])
            del model, bundle, optimizer
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"first_loss": {"16": losses[16], "4": losses[4]},
            "relative_loss_difference": abs(losses[4] - losses[16]) / abs(losses[16]),
            "seconds_per_step": {"16": round(seconds[16], 4), "4": round(seconds[4], 4)},
            "four_bit_over_sixteen": round(seconds[4] / seconds[16], 3)}


CHECKS = {"stage2_step": stage2_step, "packing": packing, "batched_eval": batched_eval, "qlora_step": qlora_step}


def markdown(summary: dict) -> str:
    lines = [f"# GPU check: {summary['device']}", "",
             f"torch {summary['torch']}, {summary['dtype']}, mode {summary['mode']}, {summary['seconds']:.0f} s in all", "",
             "| check | seconds | result |", "|---|---|---|"]
    for name, check in summary["checks"].items():
        shown = {k: v for k, v in check.items() if k not in ("seconds", "traceback")}
        lines.append(f"| {name} | {check.get('seconds', 0):.0f} | `{json.dumps(shown)}` |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU: the script cannot rot")
    parser.add_argument("--out", type=Path, default=Path("gpu_check"), help="folder for summary.json and summary.md")
    parser.add_argument("--only", help="comma-separated checks to run (default: all)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        parser.error("no CUDA device here; --cpu-smoke runs the checks at tiny sizes on the CPU")
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    chosen = args.only.split(",") if args.only else list(CHECKS)
    unknown = sorted(set(chosen) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
    begin = time.perf_counter()
    summary = {"device": torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or 'unknown'})",
               "torch": torch.__version__, "dtype": str(dtype), "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
               "checks": {}}
    for name in chosen:
        started = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            result = CHECKS[name](args.cpu_smoke, device, dtype)
        except Exception as error:  # one failed check must not lose the others' numbers
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        result["seconds"] = round(time.perf_counter() - started, 1)
        summary["checks"][name] = result
        print(f"[gpu_check] {name}: {json.dumps({k: v for k, v in result.items() if k != 'traceback'})}", flush=True)
        if cuda:
            torch.cuda.empty_cache()
    summary["seconds"] = time.perf_counter() - begin
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text(markdown(summary))
    failed = [name for name, check in summary["checks"].items()
              if "error" in check or check.get("parity_ok") is False or check.get("differing_answers")]
    print(f"[gpu_check] {summary['seconds']:.0f} s; wrote {args.out / 'summary.json'} and summary.md"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
