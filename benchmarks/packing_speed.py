"""--packing against padding on a length mix shaped like LLaVA-1.5's 665K instructions.

    python benchmarks/packing_speed.py                    # token ratios + 3 timed runs (2 CPU cores: ~10 min)
    python benchmarks/packing_speed.py --runs 0           # the token ratios alone (seconds)
    python benchmarks/packing_speed.py --json out.json

The lengths are measured, not assumed: benchmarks/data_scale.py's synthetic mix (1-10 turns,
~10% text-only, shaped like llava_v1_5_mix665k.json) tokenized by its 32K Llama-style BPE under
the vicuna_v1 template, 576 image tokens per image (CLIP ViT-L/14-336), cut at 2,048 tokens.

Token ratios (positions processed / real tokens, every batch of one epoch; per-device batch 16):
padded in random order; padded with group_by_modality_length at 8 ranks (LLaVA-1.5's launch,
where each rank's batch comes from a length-sorted mega-batch of 128); packed into rows of at
most 2,048 tokens (sdpa / eager, which compute each row's whole attention square); and one row
per batch (the varlen flash_attention_2 kernel, whose cost is per sample).

Tokens per second: training steps (forward, backward, AdamW) of a small LLaVA on this machine
(a 576-token vision tower; a 2-layer, 512-wide language model with MoSLoRA r=16 and logits only
at labels, as training runs), sdpa, fp32: the same batches padded and packed, taking turns batch
by batch, for batches drawn in random order and in the grouped order. A ratio is packed's real
tokens per second over padded's on the same batches. Each run times the same batches again; the
spread is over runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import data_scale  # noqa: E402  (the synthetic mix and its tokenizer)

from llava_moslora.data import LlavaCollator, encode_conversation, get_template, load_samples  # noqa: E402
from llava_moslora.data.collator import pack_rows  # noqa: E402
from llava_moslora.data.sampler import modality_grouped_indices  # noqa: E402

IMAGE_TOKENS, MAX_LENGTH = 576, 2048
TARGET_PROCESSED, TARGET_SPEEDUP = 1.05, 1.3


def measured_samples(records: int, seed: int, work: Path) -> list[dict]:
    """The mix's samples as token ids and labels (the 32K tokenizer's ids), with their modality."""
    from transformers import AutoTokenizer

    data, _ = data_scale.generate(work, records, seed)
    tokenizer = AutoTokenizer.from_pretrained(data_scale.tokenizer_dir(work, seed))
    template = get_template("vicuna_v1")
    found = []
    for sample in load_samples(data):
        encoded = encode_conversation(template, tokenizer, sample.turns, max_length=MAX_LENGTH,
                                      num_image_tokens=IMAGE_TOKENS, num_images=len(sample.images))
        found.append({"id": sample.id, "input_ids": encoded.input_ids, "labels": encoded.labels,
                      "image": bool(sample.images), "modality_length": sample.modality_length or 1})
    return found


def batches(samples: list[dict], order: str, batch: int, ranks: int, seed: int) -> list[list[int]]:
    """Every full batch of one epoch (each rank's batch in turn), in random or LLaVA's grouped order."""
    generator = torch.Generator().manual_seed(seed)
    if order == "random":
        indices = torch.randperm(len(samples), generator=generator).tolist()
    else:
        indices = modality_grouped_indices([s["modality_length"] for s in samples], batch, ranks, generator)
    return [indices[i:i + batch] for i in range(0, len(indices) - batch + 1, batch)]


def processed(lengths: list[int], layout: str) -> int:
    """Positions a batch of these lengths runs: padded, packed rows <= MAX_LENGTH, or one row."""
    if layout == "padded":
        return len(lengths) * max(lengths)
    rows = pack_rows(lengths, MAX_LENGTH if layout == "packed" else None)
    return len(rows) * max(sum(lengths[i] for i in row) for row in rows)


def token_ratios(samples: list[dict], batch: int, ranks: int, seed: int) -> dict:
    ratios = {}
    for order in ("random", "grouped"):
        chosen = batches(samples, order, batch, ranks, seed)
        real = sum(len(samples[i]["input_ids"]) for b in chosen for i in b)
        for layout in ("padded", "packed", "one_row"):
            total = sum(processed([len(samples[i]["input_ids"]) for i in b], layout) for b in chosen)
            ratios[f"{layout}/{order}"] = round(total / real, 4)
    return ratios


def small_llava(vocab: int, hidden: int = 512, layers: int = 2, attention: str = "sdpa", device="cpu",
                dtype=torch.float32):
    """A small LLaVA whose language model (not its head, as at 7B) holds most of the compute."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from llava_moslora.adapters import AdapterConfig
    from llava_moslora.model import Recipe, apply_tuning

    text = LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                       num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=vocab,
                       max_position_embeddings=MAX_LENGTH)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                              image_size=336, patch_size=14)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=vocab - 1,
                         image_seq_length=IMAGE_TOKENS, vision_feature_layer=-2)
    config.use_cache = config.text_config.use_cache = False
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, attn_implementation=attention, dtype=dtype)
    apply_tuning(model, Recipe(vision_tower="random", language_model="random", stage=2,
                               tune_language_model="adapter", tune_mm_projector="full",
                               llm_adapter=AdapterConfig(kind="moslora", r=16, alpha=32).to_dict()))
    return model.to(device).train()


