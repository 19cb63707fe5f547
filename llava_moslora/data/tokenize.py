"""Turning a rendered conversation into input_ids and labels.

The whole conversation string is tokenised once, with character offsets; a token carries loss
when its characters overlap a loss-bearing segment of the template. This avoids LLaVA's
per-round length arithmetic, whose off-by-one errors against a tokenizer silently mask every
label. Each `<image>` token is then expanded to the vision tower's number of patch tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .templates import IMAGE_TOKEN, Template, Turns

IGNORE_INDEX = -100


class SampleTooLong(ValueError):
    """The image tokens alone do not fit in the maximum length: truncation would cut them."""


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def fully_masked(self) -> bool:
        return all(label == IGNORE_INDEX for label in self.labels)


def token_id(tokenizer, token: str) -> Optional[int]:
    """The id of `token` when the tokenizer holds it as one token, else None."""
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def check_tokenizer(template: Template, tokenizer) -> None:
    """Fail early on the template/tokenizer mismatches that would mask or garble labels."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; llava-moslora needs "
                         "character offsets (load it with AutoTokenizer, which converts slow ones)")
    if template.end_of_turn.strip() and token_id(tokenizer, template.end_of_turn) is None:
        raise ValueError(
            f"template {template.name!r} ends each reply with {template.end_of_turn!r}, which this "
            f"tokenizer ({tokenizer.name_or_path or type(tokenizer).__name__}) does not hold as one "
            "token; pick the template that matches the language model")
    if token_id(tokenizer, IMAGE_TOKEN) is None:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN!r} token; build the model with "
                         "build_llava or load it with load_checkpoint, which add it")


def _loss_spans(segments) -> tuple[str, list[tuple[int, int]]]:
    text, spans, position = [], [], 0
    for piece, carries_loss in segments:
        if carries_loss and piece:
            spans.append((position, position + len(piece)))
        text.append(piece)
        position += len(piece)
    return "".join(text), spans


def encode_conversation(template: Template, tokenizer, turns: Turns, *, num_image_tokens: int = 0,
                        max_length: Optional[int] = None, system: Optional[str] = None) -> EncodedConversation:
    """input_ids and labels for `turns`; labels are IGNORE_INDEX except on reply tokens.

    With num_image_tokens > 0 the text must hold exactly one `<image>`, which becomes that many
    image tokens. Longer than max_length: the tail is cut (truncated=True); if even the image
    tokens do not fit, SampleTooLong.
    """
    text, spans = _loss_spans(template.render(turns, system))
    encoding = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    input_ids = list(encoding["input_ids"])
    labels = []
    span_index = 0
    for token, (start, end) in zip(input_ids, encoding["offset_mapping"]):
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        inside = (end > start and span_index < len(spans)
                  and start < spans[span_index][1] and end > spans[span_index][0])
        labels.append(token if inside else IGNORE_INDEX)

    image_id = token_id(tokenizer, IMAGE_TOKEN)
    positions = [i for i, token in enumerate(input_ids) if token == image_id]
    expected = 1 if num_image_tokens > 0 else 0
    if len(positions) != expected:
        raise ValueError(f"expected {expected} {IMAGE_TOKEN} token(s) in the encoded conversation, "
                         f"found {len(positions)}")
    if positions:
        at = positions[0]
        input_ids[at:at + 1] = [image_id] * num_image_tokens
        labels[at:at + 1] = [IGNORE_INDEX] * num_image_tokens

    truncated = False
    if max_length is not None and len(input_ids) > max_length:
        image_end = positions[0] + num_image_tokens if positions else 0
        if image_end > max_length:
            raise SampleTooLong(f"the {num_image_tokens} image tokens end at position {image_end}, "
                                f"beyond model_max_length={max_length}")
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], True
    return EncodedConversation(input_ids, labels, truncated)
