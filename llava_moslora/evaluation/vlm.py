"""The VLMEvalKit model class: a checkpoint of this project behind VLMEvalKit's model contract.

Contract (vlmeval/vlm/base.py BaseModel): `generate(message, dataset)` with message a list of
{"type": "image"|"text", "value": path-or-text} returns a string; `use_custom_prompt(dataset)` and
`build_prompt(line, dataset)` let a model phrase benchmark rows its own way. Multiple-choice rows
get LLaVA's prompt (options, then "Answer with the option's letter ..."), yes/no rows the short
answer prompt this project trains with; decoding is greedy with few new tokens.

`model_class()` subclasses vlmeval's BaseModel when vlmeval is importable (it is imported only
then: the import is slow and changes process-wide settings) and otherwise `ContractBase`, which
implements the same contract, so the builtin backend drives the very same code.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Union

import pandas as pd
from PIL import Image

from ..data.prompts import LETTERS, mcq_prompt, short_prompt
from ..data.templates import IMAGE_TOKEN
from ..model import inference_device, inference_dtype, load_checkpoint
from ..model.quantize import loading_quantization
from ..model.inference import Answerer, PromptTooLong
from .benchmarks import benchmark_type
from .toolkit import import_vlmeval_quietly, vlmeval_available

# Answers to MCQ / yes-no rows are a letter or a word; VQA rows get room for a phrase.
SHORT_ANSWER_TOKENS = 8
FREE_ANSWER_TOKENS = 64


class ContractBase:
    """VLMEvalKit's BaseModel contract without vlmeval: message normalisation and image dumping."""

    INTERLEAVE = True  # images may sit anywhere in a message, several of them
    allowed_types = ["text", "image"]

    def __init__(self) -> None:
        self.dump_image_func: Optional[Callable] = None

    def set_dump_image(self, dump_image_func: Callable) -> None:
        self.dump_image_func = dump_image_func

    def dump_image(self, line, dataset: Optional[str] = None) -> list[str]:
        return self.dump_image_func(line)

    def use_custom_prompt(self, dataset: Optional[str]) -> bool:
        return False

    def normalize(self, message) -> list[dict]:
        """A message as generate_inner takes it: a list of {"type", "value"} items."""
        if isinstance(message, str):
            message = [{"type": "text", "value": message}]
        items = []
        for item in message:
            if isinstance(item, str):  # a bare string is an image path if the file exists, else text
                item = {"type": "image" if os.path.isfile(item) else "text", "value": item}
            if item.get("type") not in self.allowed_types:
                raise ValueError(f"unsupported message item {item!r}; expected types {self.allowed_types}")
            items.append(item)
        return items

    def generate(self, message, dataset: Optional[str] = None) -> str:
        return self.generate_inner(self.normalize(message), dataset)


def options_of(line) -> dict[str, str]:
    """Letter -> option text of a benchmark row: every letter column A-Z it has, empty cells left
    out and gaps kept (VLMEvalKit's build_choices)."""
    return {letter: str(line[letter]) for letter in LETTERS if letter in line and not pd.isna(line[letter])}


def is_multiple_choice(line) -> bool:
    return bool(options_of(line))


