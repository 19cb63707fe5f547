"""Offline scoring of VLMEvalKit-format TSVs (multiple choice and yes/no) without vlmeval.

MCQ prompts follow LLaVA's VLMEvalKit prompt: hint and question, one "X. option" line per
option, then "Answer with the option's letter from the given choices directly."
Results use VLMEvalKit's layout: `{model}_{dataset}_acc.csv` with split, Overall, then each
l2-category and category, as fractions in 0-1.
"""
from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..data.prompts import LETTERS, mcq_prompt as format_mcq, short_prompt



def decode_image(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def mcq_prompt(row) -> str:
    options = [row[letter] for letter in LETTERS if letter in row and not pd.isna(row[letter])]
    return format_mcq(str(row["question"]), [str(o) for o in options],
                      None if pd.isna(row.get("hint")) else str(row["hint"]))


def parse_choice(prediction: str, row) -> Optional[str]:
    """The option letter a free-form prediction picks, or None."""
    text = prediction.strip()
    match = re.match(r"^\(?([A-D])[\).:\s]|^([A-D])$", text)
    if match:
        return match.group(1) or match.group(2)
    for letter in LETTERS:  # the option text itself
        if letter in row and not pd.isna(row[letter]) and str(row[letter]).strip().lower() in text.lower():
            return letter
    return None


def parse_yes_no(prediction: str) -> Optional[str]:
    words = re.findall(r"[a-z]+", prediction.lower())
    if words and words[0] in ("yes", "no"):
        return words[0].capitalize()
    return "Yes" if "yes" in words else "No" if "no" in words else None


def score_mcq(tsv: Path, answer: Callable[[str, Image.Image], str], progress: bool = True) -> pd.DataFrame:
    table = pd.read_csv(tsv, sep="\t")
    predictions = []
    for _, row in tqdm(table.iterrows(), total=len(table), desc=tsv.stem, disable=not progress):
        predictions.append(answer(mcq_prompt(row), decode_image(row["image"])))
    table = table.drop(columns=["image"]).assign(prediction=predictions)
    table["hit"] = [parse_choice(p, r) == r["answer"] for p, (_, r) in zip(predictions, table.iterrows())]
    return table


def score_yes_no(tsv: Path, answer: Callable[[str, Image.Image], str], progress: bool = True) -> pd.DataFrame:
    table = pd.read_csv(tsv, sep="\t")
    predictions = []
    for _, row in tqdm(table.iterrows(), total=len(table), desc=tsv.stem, disable=not progress):
        predictions.append(answer(short_prompt(row["question"]),
                                  decode_image(row["image"])))
    table = table.drop(columns=["image"]).assign(prediction=predictions)
    table["hit"] = [parse_yes_no(p) == a for p, a in zip(predictions, table["answer"])]
    return table


def accuracy_table(scored: pd.DataFrame) -> pd.DataFrame:
    """VLMEvalKit's _acc.csv layout: split, Overall, l2-categories, categories (0-1)."""
    row = {"split": scored["split"].iloc[0] if "split" in scored else "none", "Overall": scored["hit"].mean()}
    for column in ("l2-category", "category"):
        if column in scored:
            for name, group in scored.groupby(column, sort=True):
                row[name] = group["hit"].mean()
    return pd.DataFrame([row])
