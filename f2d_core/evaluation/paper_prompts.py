"""The 40 test prompts of Face2Diffusion's evaluation (Sec. 4), with S* written as the identifier "f l"."""

from __future__ import annotations

_ENDINGS = (
    "as a firefighter", "as a cowboy", "as a chef", "as a racer", "as a king", "as a scientist",
    "as a tennis player", "as a DJ", "as a knight", "as a pilot", "walking in a city under an umbrella",
    "surrounded by tall bookshelves", "trying on hats in a vintage boutique", "sipping coffee at a café terrace",
    "in a busy subway station", "eating ice cream at a rooftop terrace", "playing the saxophone on a stage",
    "running in a meadow", "playing chess at a wooden table", "knitting in a comfortable armchair",
    "yawning during a study session", "smiling warmly at the camera", "with a hand covering their mouth",
    "hugging a friend tightly", "flexing muscles in a gym", "looking shocked", "giving a thumbs-up",
    "looking angry", "sitting cross-legged on a rock", "wearing an oversized sweater",
    "at the Great Wall of China", "exploring Machu Picchu", "sailing near the Sydney Opera House",
    "walking through the streets of Rome near the Colosseum", "at the Grand Canyon in sunset",
    "enjoying cherry blossoms in Tokyo", "on a gondola in Venice", "at the Taj Mahal in India",
    "at Mount Everest Base Camp", "in front of Niagara Falls",
)  # fmt: skip

PAPER_PROMPTS: tuple[str, ...] = tuple(f"A photo of f l {ending}" for ending in _ENDINGS)
REFERENCE_IMAGE_PROMPT = "A photo of f l"  # the image directional CLIP measures change from