def features(samples: list[dict], indices: list[int], vocab: int, image_token: int) -> list[dict]:
    """Dataset items for the small model: ids folded into its vocabulary, random pixels."""
    generator = torch.Generator().manual_seed(indices[0])
    items = []
    for index in indices:
        sample = samples[index]
        ids = torch.tensor(sample["input_ids"])
        image = ids == image_token
        ids = ids % (vocab - 2) + 1
        ids[image] = vocab - 1
        labels = torch.tensor(sample["labels"])
        labels = torch.where(labels == -100, labels, ids)
        item = {"id": sample["id"], "input_ids": ids, "labels": labels}
        if sample["image"]:
            item["pixel_values"] = torch.randn(3, 336, 336, generator=generator)
        items.append(item)
    return items


def on(batch: dict, device, dtype) -> dict:
    """The model's inputs of a collated batch, on its device (pixels in its dtype)."""
    return {k: (v.to(device, dtype) if k == "pixel_values" else v.to(device)) for k, v in batch.items()
            if k not in ("sample_ids", "token_counts", "label_counts")}


def timed_step(model, optimizer, head, batch: dict) -> float:
    cuda = batch["input_ids"].is_cuda
    if cuda:
        torch.cuda.synchronize()
    begin = time.perf_counter()
    with head.at(batch["labels"]) as labelled:
        model(**batch, **labelled).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - begin


