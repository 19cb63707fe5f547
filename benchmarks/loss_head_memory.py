"""Memory of the loss head with logits only at labels (--logits_at_labels) over the full head.

    python benchmarks/loss_head_memory.py                     # LLaVA-1.5-7B's head: 4096 -> 32000
    python benchmarks/loss_head_memory.py --batch 1,4,16

At LLaVA-like shapes (576 image tokens, a prompt of 20-80 tokens, replies of 10-150 tokens in
1-3 turns, right-padded per batch; seeded), it measures the bytes autograd saves for the backward
pass of the head and the loss (torch.autograd.graph.saved_tensors_hooks; the head's weight not counted),
with transformers' own causal-LM loss, for the full head and for labelled_logits' positions, and
prints their ratio per per-device batch size. Target: <= 0.33.
"""
from __future__ import annotations

import argparse
import random

import torch

TARGET = 0.33


def saved_bytes(run, weights: torch.Tensor) -> int:
    """Bytes autograd saves while `run` builds its graph, the (frozen) weights not counted."""
    total = 0

    def pack(tensor):
        nonlocal total
        if tensor.untyped_storage().data_ptr() != weights.untyped_storage().data_ptr():
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run().backward()
    return total


def llava_like_batch(rng: random.Random, batch: int, images: int = 576) -> torch.Tensor:
    """Labels of `batch` samples: image tokens, then turns of prompt (ignored) and reply (labelled)."""
    rows = []
    for _ in range(batch):
        labels = [-100] * (1 + images)
        for _ in range(rng.randint(1, 3)):
            labels += [-100] * rng.randint(20, 80) + [1] * rng.randint(10, 150)
        rows.append(labels)
    width = max(len(row) for row in rows)
    return torch.tensor([row + [-100] * (width - len(row)) for row in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", default="1,4", help="per-device batch sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers.loss.loss_utils import ForCausalLMLoss

    from llava_moslora.train.trainer import labelled_positions

    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    head.weight.requires_grad_(False)  # frozen, as in adapter training; its input still needs a gradient
    rng = random.Random(args.seed)
    worst = 0.0
    for batch in (int(b) for b in args.batch.split(",")):
        labels = llava_like_batch(rng, batch)
        labels = torch.where(labels == 1, torch.randint(0, args.vocab, labels.shape), labels)
        hidden = torch.randn(*labels.shape, args.hidden, requires_grad=True)
        rows, positions, shifted = labelled_positions(labels)

        def full():
            return ForCausalLMLoss(head(hidden), labels, args.vocab)

        def partial():  # what HeadAtLabels hands the head, and the labels it gives the loss
            return ForCausalLMLoss(head(hidden[rows, positions][None]), labels, args.vocab, shift_labels=shifted)

        with torch.no_grad():
            assert torch.allclose(full(), partial(), rtol=1e-5)
        whole, part = saved_bytes(full, head.weight), saved_bytes(partial, head.weight)
        ratio = part / whole
        worst = max(worst, ratio)
        print(f"batch {batch}: {labels.numel()} positions, {len(rows)} kept; saved for backward "
              f"{whole / 2**20:.0f} MiB full head, {part / 2**20:.0f} MiB at labels: ratio {ratio:.3f}")
    print(f"worst ratio {worst:.3f} (target <= {TARGET})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
