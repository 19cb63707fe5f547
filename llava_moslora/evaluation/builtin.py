"""The builtin backend: VLMEvalKit-format local TSVs (multiple choice, yes/no, free-form) scored without vlmeval.

It drives the same model class as the vlmeval backend (build_prompt, then batched generation)
and writes VLMEvalKit's files with its exact-matching rules, so both backends give the same scores:
  {model}_{dataset}.xlsx      the rows without images, plus `prediction` (answered rows are reused)
  {model}_{dataset}.partial.jsonl  answers saved batch by batch while a run goes (removed at its end;
                              under torchrun one per rank, .partial.rank{r}.jsonl)
  {model}_{dataset}_acc.csv   MCQ: one row per split; split, Overall, l2-categories, categories (0-1)
  {model}_{dataset}_score.csv yes/no: one row; Overall, categories, l2-categories (0-100)
  {model}_{dataset}_acc.csv   free-form (VQA): one row, the same columns (0-100), by normalized exact
                              match (free_form_items: case, punctuation, articles and list order aside)
"""
from __future__ import annotations

import ast
import base64
import csv
import glob
import io
import json
import os
import re
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
from PIL import Image

from .batching import DEFAULT_BATCH_SIZE, answer_rows
from .benchmarks import read_rows, tsv_type, unscorable
from .ranks import on_every_rank, rank_and_world
from .vlm import options_of

# VLMEvalKit's exact matching reads an option letter only among the last few words of an answer.
LETTER_WINDOW = 5
# Its fallback for "The answer is X", exactly as it is (letters A-D only, any case, no word
# boundary: "the answer is blue" picks B): the builtin backend must score as VLMEvalKit does.
# Answers VLMEvalKit takes as declining to choose (its can_infer_option), like a lone "Z".
REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")
ANSWER_IS = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")


def decode_image(data: str) -> Image.Image:
    """A TSV row's base64 image, as every path reads images (data.images.read_image)."""
    from ..data.images import read_image

    return read_image(io.BytesIO(base64.b64decode(data)), "a benchmark image", verb="decode")


def parse_choice(prediction: str, row) -> Optional[str]:
    """The option letter an answer picks, by VLMEvalKit's exact-matching rules, or None."""
    choices = options_of(row)
    words = re.sub(r"[.()\[\],:;!*#{}]", " ", prediction).split()
    if any(refusal in prediction for refusal in REFUSALS):
        return None  # VLMEvalKit's "Z": no option chosen, whatever else the answer says
    named = [letter for letter in choices if letter in words]
    if len(named) == 1 and words.index(named[0]) > len(words) - LETTER_WINDOW:
        return named[0]
    if not named and "Z" in words:
        return None  # a lone "Z" is VLMEvalKit's "none of the options"
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


ARTICLES = {"a", "an", "the"}


def free_form_items(text: str) -> list[str]:
    """A free-form answer as exact matching compares it: lower case, punctuation and articles
    dropped, and an answer that lists items ("x, y and z") taken as its items in any order."""
    items = re.split(r",|\band\b", str(text).lower())
    words = (" ".join(w for w in re.findall(r"[a-z0-9]+", item) if w not in ARTICLES) for item in items)
    return sorted(item for item in words if item)


def free_form_hit(prediction: str, answer: str) -> bool:
    """Normalized exact match of a free-form answer (free_form_items on both sides)."""
    return free_form_items(prediction) == free_form_items(answer)


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
    """VLMEvalKit's default yes/no _score.csv, and its free-form _acc.csv (TextVQA's): one row;
    Overall, categories, l2-categories (0-100)."""
    row = {"Overall": 100 * scored["hit"].mean()}
    for column in ("category", "l2-category"):
        if column in scored:
            for name, part in scored.groupby(column, sort=True):
                row[name] = 100 * part["hit"].mean()
    return pd.DataFrame([row])


def prediction_file(work_dir: Path, model_name: str, dataset: str) -> Path:
    return Path(work_dir) / f"{model_name}_{dataset}.xlsx"


