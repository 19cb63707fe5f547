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
    """An image's tokens do not fit in the maximum length: truncation would cut them."""


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
                        max_length: Optional[int] = None, system: Optional[str] = None,
                        num_images: Optional[int] = None) -> EncodedConversation:
    """input_ids and labels for `turns`; labels are IGNORE_INDEX except on reply tokens.

    The text must hold `num_images` `<image>` placeholders (default: one when num_image_tokens
    > 0, else none); each becomes num_image_tokens image tokens. Longer than max_length: the
    tail is cut (truncated=True); if that would cut into an image's tokens, SampleTooLong.
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
    found = _image_positions(input_ids, image_id, _expected_images(num_images, num_image_tokens))
    for at in reversed(found):  # from the end, so the earlier positions stay where they are
        input_ids[at:at + 1] = [image_id] * num_image_tokens
        labels[at:at + 1] = [IGNORE_INDEX] * num_image_tokens

    truncated = False
    if max_length is not None and len(input_ids) > max_length:
        _check_images_fit(_last_image_end(found, num_image_tokens), num_image_tokens, len(found), max_length)
        input_ids, labels, truncated = input_ids[:max_length], labels[:max_length], True
    return EncodedConversation(input_ids, labels, truncated)


def _expected_images(num_images: Optional[int], num_image_tokens: int) -> int:
    return num_images if num_images is not None else int(num_image_tokens > 0)


def _image_positions(input_ids: list[int], image_id: Optional[int], expected: int) -> list[int]:
    """Where the `<image>` tokens are, before expansion; ValueError if there are not `expected`."""
    found = [k for k, token in enumerate(input_ids) if token == image_id] if image_id is not None else []
    if len(found) != expected:
        raise ValueError(f"expected {expected} {IMAGE_TOKEN} token(s) in the encoded conversation, found {len(found)}")
    return found


def _last_image_end(found: list[int], num_image_tokens: int) -> int:
    """Where the last image's tokens end once every `<image>` is expanded (0 without images)."""
    return found[-1] + len(found) * num_image_tokens - (len(found) - 1) if found else 0


def _check_images_fit(image_end: int, num_image_tokens: int, count: int, max_length: int) -> None:
    if image_end > max_length:
        which = "image tokens" if count == 1 else f"tokens of its {count} images"
        raise SampleTooLong(f"the {which} ({num_image_tokens} per image) end at position {image_end}, beyond "
                            f"model_max_length={max_length}: truncating would cut an image")


@dataclass
class ConversationSummary:
    """What encode_conversation would give, without the ids and labels: its length, whether it is
    cut (truncated) and whether every label is masked (fully_masked)."""

    length: int
    truncated: bool
    fully_masked: bool


def summarise_conversations(template: Template, tokenizer, conversations, *, num_image_tokens: int = 0,
                            max_length: Optional[int] = None, image_id: Optional[int] = None) -> list:
    """For each (turns, system, number of images) of `conversations`, the ConversationSummary
    that encode_conversation's result has, or the exception it raises (SampleTooLong, ValueError).

    The data screen's fast path: one tokenizer call for the whole list, and only the position
    of the first loss-bearing token is looked for. `image_id`: the `<image>` token's id, if known.
    """
    if not conversations:
        return []
    if image_id is None:
        image_id = token_id(tokenizer, IMAGE_TOKEN)
    rendered = [_loss_spans(template.render(turns, system)) for turns, system, _ in conversations]
    encodings = tokenizer([text for text, _ in rendered], return_offsets_mapping=True, add_special_tokens=True)
    results = []
    for (_, spans), (_, _, num_images), input_ids, offsets in zip(
            rendered, conversations, encodings["input_ids"], encodings["offset_mapping"]):
        try:
            found = _image_positions(input_ids, image_id, num_images)
        except ValueError as error:
            results.append(error)
            continue
        first = _first_label(offsets, spans)
        length = len(input_ids) + len(found) * (num_image_tokens - 1)
        if first is not None:
            first += sum(num_image_tokens - 1 for at in found if at < first)
        truncated = max_length is not None and length > max_length
        if truncated:
            try:
                _check_images_fit(_last_image_end(found, num_image_tokens), num_image_tokens, len(found), max_length)
            except SampleTooLong as error:
                results.append(error)
                continue
        fully_masked = first is None or (truncated and first >= max_length)
        results.append(ConversationSummary(min(length, max_length) if truncated else length, truncated, fully_masked))
    return results


def _first_label(offsets, spans) -> Optional[int]:
    """The position of the first token encode_conversation labels (the same walk, stopped early)."""
    span_index = 0
    for position, (start, end) in enumerate(offsets):
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        if span_index == len(spans):
            return None
        if end > start and start < spans[span_index][1] and end > spans[span_index][0]:
            return position
    return None
