"""Identity start (FastComposer's delayed subject conditioning): the class noun first, S* after.

For the first `identity_start` fraction of sampling the prompt is encoded with the class noun
("person") where the identifier ("f l") stands; from then on with S*. Early steps fix layout and
composition, where the class word follows the text better; later steps fix the face. ComfyUI reads a
conditioning entry's `start_percent` / `end_percent` as that fraction of sampling (as
ConditioningSetTimestepRange sets them).
"""

from __future__ import annotations

import re

from ..errors import PromptError

DEFAULT_CLASS_NOUN = "person"


def check_identity_start(identity_start: float) -> float:
    """`identity_start` as a float in [0, 1); PromptError otherwise (1 would never use S*)."""
    value = float(identity_start)
    if not 0.0 <= value < 1.0:
        raise PromptError(
            f"identity_start {identity_start} must be at least 0 (S* from the first step) and below 1 "
            "(at 1 the person's face would never be used)."
        )
    return value


def identifier_pattern(identifier: str) -> re.Pattern[str]:
    """The identifier as written in a prompt: its words separated by any whitespace, case-insensitive, whole words."""
    words = identifier.split()
    if not words:
        raise PromptError("The identifier is empty: use 'f l' (the official identifier).")
    body = r"\s+".join(re.escape(word) for word in words)
    return re.compile(rf"(?<![\w]){body}(?![\w])", re.IGNORECASE)


def class_prompt(text: str, identifier: str, class_noun: str = DEFAULT_CLASS_NOUN) -> str:
    """`text` with every identifier replaced by `class_noun` ('a photo of f l' -> 'a photo of person').

    Weights around the identifier stay: '(f l:1.2)' -> '(person:1.2)'. Raises PromptError for an
    empty class noun or a prompt without the identifier.
    """
    noun = class_noun.strip()
    if not noun:
        raise PromptError("class_noun is empty: write the word the person is before S* takes over, e.g. 'person'.")
    replaced, count = identifier_pattern(identifier).subn(noun, text)
    if count == 0:
        raise PromptError(
            f'The prompt does not contain the identifier "{identifier}". Write it where the person goes, '
            f'e.g. "a photo of {identifier} as a knight".'
        )
    return replaced


def timestep_ranges(identity_start: float) -> tuple[dict[str, float] | None, dict[str, float]]:
    """(class-noun range, S* range) as `{"start_percent", "end_percent"}` entries of a conditioning.

    At 0 there is no class-noun phase: (None, {}), so the conditioning stays exactly as without the dial.
    """
    start = check_identity_start(identity_start)
    if start == 0.0:
        return None, {}
    return {"start_percent": 0.0, "end_percent": start}, {"start_percent": start, "end_percent": 1.0}