def partial_file(predictions: Path, rank: int = 0, world: int = 1) -> Path:
    """Where a rank saves its answers batch by batch while a run goes."""
    return predictions.with_suffix(".partial.jsonl" if world == 1 else f".partial.rank{rank}.jsonl")


def partial_files(predictions: Path) -> list[Path]:
    """Every rank's saved answers, from runs on any number of ranks."""
    return [partial_file(predictions), *sorted(predictions.parent.glob(glob.escape(predictions.stem) + ".partial.rank*.jsonl"))]


def predict_tsv(get_model: Callable, tsv: Path, work_dir: Path, model_name: str, progress: bool = True,
                batch_size: int = DEFAULT_BATCH_SIZE) -> Path:
    """Answer every row of a local benchmark with `get_model()` (VLMEvalKit contract; asked for
    only when a row needs answering), `batch_size` rows per generation, and write the rows without
    images plus `prediction`. Answers are saved after every batch and rows an earlier run answered
    are kept (as VLMEvalKit's inference does), so an interrupted or --mode infer run continues.
    Under torchrun each rank answers every world-th row (VLMEvalKit's split) and rank 0 writes
    the prediction file from all ranks' answers."""
    rank, world = rank_and_world()
    dataset = tsv.stem
    table = pd.read_csv(tsv, sep="\t")
    out = prediction_file(work_dir, model_name, dataset)
    # every rank reads before any writes: another rank's fresh answers are not "reused"
    done = on_every_rank(lambda: {**earlier_predictions(out), **saved_answers(*partial_files(out))},
                         f"reading earlier answers to {dataset}")
    share = table.iloc[rank::world]
    todo = share[~share["index"].isin(list(done))]
    reused = int(table["index"].isin(list(done)).sum())
    if rank == 0 and reused:
        print(f"[llava-moslora] {dataset}: reusing {reused} predictions from {out.parent}")
    on_every_rank(lambda: answer_share(get_model, table, todo, work_dir, partial_file(out, rank, world), dataset,
                                       batch_size, progress, desc=f"{dataset} (rank {rank}/{world})" if world > 1 else None),
                  f"answering {dataset}")
    on_every_rank(lambda: write_predictions(table, out) if rank == 0 else None, f"writing {out.name}")
    return out


def answer_share(get_model: Callable, table: pd.DataFrame, todo: pd.DataFrame, work_dir: Path, partial: Path,
                 dataset: str, batch_size: int, progress: bool, desc: Optional[str] = None) -> None:
    """Answer the rows in `todo`, each batch's answers appended to `partial` as they come."""
    if todo.empty:
        return
    image_dir = work_dir / "images" / dataset
    image_dir.mkdir(parents=True, exist_ok=True)
    images = dict(zip(table["index"], table["image"]))

    def dump_image(line) -> list[str]:
        data = str(line["image"])
        # As in VLMEvalKit, a short value is the index of the row that holds the image(s), and a
        # multi-image row holds a list of base64 strings written as a Python list.
        data = str(images[type(line["index"])(data)]) if len(data) <= 64 else data
        encoded = ast.literal_eval(data) if data.startswith("[") else [data]
        paths = [image_dir / (f"{line['index']}.png" if len(encoded) == 1 else f"{line['index']}_{k}.png")
                 for k in range(len(encoded))]
        for path, one in zip(paths, encoded):
            if not path.is_file():
                path.write_bytes(base64.b64decode(one))  # the file as it came (PIL reads it by its content)
        return [str(path) for path in paths]

    model = get_model()
    model.set_dump_image(dump_image)
    rows = [(line["index"], model.build_prompt(line, dataset)) for _, line in todo.iterrows()]
    with open(partial, "a") as saved:
        def save(batch: dict) -> None:
            saved.writelines(json.dumps({"index": _plain(i), "prediction": str(a)}) + "\n" for i, a in batch.items())
            saved.flush()
            os.fsync(saved.fileno())  # a SIGKILL right after loses nothing answered
        answer_rows(model, rows, dataset, batch_size, on_batch=save, progress=progress, desc=desc)


