"""Answering questions about images with a trained checkpoint, greedy by default: one at a time
(chat, web) or a batch at once (evaluation).

A conversation may hold several images, each at its `<image>` placeholder (place_images adds
the ones a question leaves out). The prompt is rendered by the template the checkpoint was trained with, through the same
encode_conversation that built its training labels, so training and inference see the same tokens.
A batch is left-padded (positions follow the attention mask, as in one-at-a-time generation), and
each reply is cut at its own first stop token, so it reads as the same question asked alone.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from PIL import Image

from ..data import IMAGE_TOKEN, encode_conversation, preprocess_image
from ..data.own_chat_template import template_for
from ..data.tokenize import token_id
from ..model import LlavaBundle, inference_device

PROMPTS_REMEMBERED = 1 << 16  # rendered prompts kept (a benchmark's worth; token ids only)


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

    @torch.no_grad()
    def __call__(self, question: str, images=None, history: Sequence[tuple[str, str]] = (),
                 **generate_kwargs) -> str:
        """The reply (greedy unless generate_kwargs say otherwise); a `streamer` sees it as it grows.
        `images`: the conversation's images in order (one image, a list, or None)."""
        images = as_list(images)
        ids = torch.tensor([self.prompt_ids(question, len(images), history)], device=self.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **self._pixels(images)}
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "eos_token_id": self.stop_ids,
                    "pad_token_id": self.bundle.tokenizer.pad_token_id, **generate_kwargs}
        output = self.model.generate(**inputs, **settings)
        self.last_new_tokens = output.shape[1] - ids.shape[1]
        return self.bundle.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()

    @torch.no_grad()
    def answer_batch(self, requests: Sequence[tuple[str, object]], max_new_tokens: Optional[int] = None) -> list[str]:
        """Greedy replies to (question, images) requests (images: one, a list, or None), generated together."""
        requests = [(question, as_list(images)) for question, images in requests]
        prompts = [self.prompt_ids(question, len(images)) for question, images in requests]
        width = max(len(prompt) for prompt in prompts)
        tokenizer = self.bundle.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where its reply starts
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        # one image per <image>, in row order, as the model fills them in
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                  **self._pixels([image for _, images in requests for image in images])}
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False,
                                     eos_token_id=self.stop_ids, pad_token_id=pad)
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
