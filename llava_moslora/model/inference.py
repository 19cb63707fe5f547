"""Answering questions about images with a trained checkpoint, greedy by default: one at a time
(chat, web) or a batch at once (evaluation).

A conversation may hold several images, each at its `<image>` placeholder (place_images adds
the ones a question leaves out). The prompt is rendered by the template the checkpoint was trained with, through the same
encode_conversation that built its training labels, so training and inference see the same tokens.
A batch is left-padded (positions follow the attention mask, as in one-at-a-time generation), and
each reply is cut at its own first stop token, so it reads as the same question asked alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from PIL import Image

from ..data import IMAGE_TOKEN, encode_conversation, preprocess_image
from ..data.own_chat_template import template_for
from ..data.tokenize import token_id
from .builder import LlavaBundle
from .tuning import inference_device

PROMPTS_REMEMBERED = 1 << 16  # rendered prompts kept (a benchmark's worth; token ids only)


class PromptTooLong(ValueError):
    """A question (with its images) that does not fit in the model's context."""

    def __init__(self, tokens: int, context: int) -> None:
        super().__init__(f"the question is {tokens} tokens with its images, and the model reads at most {context}: "
                         "shorten it")

    @property
    def as_answer(self) -> str:
        """How evaluation records the row: a prediction that names the failure (and scores as wrong)."""
        return f"[not answered: {self}]"


@dataclass
class Fit:
    """A conversation cut to the model's context: the prompt's ids, the images and earlier turns
    kept, how many of each were left out (oldest first), and the new tokens that fit after it."""

    ids: list
    images: list
    history: list
    max_new_tokens: int
    dropped_turns: int = 0
    dropped_images: int = 0
    capped: bool = False  # max_new_tokens was lowered to fit
    cut: bool = False  # ... and the reply used all of it (set once generated)

    @property
    def notice(self) -> Optional[str]:
        """What the reply's status should say about the context, if anything."""
        said = []
        if self.dropped_turns:
            images = f" and {self.dropped_images} image{'s' * (self.dropped_images != 1)}" if self.dropped_images else ""
            said.append(f"the oldest {self.dropped_turns} turn{'s' * (self.dropped_turns != 1)}{images} no longer fit "
                        "the model's context and were left out")
        if self.cut:
            said.append(f"the reply was cut at {self.max_new_tokens} tokens, where the model's context ends")
        return "; ".join(said) or None


