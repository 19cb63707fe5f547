"""Question prompts shared by training data and evaluation: LLaVA's multiple-choice and
short-answer conventions, as its VLMEvalKit prompt writes them."""
from __future__ import annotations

import string
from typing import Mapping, Optional, Sequence, Union

MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Answer the question using a single word or phrase."
# The option columns VLMEvalKit reads from a multiple-choice row (its build_choices): A to Z.
LETTERS = string.ascii_uppercase


def lettered(options: Union[Sequence[str], Mapping[str, str]]) -> dict[str, str]:
    """Letter -> option: a mapping is kept as it is (a row's own letters, gaps included, so
    options A, B, D stay A, B, D); a sequence is lettered A, B, C, ... in order."""
    if isinstance(options, Mapping):
        bad = [letter for letter in options if letter not in LETTERS or len(letter) != 1]
        if bad:
            raise ValueError(f"option letters must be single capitals A-Z; got {bad}")
        return {letter: options[letter] for letter in sorted(options)}
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options; multiple choice has at most {len(LETTERS)} (A-Z)")
    return dict(zip(LETTERS, options))


def mcq_prompt(question: str, options: Union[Sequence[str], Mapping[str, str]], hint: Optional[str] = None) -> str:
    """Hint and question, one "X. option" line per option with its own letter, then the answer
    instruction (LLaVA's prompt in VLMEvalKit)."""
    lines = ([hint] if hint else []) + [question]
    lines += [f"{letter}. {option}" for letter, option in lettered(options).items()]
    return "\n".join(lines) + "\n" + MCQ_SUFFIX


def short_prompt(question: str) -> str:
    return f"{question}\n{SHORT_SUFFIX}"
