"""Answering one question about one image with a trained checkpoint, greedy by default.

The prompt is rendered by the template the checkpoint was trained with, through the same
encode_conversation that built its training labels, so training and inference see the same tokens.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from PIL import Image

from ..data import IMAGE_TOKEN, encode_conversation, preprocess_image
from ..data.own_chat_template import template_for
from ..data.tokenize import token_id
from ..model import LlavaBundle, inference_device


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

    def prompt_ids(self, question: str, with_image: bool, history: Sequence[tuple[str, str]] = ()) -> list[int]:
        """The rendered conversation: earlier (question, reply) turns, then the open question.
        The image goes before the first question, as in LLaVA's training data."""
        turns = [*history, (question, None)]
        if with_image:
            turns[0] = (f"{IMAGE_TOKEN}\n{turns[0][0]}", turns[0][1])
        return encode_conversation(self.template, self.bundle.tokenizer, turns,
                                   num_image_tokens=self.bundle.recipe.num_image_tokens if with_image else 0).input_ids

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
