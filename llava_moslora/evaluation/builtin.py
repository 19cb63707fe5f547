"""The builtin backend: VLMEvalKit-format local TSVs (multiple choice, yes/no) scored without vlmeval.

It drives the same model class as the vlmeval backend (build_prompt, then generate) and writes
VLMEvalKit's files with its exact-matching rules, so both backends give the same scores:
  {model}_{dataset}.xlsx      the rows without images, plus `prediction`
  {model}_{dataset}_acc.csv   MCQ: one row per split; split, Overall, l2-categories, categories (0-1)
  {model}_{dataset}_score.csv yes/no: one row; Overall, categories, l2-categories (0-100)
"""
from __future__ import annotations

import base64
import csv
import io
import re
from pathlib import Path
from typing import Optional

import pandas as pd
from PIL import Image
from tqdm import tqdm

from .vlm import LOCAL_TYPES, options_of

# VLMEvalKit's exact matching reads an option letter only among the last few words of an answer.
LETTER_WINDOW = 5
ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def decode_image(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def parse_choice(prediction: str, row) -> Optional[str]:
    """The option letter an answer picks, by VLMEvalKit's exact-matching rules, or None."""
    choices = options_of(row)
    words = re.sub(r"[.()\[\],:;!*#{}]", " ", prediction).split()
    named = [letter for letter in choices if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - LETTER_WINDOW:
        return named[0]
    match = ANSWER_IS.search(prediction)
    if match and match.group(1).upper() in choices:
        return match.group(1).upper()
    text = prediction.lower()
    if len(text) > 2 * sum(len(option) for option in choices.values()):
        return None
    mentioned = [letter for letter, option in choices.items() if option.lower() in text]
    return mentioned[0] if len(mentioned) == 1 else None


def parse_yes_no(prediction: str) -> Optional[str]:
    """"Yes" or "No" when the answer's words hold exactly one of them (VLMEvalKit's rule), else None."""
    words = re.findall(r"[a-z]+", prediction.lower())
    has_yes, has_no = "yes" in words, "no" in words
    return "Yes" if has_yes and not has_no else "No" if has_no and not has_yes else None


def benchmark_kind(table: pd.DataFrame) -> str:
    """"MCQ" for option columns A and B, "Y/N" for Yes/No answers; anything else is not scorable here."""
    if {"A", "B"} <= set(table.columns):
        return "MCQ"
    if "answer" in table and set(table["answer"].astype(str)) <= {"Yes", "No"}:
        return "Y/N"
    raise ValueError("the builtin backend scores multiple-choice (A, B columns) and yes/no (Yes/No answers) "
                     f"TSVs; this one has columns {list(table.columns)}")


def accuracy_table(scored: pd.DataFrame) -> pd.DataFrame:
    """VLMEvalKit's MCQ _acc.csv: a row per split; split, Overall, l2-categories, categories (0-1)."""
    scored = scored.assign(split=scored["split"] if "split" in scored else "none")
    rows = []
    for split, part in scored.groupby("split", sort=True):
        row = {"split": split, "Overall": part["hit"].mean()}
        for column in ("l2-category", "category"):
            if column in scored:
                for name in sorted(scored[column].dropna().unique()):
                    hits = part.loc[part[column] == name, "hit"]
                    row[name] = hits.mean() if len(hits) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def score_table(scored: pd.DataFrame) -> pd.DataFrame:
    """VLMEvalKit's default yes/no _score.csv: one row; Overall, categories, l2-categories (0-100)."""
    row = {"Overall": 100 * scored["hit"].mean()}
    for column in ("category", "l2-category"):
        if column in scored:
            for name, part in scored.groupby(column, sort=True):
                row[name] = 100 * part["hit"].mean()
    return pd.DataFrame([row])


def evaluate_tsv(model, tsv: Path, work_dir: Path, model_name: str, progress: bool = True) -> dict[str, Path]:
    """Answer every row of a local benchmark with `model` (VLMEvalKit contract) and write the result files."""
    dataset = tsv.stem
    table = pd.read_csv(tsv, sep="\t")
    kind = LOCAL_TYPES[dataset] = benchmark_kind(table)
    image_dir = work_dir / "images" / dataset
    image_dir.mkdir(parents=True, exist_ok=True)

    images = dict(zip(table["index"], table["image"]))

    def dump_image(line) -> list[str]:
        path = image_dir / f"{line['index']}.png"
        if not path.is_file():
            data = str(line["image"])
            # As in VLMEvalKit, a short value is the index of the row that holds the image.
            data = str(images[type(line["index"])(data)]) if len(data) <= 64 else data
            decode_image(data).save(path)
        return [str(path)]

    model.set_dump_image(dump_image)
    predictions = []
    for _, line in tqdm(table.iterrows(), total=len(table), desc=dataset, unit="row", disable=not progress):
        predictions.append(str(model.generate(model.build_prompt(line, dataset), dataset)))
    scored = table.drop(columns=["image"]).assign(prediction=predictions)
    stem = work_dir / f"{model_name}_{dataset}"
    files = {"predictions": stem.with_suffix(".xlsx")}
    scored.to_excel(files["predictions"], index=False)
    if kind == "MCQ":
        scored["hit"] = [parse_choice(p, row) == row["answer"] for p, (_, row) in zip(predictions, scored.iterrows())]
        files["acc"] = Path(f"{stem}_acc.csv")
        accuracy_table(scored).to_csv(files["acc"], index=False, quoting=csv.QUOTE_ALL)
    else:
        scored["hit"] = [parse_yes_no(p) == a for p, a in zip(predictions, scored["answer"])]
        files["score"] = Path(f"{stem}_score.csv")
        score_table(scored).to_csv(files["score"], index=False, quoting=csv.QUOTE_ALL)
    return files
