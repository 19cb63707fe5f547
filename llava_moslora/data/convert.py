"""`llava-moslora convert-data`: any data form this project reads, written as one self-contained
parquet file in the messages + images form, every image's bytes inside (a `datasets.Image` list
column), as LLaMA-Factory, ms-swift and Hugging Face datasets hold them.

Samples are read and checked as training reads them, and written a row group at a time, so at
most one group's images are in memory. A bad record or image stops the conversion naming it, or
with --skip_bad_samples is left out and counted. Images are copied as stored, never re-encoded.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from .images import ImageError, stored_bytes
from .records import DataError, Sample, is_file_image, load_samples
from .templates import IMAGE_TOKEN

ROWS_PER_GROUP = 1000


def features():
    import datasets

    text = {"type": datasets.Value("string"), "text": datasets.Value("string")}
    return datasets.Features({
        "id": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.List(text)}),
        "images": datasets.List(datasets.Image()),
    })


def _content(text: str) -> list[dict]:
    """A turn's text as parts, each `<image>` an image part where it stands."""
    parts = []
    for k, piece in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            parts.append({"type": "image", "text": None})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


def to_messages(sample: Sample, image_folder: Optional[Path]) -> dict:
    """One sample as a messages + images row with its images' bytes."""
    messages = [{"role": "system", "content": _content(sample.system)}] if sample.system is not None else []
    for question, reply in sample.turns:
        messages += [{"role": "user", "content": _content(question)}, {"role": "assistant", "content": _content(reply)}]
    images = []
    for image in sample.images:
        if is_file_image(image):
            if image_folder is None:
                raise DataError(f"sample {sample.id!r} has image file {image!r} but no --image_folder was given",
                                "missing_image", sample.id)
            path = image_folder / image
            if not path.is_file():
                raise DataError(f"sample {sample.id!r}: image file not found: {path}", "missing_image", sample.id)
            images.append({"bytes": path.read_bytes(), "path": Path(image).name})
        else:
            try:
                images.append({"bytes": stored_bytes(image), "path": None})
            except ImageError as error:
                raise DataError(f"sample {sample.id!r}: {error}", "unreadable_image", sample.id) from None
    return {"id": sample.id, "messages": messages, "images": images}


def convert(data_path: str, out: Path, image_folder: Optional[Path] = None, skip_bad_samples: bool = False) -> dict:
    """Write `data_path`'s samples to `out` (parquet), ROWS_PER_GROUP at a time; returns counts
    (written, and the messages of those left out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    rejected: list = []
    samples = load_samples(data_path, rejected if skip_bad_samples else None)
    left_out, written = [str(error) for error in rejected], 0
    schema = features().arrow_schema  # carries the datasets features: the images column reads as datasets.Image
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with pq.ParquetWriter(partial, schema) as writer:
            for start in tqdm(range(0, len(samples), ROWS_PER_GROUP), desc="converting", unit="group"):
                rows = []
                for sample in samples[start:start + ROWS_PER_GROUP]:
                    try:
                        rows.append(to_messages(sample, image_folder))
                    except DataError as error:
                        if not skip_bad_samples:
                            raise
                        left_out.append(str(error))
                if rows:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    written += len(rows)
        partial.replace(out)  # a file at --out is always whole
    finally:
        partial.unlink(missing_ok=True)
    return {"written": written, "left_out": left_out}


def add_arguments(parser, name: str = "convert-data") -> None:
    parser.add_argument("--data_path", required=True, help="data in any form training reads (LLaVA JSON/JSONL, "
                        "messages + images, parquet, Arrow, a datasets folder or id; several joined with commas)")
    parser.add_argument("--image_folder", default=None, help="folder the samples' image paths are relative to")
    parser.add_argument("--out", required=True, help="the parquet file to write (messages + images, images inside)")
    parser.add_argument("--skip_bad_samples", action="store_true",
                        help="leave out bad records and images (counted, the first few named) instead of stopping")


def run(args, name: str = "convert-data") -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".parquet":
        print(f"{name}: --out must name a .parquet file, got {out}", file=sys.stderr)
        return 2
    try:
        counts = convert(args.data_path, out, Path(args.image_folder) if args.image_folder else None,
                         args.skip_bad_samples)
    except DataError as error:
        print(f"{name}: {error} (--skip_bad_samples leaves bad samples out)", file=sys.stderr)
        return 1
    for message in counts["left_out"][:10]:
        print(f"left out: {message}", file=sys.stderr)
    print(f"{name}: wrote {counts['written']} samples to {out} ({out.stat().st_size / 1e6:.2f} MB)"
          + (f"; left out {len(counts['left_out'])} bad ones" if counts["left_out"] else ""))
    return 0