def write_predictions(table: pd.DataFrame, out: Path) -> None:
    """The prediction file from earlier predictions and every rank's saved answers, which it replaces."""
    partials = partial_files(out)
    done = {**earlier_predictions(out), **saved_answers(*partials)}
    missing = [i for i in table["index"] if i not in done]
    if missing:  # a rank's answers went missing: keep what is saved, for the next run to finish
        raise RuntimeError(f"{len(missing)} of {len(table)} rows have no answer in {', '.join(map(str, partials))} "
                           f"(e.g. index {missing[0]}); run again to answer them")
    scored = table.drop(columns=["image"]).assign(prediction=[done[i] for i in table["index"]])
    scored.to_excel(out, index=False)
    for partial in partials:
        partial.unlink(missing_ok=True)


def _plain(index):
    """A row index as JSON keeps it (numpy integers as int)."""
    return index.item() if hasattr(index, "item") else index


def saved_answers(*paths: Path) -> dict:
    """The answers interrupted runs saved batch by batch (a line cut by a kill is ignored)."""
    answers = {}
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                answers[entry["index"]] = entry["prediction"]
            except (ValueError, KeyError, TypeError):
                continue
    return answers


def earlier_predictions(path: Path) -> dict:
    if not path.is_file():
        return {}
    table = pd.read_excel(path)
    if not {"index", "prediction"} <= set(table.columns):
        return {}
    return {index: ("" if pd.isna(p) else str(p)) for index, p in zip(table["index"], table["prediction"])}


def score_predictions(tsv: Path, predictions: Path, kind: str) -> dict[str, Path]:
    """VLMEvalKit's exact-matching result file beside the predictions: _acc.csv (kind "MCQ", or
    "VQA" by normalized exact match, one row on 0-100) or _score.csv ("Y/N"). Rows come from the TSV, so option cells keep the types they are read with."""
    problem = unscorable(tsv)
    if problem:
        raise ValueError(problem)
    answers = earlier_predictions(predictions)
    scored = read_rows(tsv)
    missing = [i for i in scored["index"] if i not in answers]
    if missing:
        raise ValueError(f"{predictions} has no prediction for {len(missing)} of {len(scored)} rows "
                         f"(e.g. index {missing[0]}); run with --mode infer or all first")
    scored["prediction"] = [answers[i] for i in scored["index"]]
    stem = str(predictions.with_suffix(""))
    if kind == "MCQ":
        scored["hit"] = [parse_choice(row["prediction"], row) == row["answer"] for _, row in scored.iterrows()]
        path = Path(f"{stem}_acc.csv")
        accuracy_table(scored).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
        return {"predictions": predictions, "acc": path}
    if kind == "VQA":
        scored["hit"] = [free_form_hit(p, a) for p, a in zip(scored["prediction"], scored["answer"])]
        path = Path(f"{stem}_acc.csv")
        score_table(scored).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
        return {"predictions": predictions, "acc": path}
    scored["hit"] = [parse_yes_no(p) == a for p, a in zip(scored["prediction"], scored["answer"])]
    path = Path(f"{stem}_score.csv")
    score_table(scored).to_csv(path, index=False, quoting=csv.QUOTE_ALL)
    return {"predictions": predictions, "score": path}


def evaluate_tsv(model, tsv: Path, work_dir: Path, model_name: str, progress: bool = True,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> dict[str, Path]:
    """Predict (reusing earlier answers) and score one local benchmark; returns its files."""
    kind = tsv_type(tsv)
    problem = unscorable(tsv)
    if problem:
        raise ValueError(problem)
    model.set_benchmark_kind(tsv.stem, kind)  # the model phrases rows for it
    return score_predictions(tsv, predict_tsv(lambda: model, tsv, work_dir, model_name, progress, batch_size), kind)
