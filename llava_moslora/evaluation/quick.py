"""The quickstart's evaluation: held-out ShapesVQA benchmarks through the builtin scorer, a
per-ability table, and two sample answers about a held-out image.

Usage: python -m llava_moslora.evaluation.quick --model CKPT --data SHAPESVQA_DIR --out DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from ..model import load_checkpoint
from .answer import Answerer
from .builtin import accuracy_table, score_mcq, score_yes_no


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="stage checkpoint or merged directory")
    parser.add_argument("--data", required=True, help="ShapesVQA directory (llava-moslora synth)")
    parser.add_argument("--out", required=True, help="where result files go")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows of each benchmark")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    answer = Answerer(load_checkpoint(args.model), max_new_tokens=8)
    label = Path(args.model).name

    mcq_file = data / "ShapesVQA_MCQ.tsv"
    if args.limit:
        import pandas as pd
        pd.read_csv(mcq_file, sep="\t").head(args.limit).to_csv(out / "mcq_subset.tsv", sep="\t", index=False)
        mcq_file = out / "mcq_subset.tsv"
    mcq = score_mcq(mcq_file, lambda q, image: answer(q, image))
    mcq.to_csv(out / f"{label}_ShapesVQA_MCQ.tsv", sep="\t", index=False)
    acc = accuracy_table(mcq)
    acc.to_csv(out / f"{label}_ShapesVQA_MCQ_acc.csv", index=False)
    yn = score_yes_no(data / "ShapesVQA_YN.tsv", lambda q, image: answer(q, image)) if not args.limit else None

    print("\nShapesVQA multiple choice (chance: 25%)")
    print(f"{'ability':<42}{'accuracy':>10}{'n':>6}")
    for name, group in [("Overall", mcq), *mcq.groupby("l2-category", sort=True)]:
        print(f"{name:<42}{100 * group['hit'].mean():>9.1f}%{len(group):>6}")
    if yn is not None:
        print(f"{'ShapesVQA yes/no (chance: 50%)':<42}{100 * yn['hit'].mean():>9.1f}%{len(yn):>6}")

    sample = data / "images" / "test_000000.png"
    image = Image.open(sample).convert("RGB")
    print(f"\nSample answers about {sample}:")
    for question in ("How many shapes are in the image?", "Describe the image."):
        print(f"  Q: {question}\n  A: {answer(question, image, max_new_tokens=48)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
