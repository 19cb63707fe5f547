"""Time per optimizer step and peak memory of stage-2 training on a LLaVA-shaped model.

    python benchmarks/train_step.py                      # tiny preset (CPU is fine)
    python benchmarks/train_step.py --preset wide        # 7B-wide layers (2 of them), fits a CPU
    python benchmarks/train_step.py --preset 7b          # LLaVA-1.5-7B shapes, random weights, one GPU

Compares lora, moslora and moelora adapters on every linear layer of the LLM (with the projector
trained, as LLaVA's stage 2 does), each with and without Riemannian preconditioning; the two
take turns step by step on the same model, and their ratio is the median of the per-step ratios. On a GPU it
also reports tokens/s and model FLOPs utilisation (MFU): model FLOPs per step = 2 N_lm T (forward)
+ 2 N_lm T (input gradients; the frozen base needs no weight gradients) + 2 N_vision I (tower
forward), with N the parameter counts, T the tokens and I the image tokens of the batch, divided
by the time and the GPU's dense bf16 peak (--peak_tflops; H100 SXM: 989).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from llava_moslora.adapters import AdapterConfig
from llava_moslora.model import Recipe, apply_tuning, enable_activation_checkpointing
from llava_moslora.optim import attach_riemannian

PRESETS = {
    # vision: CLIP ViT-L/14-336 for 7b; text: LLaMA-7B (Vicuna-7B) shapes
    "7b": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=336, patch_size=14),
               text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096),
               batch=4, text_tokens=1472, r=128),
    # LLaMA-7B width with two layers: the per-layer cost of 7B on a machine that cannot hold 7B
    "wide": dict(vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                             image_size=112, patch_size=14),
                 text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                           num_key_value_heads=32, vocab_size=1024, max_position_embeddings=1024),
                 batch=1, text_tokens=192, r=128),
    "tiny": dict(vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                             image_size=64, patch_size=16),
                 text=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                           num_key_value_heads=8, vocab_size=1024, max_position_embeddings=1024),
                 batch=4, text_tokens=112, r=16),
}
ADAPTERS = {
    "lora": lambda r: dict(kind="lora", r=r, alpha=2 * r),
    "moslora": lambda r: dict(kind="moslora", r=r, alpha=2 * r),
    "moelora": lambda r: dict(kind="moelora", r=max(1, r // 8), alpha=2 * max(1, r // 8), num_experts=8, top_k=2),
}


def build(preset: dict, device, dtype):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(**preset["text"])
    vision = CLIPVisionConfig(**preset["vision"])
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=text.vocab_size - 1,
                         image_seq_length=image_tokens, vision_feature_layer=-2)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    return model, image_tokens


def batch(preset: dict, image_tokens: int, vocab: int, device, dtype) -> dict:
    n, t, size = preset["batch"], preset["text_tokens"], preset["vision"]["image_size"]
    text = torch.randint(3, vocab - 1, (n, t), device=device)
    image = torch.full((n, image_tokens), vocab - 1, device=device)
    input_ids = torch.cat([text[:, :1], image, text[:, 1:]], dim=1)
    labels = input_ids.masked_fill(input_ids == vocab - 1, -100)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels,
            "pixel_values": torch.randn(n, 3, size, size, device=device, dtype=dtype)}


def timed_step(model, optimizer, inputs, cuda: bool) -> tuple[float, float]:
    """Seconds of one forward + backward + optimizer step, and its peak GiB (GPU only)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    begin = time.perf_counter()
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - begin
    return seconds, (torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))


def run_kind(preset, kind: str, steps: int, warmup: int, device, dtype, checkpointing: bool) -> dict:
    """Plain and Riemannian steps of one model, taking turns step by step, so that the ratio
    between them does not carry the machine's drift or a second model's memory layout.
    Returns {riemannian: (median s/step, peak GiB)} and the counts for tokens/s and MFU."""
    model, image_tokens = build(preset, device, dtype)
    recipe = Recipe(vision_tower="random", language_model="random", stage=2, tune_language_model="adapter",
                    llm_adapter=AdapterConfig(**ADAPTERS[kind](preset["r"])).to_dict())
    apply_tuning(model, recipe)
    if checkpointing:
        enable_activation_checkpointing(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    inputs = batch(preset, image_tokens, preset["text"]["vocab_size"], device, dtype)
    times, peaks = {False: [], True: []}, {False: [], True: []}
    for index in range(warmup + steps):
        for riemannian in (False, True):
            handle = attach_riemannian(model) if riemannian else None
            seconds, peak = timed_step(model, optimizer, inputs, device.type == "cuda")
            if handle is not None:
                handle.remove()
            if index >= warmup:
                times[riemannian].append(seconds)
                peaks[riemannian].append(peak)
    counts = {name: sum(p.numel() for n, p in model.named_parameters() if name in n)
              for name in ("language_model", "vision_tower")}
    tokens = inputs["input_ids"].numel()
    flops = 4 * counts["language_model"] * tokens + 2 * counts["vision_tower"] * preset["batch"] * image_tokens
    result = {riemannian: (statistics.median(times[riemannian]), max(peaks[riemannian])) for riemannian in times}
    # the median of the per-step ratios: each pair ran back to back
    result["ratio"] = statistics.median(r / p for p, r in zip(times[False], times[True]))
    del model, optimizer
    return dict(result, tokens=tokens, flops=flops, trainable=sum(p.numel() for p in trainable))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    parser.add_argument("--kinds", default="lora,moslora,moelora")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 GPU, 5 CPU)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=None, help="override the preset's batch size")
    parser.add_argument("--activation_checkpointing", action="store_true", help="as LLaVA's scripts train 7B")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="GPU dense bf16 peak for MFU")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    preset = dict(PRESETS[args.preset], **({"batch": args.batch} if args.batch else {}))
    steps = args.steps or (10 if cuda else 5)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {name}, torch {torch.__version__}, {dtype}, preset {args.preset}, batch {preset['batch']}, "
          f"median of {steps} steps after {args.warmup}")
    print("| adapter | riemannian | trainable | s/step | tokens/s | peak GiB | MFU |\n|---|---|---|---|---|---|---|")
    seconds, ratios = {}, []
    for kind in args.kinds.split(","):
        result = run_kind(preset, kind, steps, args.warmup, device, dtype, args.activation_checkpointing)
        for riemannian in (False, True):
            step, peak = result[riemannian]
            seconds[kind, riemannian] = step
            mfu = f"{100 * result['flops'] / step / (args.peak_tflops * 1e12):.1f}%" if cuda else "-"
            print(f"| {kind} | {'yes' if riemannian else 'no'} | {result['trainable']:,} | {step:.4f} "
                  f"| {result['tokens'] / step:,.0f} | {peak:.1f} | {mfu} |", flush=True)
        ratios.append(f"Riemannian / plain ({kind}) {result['ratio']:.3f}")
        if cuda:
            torch.cuda.empty_cache()
    if ("moslora", False) in seconds and ("lora", False) in seconds:
        ratios.insert(0, f"MoSLoRA / LoRA per step {seconds['moslora', False] / seconds['lora', False]:.3f}")
    print("ratios: " + "; ".join(ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
