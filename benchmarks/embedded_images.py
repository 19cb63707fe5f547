"""Memory of a dataset whose images are stored in it: a parquet file in the messages + images
form, every image a distinct PNG in the file (as the_cauldron and LLaVA-OneVision-Data ship).

    python benchmarks/embedded_images.py                   # 100K samples, about 1 GB of images
    python benchmarks/embedded_images.py --records 10000   # a quick run

Writes the parquet in row groups (never all of it in memory): each sample has one image (a
tenth have two), a distinct 64 x 48 noise PNG of about 9 KB, and a short conversation. Then a
fresh process plays rank 0 of 8, as training does: it builds the LlavaDataset (records read
through `datasets`, memory-mapped; images left in the table as references), screens its shard
(every image's header read), and draws --draws random samples through __getitem__ (images
decoded and preprocessed by the shipped tiny vision tower's processor). It reports the resident
memory (RSS and its anonymous, i.e. private, part) above the baseline taken after imports, at
each stage, beside the bytes of images the file holds. Holding the images would cost their
bytes in anonymous memory; reading them lazily costs the page cache, which is shared and
given back under pressure. Target: anonymous memory after the draws <= 10% of the images' bytes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data_scale import rss_mb  # benchmarks/ is on the path when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
BASES = ROOT / "bases" / "shapes-tiny"
ROWS_PER_GROUP = 2000
TARGET_ANON_SHARE = 0.10


def generate(path: Path, records: int, seed: int) -> int:
    """Write the parquet (reused when there); returns the bytes of the images it holds."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    if path.exists():
        return int(pq.ParquetFile(path).schema_arrow.metadata[b"image_bytes"])
    rng = np.random.default_rng(seed)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    part_type = pa.struct([("type", pa.string()), ("text", pa.string())])
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(pa.struct([("role", pa.string()),
                                                                             ("content", pa.list_(part_type))]))),
                        ("images", pa.list_(image_type))])

    def png() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    total, partial = 0, path.with_suffix(".partial")
    with pq.ParquetWriter(partial, schema) as writer:
        for start in range(0, records, ROWS_PER_GROUP):
            rows = []
            for index in range(start, min(records, start + ROWS_PER_GROUP)):
                count = 2 if index % 10 == 0 else 1
                images = [{"bytes": png(), "path": None} for _ in range(count)]
                total += sum(len(image["bytes"]) for image in images)
                question = [{"type": "image", "text": None}] * count + [
                    {"type": "text", "text": "Which image has more red?" if count == 2 else "Describe the image."}]
                rows.append({"id": f"s{index}", "images": images, "messages": [
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": [{"type": "text", "text": "Noise, in every colour."}]}]})
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        writer.add_key_value_metadata({"image_bytes": str(total)})
    partial.rename(path)
    return total


def child(args) -> None:
    """Rank 0 of 8: load, screen the shard, draw samples; print one JSON line."""
    import random

    from transformers import AutoImageProcessor, AutoTokenizer

    from llava_moslora.data import LlavaDataset
    from llava_moslora.train.screen import check_shard

    import datasets  # noqa: F401 - imported before the baseline, as training has it imported
    import pyarrow.parquet  # noqa: F401

    tokenizer = AutoTokenizer.from_pretrained(BASES / "llm")
    tokenizer.add_tokens(["<image>"], special_tokens=True)  # as build_llava adds it
    processor = AutoImageProcessor.from_pretrained(BASES / "vision")
    base, base_anon = rss_mb()
    start = time.perf_counter()
    dataset = LlavaDataset(args.data, tokenizer, processor, "vicuna_v1", num_image_tokens=64, collect_rejected=True)
    loaded = time.perf_counter()
    load = rss_mb()
    findings = check_shard(dataset, 0, 8, progress=False)
    screened = time.perf_counter()
    screen = rss_mb()
    rng = random.Random(0)
    images = 0
    for index in rng.sample(range(len(dataset)), args.draws):
        images += dataset[index]["pixel_values"].shape[0]
    drawn = time.perf_counter()
    draws = rss_mb()
    print(json.dumps(dict(samples=len(dataset), findings=len(findings), load_s=loaded - start, screen_s=screened - loaded,
                          draws_s=drawn - screened, images_drawn=images, base_mb=base,
                          **{f"{stage}_{kind}_mb": value - offset for stage, (rss, anon) in
                             (("load", load), ("screen", screen), ("draws", draws))
                             for kind, value, offset in (("rss", rss, base), ("anon", anon, base_anon))})))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--records", type=int, default=100_000, help="samples in the parquet (default 100000)")
    parser.add_argument("--draws", type=int, default=5000, help="random samples drawn after the screen (default 5000)")
    parser.add_argument("--work-dir", help="where the parquet goes (default: a temporary directory, removed after)")
    parser.add_argument("--seed", type=int, default=0)
    for hidden in ("--child", "--data"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    with tempfile.TemporaryDirectory(prefix="embedded-") as scratch:
        work = Path(args.work_dir or scratch)
        work.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        data = work / f"embedded-{args.records}-{args.seed}.parquet"
        image_bytes = generate(data, args.records, args.seed)
        print(f"data: {data} ({data.stat().st_size / 1e6:.0f} MB, {args.records} samples, "
              f"{image_bytes / 1e6:.0f} MB of images; ready in {time.perf_counter() - began:.0f} s)", flush=True)
        env = {**os.environ, "HF_DATASETS_CACHE": str(work / "datasets-cache")}  # the Arrow copy lives with the data
        runs = []
        for label in ("cold: parquet converted to the Arrow cache", "warm: the Arrow cache memory-mapped"):
            result = subprocess.run([sys.executable, __file__, "--child", "1", "--data", str(data),
                                     "--draws", str(args.draws)], capture_output=True, text=True, env=env)
            if result.returncode:
                print(result.stdout, result.stderr, file=sys.stderr)
                return 1
            runs.append((label, json.loads(result.stdout.strip().splitlines()[-1])))
    images_mb = image_bytes / 2**20
    anon = 0.0
    for label, r in runs:
        print(f"\nrank 0 of 8, {label}: {r['samples']} samples, {images_mb:.0f} MiB of images in the file "
              f"(baseline after imports {r['base_mb']:.0f} MB)\n")
        print("| stage | seconds | RSS above baseline MB | anonymous MB |\n|---|---|---|---|")
        for stage, key in (("load (records, images as references)", "load"), ("screen one shard (headers)", "screen"),
                           (f"draw {args.draws} samples ({r['images_drawn']} images)", "draws")):
            print(f"| {stage} | {r[f'{key}_s']:.1f} | {r[f'{key}_rss_mb']:.0f} | {r[f'{key}_anon_mb']:.0f} |")
        anon = max(r["load_anon_mb"], r["screen_anon_mb"], r["draws_anon_mb"])
    print(f"\nwarm: anonymous memory at most {anon:.0f} MB = {anon / images_mb:.3f} x the images' bytes "
          f"(target <= {TARGET_ANON_SHARE:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
