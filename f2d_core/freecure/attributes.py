"""Which face-parser classes a prompt asks for (FASA) and which words are expressions (APG).

FreeCure's released code finds "hair", "eye" and "glasses" by substring search, so "chair" would select
hair; here every word is matched on word boundaries, case-insensitively (the specification's Sec. 4.2
table). Class ids are those of face-parsing.PyTorch (`CELEBAMASK_HQ_CLASSES`): hair 17, glasses 6, ...
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import F2DError
from ..faces.face_parsing import CELEBAMASK_HQ_CLASSES


class AttributeListError(F2DError, ValueError):
    """An attribute list written by hand names no known attribute or class."""


# attribute -> (words, face-parser class ids). Order: how the report lists them.
FASA_ATTRIBUTES: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "hair": (("hair", "hairs", "hairstyle", "hairdo", "curly", "bangs", "ponytail", "braid", "braids", "bald"), (17,)),
    "glasses": (("glasses", "sunglasses", "spectacles", "eyewear", "eyeglasses", "goggles"), (6,)),
    "eyes": (("eye", "eyes", "iris", "irises"), (4, 5)),
    "eyebrows": (("eyebrow", "eyebrows", "brow", "brows"), (2, 3)),
    "earrings": (("earring", "earrings"), (9,)),
    "hat": (("hat", "hats", "cap", "beanie", "helmet", "beret"), (18,)),
    "necklace": (("necklace", "necklaces", "choker", "pendant"), (15,)),
    "lips": (("lip", "lips", "lipstick", "mouth"), (11, 12, 13)),
    "clothes": (
        ("shirt", "t-shirt", "jacket", "dress", "suit", "clothes", "sweater", "hoodie", "coat", "blouse", "uniform"),
        (16,),
    ),
}  # fmt: skip
# Expressions: no parser class; asymmetric prompt guidance changes them (paper Sec. 4.2).
EXPRESSION_WORDS: tuple[str, ...] = (
    "smiling", "smile", "smiles", "laughing", "laugh", "laughs", "grinning", "angry", "frowning", "frown",
    "worried", "sad", "unhappy", "surprised", "shocked", "crying", "happy", "scared", "disgusted", "expression",
    "serious", "pouting", "winking", "screaming", "shouting", "sleepy", "tired",
)  # fmt: skip
# Attributes the parser has no class for: an external MASK input can cover them.
UNPARSED_WORDS: tuple[str, ...] = ("beard", "moustache", "mustache", "makeup", "tattoo", "tattoos", "mask")


def _words_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    """Any of `words` as a whole word (letters, digits and _ around it do not count), case-insensitive."""
    body = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)


_FASA_PATTERNS = {name: _words_pattern(words) for name, (words, _) in FASA_ATTRIBUTES.items()}
_EXPRESSION_PATTERN = _words_pattern(EXPRESSION_WORDS)
_UNPARSED_PATTERN = _words_pattern(UNPARSED_WORDS)


@dataclass
class AttributeChoice:
    """What FreeCure acts on: parser classes for FASA, expression words for APG, and unparsed words."""

    attributes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # name -> class ids
    expressions: list[str] = field(default_factory=list)  # words in prompt order, lower case
    unparsed: list[str] = field(default_factory=list)

    @property
    def class_ids(self) -> list[int]:
        """Sorted union of the class ids of every chosen attribute."""
        return sorted({i for ids in self.attributes.values() for i in ids})


def _found(pattern: re.Pattern[str], text: str) -> list[str]:
    seen: list[str] = []
    for m in pattern.finditer(text):
        word = m.group(0).lower()
        if word not in seen:
            seen.append(word)
    return seen


def attributes_in_prompt(prompt: str) -> AttributeChoice:
    """The attributes a prompt asks for, matched on word boundaries ('chair' is not hair).

    'sunglasses' -> glasses (class 6); 'laughing' -> an expression for APG; 'beard' -> unparsed (needs an
    external mask). Returns an AttributeChoice (possibly empty).
    """
    choice = AttributeChoice()
    for name, pattern in _FASA_PATTERNS.items():
        if pattern.search(prompt):
            choice.attributes[name] = FASA_ATTRIBUTES[name][1]
    choice.expressions = _found(_EXPRESSION_PATTERN, prompt)
    choice.unparsed = _found(_UNPARSED_PATTERN, prompt)
    return choice


def parse_attribute_list(text: str, prompt: str) -> AttributeChoice:
    """`text` = "auto" (read the prompt), or a comma list of attribute names ("hair, glasses"), parser
    class names ("hat") or class ids ("17, 6"). Expressions are always read from the prompt.

    Raises AttributeListError naming an entry that is none of these.
    """
    choice = attributes_in_prompt(prompt)
    entries = [e.strip().lower() for e in text.split(",") if e.strip()]
    if not entries or entries == ["auto"]:
        return choice
    chosen: dict[str, tuple[int, ...]] = {}
    for entry in entries:
        if entry in FASA_ATTRIBUTES:
            chosen[entry] = FASA_ATTRIBUTES[entry][1]
        elif entry in CELEBAMASK_HQ_CLASSES:
            chosen[entry] = (CELEBAMASK_HQ_CLASSES.index(entry),)
        elif entry.isdigit() and 0 <= int(entry) < len(CELEBAMASK_HQ_CLASSES):
            chosen[CELEBAMASK_HQ_CLASSES[int(entry)]] = (int(entry),)
        else:
            raise AttributeListError(
                f"attributes: {entry!r} is not an attribute ({', '.join(FASA_ATTRIBUTES)}), a face-parser class "
                f"({', '.join(CELEBAMASK_HQ_CLASSES)}) or a class id 0..{len(CELEBAMASK_HQ_CLASSES) - 1}; "
                "write 'auto' to read them from the prompt."
            )
    choice.attributes = chosen
    return choice
