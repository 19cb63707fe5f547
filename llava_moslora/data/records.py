"""Reading LLaVA-format data (JSON list, JSONL, or a `datasets` directory) into checked samples.

A record is {"id", optional "image" (path relative to --image_folder), "conversations":
[{"from": "human"|"gpt", "value": ...}, ...]}. Every problem is a DataError that names the file,
the sample id and, for JSONL, the line, and carries a `kind` (see data/validate.py) so that
validate-data and --skip_bad_samples can sort and count them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

from .templates import IMAGE_TOKEN, Turns

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant"}


class DataError(ValueError):
    """Bad input data; the message names the file and the sample, `kind` says what is wrong."""

    def __init__(self, message: str, kind: str = "invalid", sample_id: Optional[str] = None,
                 where: Optional[str] = None) -> None:
        super().__init__(message)
        self.kind, self.sample_id, self.where = kind, sample_id, where


@dataclass
class Sample:
    id: str
    image: Optional[str]
    turns: Turns
    system: Optional[str] = None

    @property
    def text_length(self) -> int:
        """Words in the conversation: the length LLaVA groups batches by."""
        return sum(len(q.split()) + len((a or "").split()) for q, a in self.turns)

    @property
    def modality_length(self) -> int:
        """Positive for image samples, negative for text-only ones (LLaVA's convention)."""
        return self.text_length if self.image else -self.text_length


def iter_records(path: Union[str, Path],
                 on_malformed: Optional[Callable[[DataError], None]] = None) -> Iterator[tuple[dict, str]]:
    """Yield (record, where) pairs; `where` locates the record for error messages. A JSONL line
    that does not parse raises, or with `on_malformed` is handed to it and skipped."""
    path = Path(path)
    if path.is_dir():
        import datasets
        for index, record in enumerate(datasets.load_from_disk(str(path))):
            yield record, f"{path} (row {index})"
        return
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        text = handle.read()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            where = f"{path} (line {error.lineno})"
            raise DataError(f"{path}: malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}",
                            "malformed_line", where=where) from None
        for index, record in enumerate(records):
            yield record, f"{path} (item {index})"
        return
    for number, line in enumerate(text.splitlines(), start=1):
        yield from jsonl_line(path, line, number, on_malformed)


def jsonl_line(path: Path, line: str, number: int,
               on_malformed: Optional[Callable[[DataError], None]] = None) -> Iterator[tuple[dict, str]]:
    """The (record, where) of one JSONL line: nothing for a blank line; a malformed one raises,
    or with `on_malformed` is handed to it."""
    if not line.strip():
        return
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        malformed = DataError(f"{path}: malformed JSON on line {number}: {error.msg}", "malformed_line",
                              where=f"{path} (line {number})")
        if on_malformed is None:
            raise malformed from None
        on_malformed(malformed)
        return
    yield record, f"{path} (line {number})"


def _fail(where: str, sample_id: str, kind: str, message: str) -> DataError:
    return DataError(f"{where}, sample {sample_id!r}: {message}", kind, sample_id, where)


def parse_sample(record: Any, where: str, index: int) -> Sample:
    """Check one record and normalise it: roles to (user, assistant) pairs, `<image>` moved to
    the start of the first user turn as LLaVA does."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}", "malformed_line",
                        where=where)
    sample_id = str(record.get("id", index))
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise _fail(where, sample_id, "empty_conversation", "empty or missing 'conversations'")
    system = None
    if isinstance(conversations[0], dict) and conversations[0].get("from") == "system":
        system, conversations = str(conversations[0].get("value", "")), conversations[1:]
    messages = []
    for position, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise _fail(where, sample_id, "malformed_turn", f"turn {position} must be an object with a string 'value'")
        role = turn.get("from")
        if role in USER_ROLES:
            expected = len(messages) % 2 == 0
        elif role in ASSISTANT_ROLES:
            expected = len(messages) % 2 == 1
        else:
            raise _fail(where, sample_id, "unknown_role", f"unknown role {role!r} in turn {position} "
                                          f"(expected one of {sorted(USER_ROLES | ASSISTANT_ROLES)})")
        if not expected:
            raise _fail(where, sample_id, "non_alternating", f"turn {position} ({role}) breaks the human/gpt alternation")
        messages.append(turn["value"])
    if not messages:
        raise _fail(where, sample_id, "empty_conversation", "empty conversation")
    if len(messages) % 2:
        raise _fail(where, sample_id, "non_alternating", "the conversation ends with a human turn that has no reply")

    image = record.get("image")
    image = str(image) if image else None
    questions = messages[0::2]
    count = sum(q.count(IMAGE_TOKEN) for q in questions) + sum(a.count(IMAGE_TOKEN) for a in messages[1::2])
    if image and count == 0:
        raise _fail(where, sample_id, "image_token_mismatch", f"has an image ({image}) but no {IMAGE_TOKEN} in its conversation")
    if not image and count:
        raise _fail(where, sample_id, "image_token_mismatch", f"has {IMAGE_TOKEN} in its conversation but no 'image'")
    if count > 1 or (count == 1 and IMAGE_TOKEN not in questions[0]):
        raise _fail(where, sample_id, "image_token_mismatch", f"needs exactly one {IMAGE_TOKEN}, in the first human turn")
    if image:
        questions[0] = IMAGE_TOKEN + "\n" + questions[0].replace(IMAGE_TOKEN, "").strip()
    return Sample(sample_id, image, list(zip(questions, messages[1::2])), system)


def data_paths(path: Union[str, Path]) -> list:
    """The files of a data path: one, or several given as "a.json,b.jsonl"."""
    return [p for p in str(path).split(",") if p] if "," in str(path) else [path]


def load_samples(path: Union[str, Path], rejected: Optional[list[DataError]] = None) -> list[Sample]:
    """Samples of one data file, or of several given as "a.json,b.jsonl" (read in that order).

    The first bad record raises its DataError; with a `rejected` list, every bad record (and
    malformed line) is appended there instead and the rest are returned.
    """
    samples = []
    for one in data_paths(path):
        for index, (record, where) in enumerate(iter_records(one, rejected.append if rejected is not None else None)):
            try:
                samples.append(parse_sample(record, where, index))
            except DataError as error:
                if rejected is None:
                    raise
                rejected.append(error)
    return samples
