"""Start-up cost of the data path at LLaVA-1.5 scale: load the records, screen one rank's shard.

    python benchmarks/data_scale.py                        # 665K records (llava_v1_5_mix665k's size)
    python benchmarks/data_scale.py --records 20000        # a quick run
    python benchmarks/data_scale.py --ranks 8 --work-dir /tmp/ds   # keep the synthetic data between runs

Writes a synthetic LLaVA-format JSON list shaped like llava_v1_5_mix665k.json (1-10 turns, most
records short; human turns 10-40 words, gpt turns 20-150; ~10% text-only; 8 small PNGs under
an image folder, referenced many times) and a fast BPE tokenizer with a 32K vocabulary in
Llama's style. Then, for each simulated world size W, a fresh process plays rank 0 of W: it
builds the real LlavaDataset (collect_rejected, as training does), then runs the screen's
per-rank check of its shard (screen.check_shard) plus the whole-dataset part every rank does
(rejected records, duplicate ids). The first run starts with an empty record cache (a big file
is converted to a memory-mapped Arrow file once, data/record_cache.py): "cold"; then each W
runs warm, as every later start does. It reports the time to load, the time to screen, and the
resident memory (RSS, and its anonymous, i.e. private, part) above the process's baseline taken
after imports and the tokenizer, before loading. Targets: start-up (load + screen) of one rank
of 8 <= 60 s; memory for the records <= 1.5 GB above the baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_STARTUP_S, TARGET_MEMORY_MB = 60.0, 1536.0
IMAGES = [f"{folder}/{i:012d}.png" for folder in ("coco/train2017", "gqa/images", "ocr_vqa/images", "vg/VG_100K")
          for i in range(2)]
TURN_WEIGHTS = [45, 18, 10, 7, 5, 4, 3, 3, 3, 2]  # 1..10 turns, mean 2.8: near mix665k's bytes per record


def rss_mb() -> tuple[float, float]:
    """(RSS, its anonymous part) of this process, in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields.get("RssAnon", "0 kB").split()[0]) / 1024


def word_pool(rng: random.Random, size: int) -> list[str]:
    syllables = [a + b for a in "bcdfghklmnprstvwz" for b in ("a", "e", "i", "o", "u", "an", "er", "in", "on")]
    vocab = sorted({"".join(rng.choices(syllables, k=rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))) for _ in range(40000)})
    rng.shuffle(vocab)
    weights = [1.0 / (rank + 10) for rank in range(len(vocab))]  # Zipf-like
    return rng.choices(vocab, weights=weights, k=size)


def generate(work: Path, records: int, seed: int) -> tuple[Path, Path]:
    """The synthetic data file and image folder (reused when already written)."""
    path, images = work / f"mix-{records}-{seed}.json", work / "images"
    if not images.exists():
        from PIL import Image
        for i, name in enumerate(IMAGES):
            (images / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (64, 48), (30 * i, 255 - 30 * i, 120)).save(images / name)
    if path.exists():
        return path, images
    rng = random.Random(seed)
    pool = word_pool(rng, min(1 << 22, 400 * records))  # the full 4M-word pool from 10,486 records up

    def text(low: int, high: int, skew: float = 1.0) -> str:
        n = low + int((high - low) * rng.random() ** skew)
        start = rng.randrange(len(pool) - n)
        return " ".join(pool[start:start + n]).capitalize() + rng.choice([".", "?", ".", "!"])

    temporary = path.with_suffix(".partial")
    with open(temporary, "w", encoding="utf-8") as out:
        out.write("[")
        for index in range(records):
            turns = rng.choices(range(1, 11), weights=TURN_WEIGHTS)[0]
            conversations = []
            for _ in range(turns):
                conversations += [{"from": "human", "value": text(10, 40)}, {"from": "gpt", "value": text(20, 150, 2.5)}]
            record = {"id": f"{index:012d}"}
            if rng.random() >= 0.1:
                record["image"] = rng.choice(IMAGES)
                first = conversations[0]["value"]
                conversations[0]["value"] = f"<image>\n{first}" if rng.random() < 0.7 else f"{first}\n<image>"
            record["conversations"] = conversations
            out.write(("," if index else "") + json.dumps(record))
        out.write("]")
    temporary.rename(path)
    return path, images


def tokenizer_dir(work: Path, seed: int) -> Path:
    """A Llama-style fast tokenizer (32K BPE on the data's words, <image> added as build_llava adds it)."""
    out = work / f"tokenizer-32k-{seed}"
    if not (out / "tokenizer.json").exists():
        from tokenizers import AddedToken

        from llava_moslora.demo.tiny import train_tokenizer
        pool = word_pool(random.Random(seed), 1 << 21)  # the same words, in the same frequencies
        tokenizer = train_tokenizer([" ".join(pool[i:i + 100]) + "." for i in range(0, len(pool), 100)],
                                    style="llama", vocab_size=32000)
        tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
        tokenizer.save_pretrained(out)
    return out