class Answerer:
    def __init__(self, bundle: LlavaBundle, device: Optional[str] = None, max_new_tokens: int = 16) -> None:
        self.bundle = bundle
        self.device = inference_device(device)
        self.model = bundle.model.to(self.device).eval()
        self.template = template_for(bundle.recipe.template, bundle.tokenizer)
        self.max_new_tokens = max_new_tokens
        stops = {bundle.tokenizer.eos_token_id, token_id(bundle.tokenizer, self.template.end_of_turn)}
        self.stop_ids = sorted(i for i in stops if i is not None)
        self.last_new_tokens = 0  # of the latest reply, for tokens-per-second reports
        self.last_fit: Optional[Fit] = None  # of the latest reply: what the context left out
        self.context = getattr(bundle.model.config.text_config, "max_position_embeddings", None)
        self._prompts: dict = {}

    def prompt_ids(self, question: str, images: int = 0, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """The rendered conversation: earlier (question, reply) turns, then the open question,
        with `images` images in all (placed by place_images). Remembered for a while: evaluation asks
        for a prompt's length first, to batch prompts of like length."""
        key = (question, int(images), tuple(history))
        if key not in self._prompts:
            turns = place_images([*history, (question, None)], int(images))
            if len(self._prompts) >= PROMPTS_REMEMBERED:
                self._prompts.clear()
            self._prompts[key] = encode_conversation(
                self.template, self.bundle.tokenizer, turns, num_image_tokens=self.bundle.recipe.num_image_tokens,
                num_images=int(images)).input_ids
        return list(self._prompts[key])

    def _pixels(self, images: list) -> dict:
        if not images:
            return {}
        pixels = torch.stack([preprocess_image(image, self.bundle.image_processor) for image in images])
        return {"pixel_values": pixels.to(self.device, dtype=next(self.model.parameters()).dtype)}

    def fit(self, question: str, images=None, history: Sequence[tuple[str, str]] = (),
            max_new_tokens: Optional[int] = None) -> Fit:
        """The conversation within the model's context (its position embeddings): the oldest turns
        (with the images they brought) are left out until the prompt leaves room for a quarter of
        the context or the reply asked for, whichever is less; the reply is capped to what fits.
        PromptTooLong when the question alone leaves no room."""
        images, history = as_list(images), list(history)
        wanted = max_new_tokens or self.max_new_tokens
        dropped_turns = dropped_images = 0
        while True:
            ids = self.prompt_ids(question, len(images), history)
            room = wanted if self.context is None else self.context - len(ids)
            if room >= min(wanted, max(1, (self.context or 0) // 4)) or not history:
                break
            oldest = history.pop(0)[0].count(IMAGE_TOKEN)
            images, dropped_turns, dropped_images = images[oldest:], dropped_turns + 1, dropped_images + oldest
        if room < 1:
            raise PromptTooLong(len(ids), self.context)
        return Fit(ids, images, history, min(wanted, room), dropped_turns, dropped_images, capped=room < wanted)

    @torch.no_grad()
    def __call__(self, question: str, images=None, history: Sequence[tuple[str, str]] = (),
                 **generate_kwargs) -> str:
        """The reply (greedy unless generate_kwargs say otherwise); a `streamer` sees it as it grows.
        `images`: the conversation's images in order (one image, a list, or None). The
        conversation is cut to the model's context first (fit; what it did is in last_fit)."""
        fit = self.last_fit = self.fit(question, images, history, generate_kwargs.pop("max_new_tokens", None))
        ids = torch.tensor([fit.ids], device=self.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **self._pixels(fit.images)}
        settings = {"max_new_tokens": fit.max_new_tokens, "do_sample": False, "eos_token_id": self.stop_ids,
                    "pad_token_id": self.bundle.tokenizer.pad_token_id, **generate_kwargs}
        output = self.model.generate(**inputs, **settings)
        self.last_new_tokens = output.shape[1] - ids.shape[1]
        fit.cut = fit.capped and self.last_new_tokens >= fit.max_new_tokens
        return self.bundle.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()

    @torch.no_grad()
    def answer_batch(self, requests: Sequence[tuple[str, object]], max_new_tokens: Optional[int] = None) -> list[str]:
        """Greedy replies to (question, images) requests (images: one, a list, or None), generated together."""
        requests = [(question, as_list(images)) for question, images in requests]
        prompts = [self.prompt_ids(question, len(images)) for question, images in requests]
        too_long = {row for row, prompt in enumerate(prompts) if self.context is not None and len(prompt) >= self.context}
        if too_long:  # recorded as their answer, by name; the other rows are generated as usual
            kept = [row for row in range(len(requests)) if row not in too_long]
            answers = dict(zip(kept, self.answer_batch([requests[row] for row in kept], max_new_tokens) if kept else []))
            return [answers[row] if row in answers else PromptTooLong(len(prompts[row]), self.context).as_answer
                    for row in range(len(requests))]
        wanted = max_new_tokens or self.max_new_tokens
        if self.context is not None:  # positions follow each row's own length: the longest row bounds them
            wanted = min(wanted, self.context - max(len(prompt) for prompt in prompts))
        tokenizer = self.bundle.tokenizer
        if tokenizer.pad_token_id is None:  # a directory without one: pad with the stop token, as generate does
            tokenizer.pad_token_id = self.stop_ids[0]
        # left padding: every prompt ends where its reply starts
        batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt")
        width = batch["input_ids"].shape[1]
        # one image per <image>, in row order, as the model fills them in
        inputs = {"input_ids": batch["input_ids"].to(self.device), "attention_mask": batch["attention_mask"].to(self.device),
                  **self._pixels([image for _, images in requests for image in images])}
        output = self.model.generate(**inputs, max_new_tokens=wanted, do_sample=False,
                                     eos_token_id=self.stop_ids, pad_token_id=tokenizer.pad_token_id)
        replies = []
        for row in output[:, width:].tolist():
            end = next((k + 1 for k, token in enumerate(row) if token in self.stop_ids), len(row))
            replies.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
        return replies


def as_list(images) -> list:
    """A conversation's images as a list: None is none, one image is one."""
    return [] if images is None else [images] if isinstance(images, Image.Image) else list(images)


def place_images(turns: list, images: int) -> list:
    """The conversation's turns with the `<image>` placeholders it still lacks: with none placed
    anywhere, the images go before the first question (LLaVA's layout); else the ones left go
    before the last. One image in the first question goes at its start, as training puts it.
    ValueError when the turns hold more placeholders than there are images."""
    placed = sum(question.count(IMAGE_TOKEN) for question, _ in turns)
    if placed > images:
        raise ValueError(f"the conversation has {placed} {IMAGE_TOKEN} placeholders but {images} images")
    turns = list(turns)
    if placed < images:
        at = 0 if placed == 0 else len(turns) - 1
        turns[at] = (f"{IMAGE_TOKEN}\n" * (images - placed) + turns[at][0], turns[at][1])
    if images == 1 and IMAGE_TOKEN in turns[0][0]:
        turns[0] = (f"{IMAGE_TOKEN}\n" + turns[0][0].replace(IMAGE_TOKEN, "").strip(), turns[0][1])
    return turns