class LlavaMoSLoRAMixin:
    """Loads a stage checkpoint or merged directory and answers benchmark messages with it.
    `benchmark_kinds` (name -> "MCQ" / "Y/N" / "VQA") are the types the evaluation planned; a
    benchmark not among them (VLMEvalKit's run.py) gets its type from vlmeval or its TSV in
    `data_root`."""

    benchmark_kinds: Mapping[str, str] = {}  # replaced per instance, never changed in place
    data_root: Optional[Path] = None

    def __init__(self, model_path: Union[str, Path], device: Optional[str] = None, dtype: str = "auto",
                 bits: Optional[int] = None, benchmark_kinds: Optional[Mapping[str, str]] = None,
                 data_root: Optional[Path] = None, template: Optional[str] = None, **answer_kwargs) -> None:
        super().__init__()
        self.model_path = str(model_path)
        self.benchmark_kinds, self.data_root = dict(benchmark_kinds or {}), data_root
        device = inference_device(device)
        bundle = load_checkpoint(model_path, dtype=inference_dtype(dtype, device), quantization=loading_quantization(bits),
                                 template=template)
        self.answerer = Answerer(bundle, device=device, **answer_kwargs)

    def set_benchmark_kind(self, name: str, kind: str) -> None:
        self.benchmark_kinds = {**self.benchmark_kinds, name: kind}

    def kind_of(self, dataset: Optional[str]) -> str:
        if dataset not in self.benchmark_kinds:
            self.set_benchmark_kind(dataset, benchmark_type(dataset, self.data_root))
        return self.benchmark_kinds[dataset]

    def use_custom_prompt(self, dataset: Optional[str]) -> bool:
        return self.kind_of(dataset) in ("MCQ", "Y/N")

    def build_prompt(self, line, dataset: Optional[str] = None) -> list[dict]:
        images = self.dump_image(line, dataset)
        if is_multiple_choice(line):
            hint = line.get("hint")
            text = mcq_prompt(str(line["question"]), options_of(line), None if pd.isna(hint) else str(hint))
        elif self.kind_of(dataset) == "Y/N":
            text = short_prompt(str(line["question"]))
        else:  # free-form: the question as VLMEvalKit's dataset prompt gives it
            text = str(line["question"])
        return [{"type": "image", "value": path} for path in images] + [{"type": "text", "value": text}]

    @staticmethod
    def question(message: list[dict]) -> tuple[str, list[str]]:
        """(text, image paths) of a normalised message: the texts, each image as an `<image>`
        placeholder where the message has it (VLMEvalKit's interleaved multi-image messages)."""
        pieces = [IMAGE_TOKEN if item["type"] == "image" else item["value"] for item in message]
        return "\n".join(pieces), [item["value"] for item in message if item["type"] == "image"]

    def answer_tokens(self, dataset: Optional[str]) -> int:
        return SHORT_ANSWER_TOKENS if self.kind_of(dataset) in ("MCQ", "Y/N") else FREE_ANSWER_TOKENS

    def generate_inner(self, message: list[dict], dataset: Optional[str] = None) -> str:
        text, images = self.question(message)
        try:
            return self.answerer(text, [open_rgb(path) for path in images], max_new_tokens=self.answer_tokens(dataset))
        except PromptTooLong as error:  # the row's prediction names it; the benchmark goes on
            return error.as_answer

    def prompt_length(self, message, dataset: Optional[str] = None) -> int:
        """Tokens of the prompt a message becomes (to batch prompts of like length)."""
        text, images = self.question(self.normalize(message))
        return len(self.answerer.prompt_ids(text, len(images)))

    def generate_batch(self, messages: list, dataset: Optional[str] = None) -> list[str]:
        """generate() of each message, the greedy generations run as one batch."""
        questions = [self.question(self.normalize(message)) for message in messages]
        requests = [(text, [open_rgb(path) for path in images]) for text, images in questions]
        return self.answerer.answer_batch(requests, max_new_tokens=self.answer_tokens(dataset))


def open_rgb(path: str) -> Image.Image:
    """A message's image, read as training reads images (converted alike, the pixel limit kept)."""
    from ..data.images import read_image

    return read_image(path, f"image {path}")


@functools.lru_cache(maxsize=None)
def model_class(use_vlmeval: Optional[bool] = None) -> type:
    """LlavaMoSLoRA over vlmeval's BaseModel (when usable) or over ContractBase."""
    if use_vlmeval is None:
        use_vlmeval = vlmeval_available()
    if use_vlmeval:
        import_vlmeval_quietly()
        from vlmeval.vlm.base import BaseModel

        # vlmeval's own message normalisation (its generate's), for the batched route too
        return type("LlavaMoSLoRA", (LlavaMoSLoRAMixin, BaseModel),
                    {"INTERLEAVE": True, "normalize": lambda self, message: self.preproc_content(message)})
    return type("LlavaMoSLoRA", (LlavaMoSLoRAMixin, ContractBase), {})
