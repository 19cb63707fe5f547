"""The quickstart's closing lines: two answers about a held-out ShapesVQA image.

Usage: python -m llava_moslora.evaluation.quick --model CKPT --image PNG
(The chat command of a later issue replaces this.)
"""
from __future__ import annotations

import argparse
import sys

from PIL import Image

from ..model import load_checkpoint
from .answer import Answerer

QUESTIONS = ("How many shapes are in the image?", "Describe the image.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="stage checkpoint or merged directory")
    parser.add_argument("--image", required=True, help="image to ask about")
    args = parser.parse_args(argv)
    answer = Answerer(load_checkpoint(args.model))
    image = Image.open(args.image).convert("RGB")
    print(f"\nSample answers about {args.image}:")
    for question in QUESTIONS:
        print(f"  Q: {question}\n  A: {answer(question, image, max_new_tokens=48)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
