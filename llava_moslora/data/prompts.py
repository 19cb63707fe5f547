"""Question prompts shared by training data and evaluation: LLaVA's multiple-choice and
short-answer conventions, as its VLMEvalKit prompt writes them."""
from __future__ import annotations

from typing import Optional, Sequence

MCQ_SUFFIX = "Answer with the option's letter from the given choices directly."
SHORT_SUFFIX = "Answer the question using a single word or phrase."
LETTERS = "ABCD"


def mcq_prompt(question: str, options: Sequence[str], hint: Optional[str] = None) -> str:
    """Hint and question, one "X. option" line per option, then the answer instruction."""
    lines = ([hint] if hint else []) + [question]
    lines += [f"{letter}. {option}" for letter, option in zip(LETTERS, options)]
    return "\n".join(lines) + "\n" + MCQ_SUFFIX


def short_prompt(question: str) -> str:
    return f"{question}\n{SHORT_SUFFIX}"
