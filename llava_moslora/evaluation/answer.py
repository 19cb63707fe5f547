"""Answering questions about images with a trained checkpoint, greedy by default: one at a time
(chat, web) or a batch at once (evaluation).

The prompt is rendered by the template the checkpoint was trained with, through the same
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

    def prompt_ids(self, question: str, with_image: bool, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """The rendered conversation: earlier (question, reply) turns, then the open question.
        The image goes before the first question, as in LLaVA's training data. Remembered for a
        while: evaluation asks for a prompt's length first, to batch prompts of like length."""
        key = (question, with_image, tuple(history))
        if key not in self._prompts:
            turns = [*history, (question, None)]
            if with_image:
                turns[0] = (f"{IMAGE_TOKEN}\n{turns[0][0]}", turns[0][1])
            if len(self._prompts) >= PROMPTS_REMEMBERED:
                self._prompts.clear()
            self._prompts[key] = encode_conversation(
                self.template, self.bundle.tokenizer, turns,
                num_image_tokens=self.bundle.recipe.num_image_tokens if with_image else 0).input_ids
        return list(self._prompts[key])

    @torch.no_grad()
    def __call__(self, question: str, image: Optional[Image.Image] = None, history: Sequence[tuple[str, str]] = (),
                 **generate_kwargs) -> str:
        """The reply (greedy unless generate_kwargs say otherwise); a `streamer` sees it as it grows."""
        ids = torch.tensor([self.prompt_ids(question, image is not None, history)], device=self.device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if image is not None:
            pixels = preprocess_image(image, self.bundle.image_processor)[None]
            inputs["pixel_values"] = pixels.to(self.device, dtype=next(self.model.parameters()).dtype)
        settings = {"max_new_tokens": self.max_new_tokens, "do_sample": False, "eos_token_id": self.stop_ids,
                    "pad_token_id": self.bundle.tokenizer.pad_token_id, **generate_kwargs}
        output = self.model.generate(**inputs, **settings)
        self.last_new_tokens = output.shape[1] - ids.shape[1]
        return self.bundle.tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True).strip()

    @torch.no_grad()
    def answer_batch(self, requests: Sequence[tuple[str, Optional[Image.Image]]],
                     max_new_tokens: Optional[int] = None) -> list[str]:
        """Greedy replies to (question, image or None) requests, generated together."""
        prompts = [self.prompt_ids(question, image is not None) for question, image in requests]
        width = max(len(prompt) for prompt in prompts)
        tokenizer = self.bundle.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):  # left padding: every prompt ends where its reply starts
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        images = [image for _, image in requests if image is not None]
        if images:  # one per <image>, in row order, as the model fills them in
            pixels = torch.stack([preprocess_image(image, self.bundle.image_processor) for image in images])
            inputs["pixel_values"] = pixels.to(self.device, dtype=next(self.model.parameters()).dtype)
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens, do_sample=False,
                                     eos_token_id=self.stop_ids, pad_token_id=pad)
        replies = []
        for row in output[:, width:].tolist():
            end = next((k + 1 for k, token in enumerate(row) if token in self.stop_ids), len(row))
            replies.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
        return replies