def child(args) -> None:
    """Rank 0 of args.child ranks: load, screen the shard; print one JSON line."""
    from transformers import AutoTokenizer

    from llava_moslora.data import LlavaDataset
    from llava_moslora.data.validate import all_findings
    from llava_moslora.train.screen import check_shard, screen_dataset

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    world = args.child
    base, base_anon = rss_mb()
    start = time.perf_counter()
    dataset = LlavaDataset(args.data, tokenizer, None, "vicuna_v1", num_image_tokens=576, image_folder=args.images,
                           model_max_length=args.max_length, collect_rejected=True)
    loaded = time.perf_counter()
    load_rss, load_anon = rss_mb()
    if world == 1:
        findings = screen_dataset(dataset, skip=False, rank=0, world_size=1, output_dir=args.work)
    else:
        findings = all_findings(dataset.rejected, dataset.samples, check_shard(dataset, 0, world, progress=False))
    screened = time.perf_counter()
    screen_rss, screen_anon = rss_mb()
    print(json.dumps(dict(world=world, samples=len(dataset), findings=len(findings), load_s=loaded - start,
                          screen_s=screened - loaded, load_mb=load_rss - base, load_anon_mb=load_anon - base_anon,
                          screen_mb=screen_rss - base, screen_anon_mb=screen_anon - base_anon, base_mb=base)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--records", type=int, default=665_000, help="records in the synthetic file (default 665000)")
    parser.add_argument("--ranks", default="1,2,8", help="simulated world sizes, comma-separated (default 1,2,8)")
    parser.add_argument("--work-dir", help="where the synthetic data goes (default: a temporary directory, removed after)")
    parser.add_argument("--max-length", type=int, default=2048, help="model_max_length (default 2048)")
    parser.add_argument("--seed", type=int, default=0)
    for hidden in ("--child", "--data", "--images", "--tokenizer", "--work"):
        parser.add_argument(hidden, type=int if hidden == "--child" else str, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="data-scale-") as scratch:
        work = Path(args.work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        data, images = generate(work, args.records, args.seed)
        tokenizer = tokenizer_dir(work, args.seed)
        print(f"data: {data} ({data.stat().st_size / 1e6:.0f} MB, {args.records} records; "
              f"ready in {time.perf_counter() - began:.0f} s); cpus: {os.cpu_count()}", flush=True)
        cache = work / "cache"  # the record cache (big files): emptied, so the first run converts
        shutil.rmtree(cache, ignore_errors=True)
        rows = []
        worlds = [int(w) for w in args.ranks.split(",")]
        for position, world in enumerate([worlds[0]] + worlds):
            command = [sys.executable, __file__, "--child", str(world), "--data", str(data), "--images", str(images),
                       "--tokenizer", str(tokenizer), "--work", str(work), "--max-length", str(args.max_length)]
            result = subprocess.run(command, capture_output=True, text=True,
                                    env={**os.environ, "LLAVA_MOSLORA_CACHE": str(cache)})
            if result.returncode:
                print(result.stdout, result.stderr, file=sys.stderr)
                return 1
            rows.append({**json.loads(result.stdout.strip().splitlines()[-1]), "cold": position == 0})
            print(f"  W={world}{' (cold: empty cache)' if position == 0 else ''}: {rows[-1]}", flush=True)
    print("\n| W | samples on rank 0 | load s | screen s | start-up s | RSS above baseline MB (load / screen) "
          "| anonymous MB (load / screen) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['world']}{' cold' if r['cold'] else ''} | {-(-r['samples'] // r['world'])} | {r['load_s']:.1f} | {r['screen_s']:.1f} | "
              f"{r['load_s'] + r['screen_s']:.1f} | {r['load_mb']:.0f} / {r['screen_mb']:.0f} | "
              f"{r['load_anon_mb']:.0f} / {r['screen_anon_mb']:.0f} |")
    for r in rows:
        startup, memory = r["load_s"] + r["screen_s"], max(r["screen_mb"], r["load_mb"])
        print(f"W={r['world']}{' cold' if r['cold'] else ''}: start-up {startup:.1f} s = {startup / TARGET_STARTUP_S:.2f} x the 60 s target"
              f"{'' if r['world'] == 8 else ' (set for W=8)'}; memory {memory:.0f} MB = "
              f"{memory / TARGET_MEMORY_MB:.2f} x the 1.5 GB target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
