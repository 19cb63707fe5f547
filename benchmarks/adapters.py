"""Forward+backward time and peak memory of one adapted linear layer, ours beside the references.

    python benchmarks/adapters.py                 # GPU when present (CUDA events), else CPU
    python benchmarks/adapters.py --tokens 64 --repeats 3 --shapes 1024x1024   # a quick look

Variants: nn.Linear alone, PEFT's LoRA, our LoRA, our MoSLoRA (same r), our MoE-LoRA (E=8 k=2 r=8
and the paper's E=20 k=10 r=4), and a per-expert-loop MoE-LoRA reference with the same math.
The base weight is frozen and the input needs a gradient, as inside a fine-tuned model. Prints
median times after warm-up and the ratios ours/PEFT, MoSLoRA/LoRA and MoE vectorised/loop.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from llava_moslora.adapters import AdapterConfig, apply_adapters
from llava_moslora.adapters.moe import MoELoraLinear


class OneLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class LoopMoELora(nn.Module):
    """MoE-LoRA computed expert by expert over the tokens routed to it (the usual loop)."""

    def __init__(self, layer: MoELoraLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        x2d = x.reshape(-1, layer.in_features)
        result = layer.base_layer(x2d)
        gates = layer.route(x2d)
        A, B = layer.expert_factors()
        out = torch.zeros_like(result)
        for expert in range(layer.num_experts):
            tokens = gates[:, expert].nonzero(as_tuple=True)[0]
            if tokens.numel() == 0:
                continue
            h = F.linear(F.linear(x2d[tokens], A[expert]) * layer.scaling, B[expert])
            out = out.index_add(0, tokens, h * gates[tokens, expert, None].to(h.dtype))
        return (result + out).view(*x.shape[:-1], layer.out_features)


def variants(d_in: int, d_out: int, r: int, device, dtype) -> dict[str, nn.Module]:
    from peft import LoraConfig, get_peft_model

    def ours(**config) -> nn.Module:
        model = OneLayer(d_in, d_out)
        apply_adapters(model, AdapterConfig(target_modules=["proj"], **config))
        return model.to(device, dtype)

    linear = OneLayer(d_in, d_out).to(device, dtype).requires_grad_(False)
    peft = get_peft_model(OneLayer(d_in, d_out), LoraConfig(r=r, lora_alpha=2 * r, target_modules=["proj"]))
    moe_paper = ours(kind="moelora", r=4, alpha=8, num_experts=20, top_k=10)
    return {
        "nn.Linear (frozen)": linear,
        "PEFT LoRA": peft.base_model.model.to(device, dtype),  # the layer itself, no PeftModel wrapper
        "our LoRA": ours(kind="lora", r=r, alpha=2 * r),
        "our MoSLoRA": ours(kind="moslora", r=r, alpha=2 * r),
        "our MoE-LoRA E8 k2 r8": ours(kind="moelora", r=8, alpha=16, num_experts=8, top_k=2),
        "our MoE-LoRA E20 k10 r4": moe_paper,
        "loop MoE-LoRA E20 k10 r4": LoopMoELora(moe_paper.proj),
    }


def step(module: nn.Module, x: torch.Tensor) -> None:
    module(x).float().pow(2).mean().backward()


def timed_step(module: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds of one forward+backward (CUDA events on a GPU)."""
    x.grad = None
    if x.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(module, x)
        end.record()
        torch.cuda.synchronize()
        elapsed = start.elapsed_time(end)
    else:
        begin = time.perf_counter()
        step(module, x)
        elapsed = 1000 * (time.perf_counter() - begin)
    module.zero_grad(set_to_none=True)
    return elapsed


def peak_memory(module: nn.Module, x: torch.Tensor) -> float:
    """MiB allocated at the peak of one step above what was allocated before it (GPU only)."""
    if not x.is_cuda:
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    timed_step(module, x)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure_all(modules: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> dict:
    """label -> (median ms, peak MiB). Variants take turns within each round, so drifts of the
    machine (clocks, other load) touch them all alike instead of whichever ran last."""
    for module in modules.values():
        for _ in range(warmup):
            timed_step(module, x)
    times = {label: [] for label in modules}
    for _ in range(repeats):
        for label, module in modules.items():
            times[label].append(timed_step(module, x))
    return {label: (statistics.median(times[label]), peak_memory(modules[label], x)) for label in modules}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="4096x4096,4096x11008", help="d_in x d_out list (LLaMA-7B: attention, MLP)")
    parser.add_argument("--tokens", default=None, help="token counts (default: 512,2048 on GPU; 64,256 on CPU)")
    parser.add_argument("--r", type=int, default=128, help="LoRA / MoSLoRA rank (LLaVA-1.5's LoRA: 128)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default: 50 GPU, 9 CPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    tokens = [int(t) for t in (args.tokens or ("512,2048" if cuda else "64,256")).split(",")]
    repeats = args.repeats or (50 if cuda else 9)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# {name}, torch {torch.__version__}, {dtype}, r={args.r}, median of {repeats} after {args.warmup} warm-up")
    for shape in args.shapes.split(","):
        d_in, d_out = (int(v) for v in shape.split("x"))
        modules = variants(d_in, d_out, args.r, device, dtype)
        for n in tokens:
            x = torch.randn(1, n, d_in, device=device, dtype=dtype, requires_grad=True)
            results = measure_all(modules, x, repeats, args.warmup)
            print(f"\n## {d_in}x{d_out}, {n} tokens\n| variant | ms | peak MiB |\n|---|---|---|")
            for label, (ms, peak) in results.items():
                print(f"| {label} | {ms:.3f} | {peak:.1f} |")
            ms = {label: value[0] for label, value in results.items()}
            # The frozen base matmul is common to every variant; "adapter part" subtracts it.
            part = {label: max(value - ms["nn.Linear (frozen)"], 1e-9) for label, value in ms.items()}
            loop, vectorised = "loop MoE-LoRA E20 k10 r4", "our MoE-LoRA E20 k10 r4"
            print(f"ratios: our LoRA / PEFT LoRA {ms['our LoRA'] / ms['PEFT LoRA']:.3f}; "
                  f"MoSLoRA / LoRA {ms['our MoSLoRA'] / ms['our LoRA']:.3f}; "
                  f"MoE E20 loop / vectorised {ms[loop] / ms[vectorised]:.2f}x "
                  f"(adapter part: {part[loop] / part[vectorised]:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