def throughput(samples: list[dict], image_token: int, *, runs: int, steps: int, batch: int = 16, ranks: int = 8,
               seed: int = 0, hidden: int = 512, layers: int = 2, attention: str = "sdpa", device="cpu",
               dtype=torch.float32, log=print) -> list[dict]:
    """Real tokens per second, padded against packed on the same batches (and padded in the
    grouped order), `runs` times over the same `steps` batches per layout, taking turns."""
    from llava_moslora.data.collator import packed_row_length
    from llava_moslora.train.trainer import HeadAtLabels

    vocab = 4096
    model = small_llava(vocab, hidden, layers, attention, device, dtype)
    head = HeadAtLabels(model.lm_head)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    padded = LlavaCollator(0, with_ids=True)
    packed = LlavaCollator(0, with_ids=True, packing=True, max_length=packed_row_length(attention, MAX_LENGTH))
    spaced = lambda chosen: [chosen[i * len(chosen) // steps] for i in range(steps)]  # noqa: E731
    random_order = spaced(batches(samples, "random", batch, ranks, seed))
    grouped = spaced(batches(samples, "grouped", batch, ranks, seed))
    plan = [(name, collator, chosen) for k in range(steps)  # taking turns, batch by batch
            for name, collator, chosen in (("padded", padded, random_order[k]), ("packed", packed, random_order[k]),
                                           ("padded_grouped", padded, grouped[k]),
                                           ("packed_grouped", packed, grouped[k]))]
    collated = [(name, collator(features(samples, b, vocab, image_token))) for name, collator, b in plan]
    timed_step(model, optimizer, head, on(collated[1][1], device, dtype))  # warm-up
    found = []
    for run in range(runs):
        seconds, tokens, positions = {}, {}, {}
        for name, collated_batch in collated:
            seconds[name] = seconds.get(name, 0.0) + timed_step(model, optimizer, head, on(collated_batch, device, dtype))
            tokens[name] = tokens.get(name, 0) + collated_batch["token_counts"][0]
            positions[name] = positions.get(name, 0) + collated_batch["token_counts"][1]
        speed = {name: tokens[name] / seconds[name] for name in seconds}
        found.append({"tokens_per_second": {k: round(v, 1) for k, v in speed.items()},
                      "processed_per_real_token": {k: round(positions[k] / tokens[k], 4) for k in tokens},
                      "packed_over_padded": round(speed["packed"] / speed["padded"], 3),
                      "packed_over_padded_grouped": round(speed["packed_grouped"] / speed["padded_grouped"], 3)})
        log(f"run {run + 1}/{runs}: " + json.dumps(found[-1]))
    return found


def load_mix(records: int, seed: int, work_dir: Path | None) -> tuple[list[dict], int]:
    """The measured samples and the tokenizer's image token id."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        work = work_dir or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        samples = measured_samples(records, seed, work)
        tokenizer = AutoTokenizer.from_pretrained(data_scale.tokenizer_dir(work, seed))
        return samples, tokenizer.convert_tokens_to_ids("<image>")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--records", type=int, default=4000, help="samples in the synthetic mix [4000]")
    parser.add_argument("--batch", type=int, default=16, help="per-device batch [16, LLaVA-1.5's]")
    parser.add_argument("--ranks", type=int, default=8, help="ranks for the grouped order [8]")
    parser.add_argument("--steps", type=int, default=4, help="timed batches per order and run [4]")
    parser.add_argument("--runs", type=int, default=3, help="timed runs, for the spread (0: token ratios only) [3]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, help="keeps the synthetic data and tokenizer between runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    samples, image_token = load_mix(args.records, args.seed, args.work_dir)
    lengths = [len(s["input_ids"]) for s in samples]
    deciles = statistics.quantiles(lengths, n=10)
    print(f"{len(samples)} samples, {sum(s['image'] for s in samples)} with an image; tokens: mean "
          f"{statistics.mean(lengths):.0f}, deciles {[round(d) for d in deciles]}, max {max(lengths)}")
    ratios = token_ratios(samples, args.batch, args.ranks, args.seed)
    print("processed positions per real token (per-device batch "
          f"{args.batch}; grouped: group_by_modality_length at {args.ranks} ranks):")
    for order in ("random", "grouped"):
        print(f"  {order:8s} padded {ratios[f'padded/{order}']:.3f}   packed rows <= {MAX_LENGTH} "
              f"{ratios[f'packed/{order}']:.3f}   one row (flash varlen) {ratios[f'one_row/{order}']:.3f}")
    result = {"samples": len(samples), "length_mean": statistics.mean(lengths), "length_deciles": deciles,
              "processed_per_real_token": ratios, "targets": {"processed_per_real_token": TARGET_PROCESSED,
                                                             "tokens_per_second_ratio": TARGET_SPEEDUP}}
    if args.runs:
        runs = throughput(samples, image_token, runs=args.runs, steps=args.steps, batch=args.batch, ranks=args.ranks,
                          seed=args.seed)
        result["runs"] = runs
        for key in ("packed_over_padded", "packed_over_padded_grouped"):
            values = [run[key] for run in runs]
            result[key] = {"mean": round(statistics.mean(values), 3), "min": min(values), "max": max(values)}
            print(f"tokens/s {key.replace('_', ' ')} (the same batches): {result[key]['mean']:.2f} "
                  f"(runs {', '.join(f'{v:.2f}' for v in values)}; target >= {TARGET_SPEEDUP})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
