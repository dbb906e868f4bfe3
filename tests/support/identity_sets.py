"""Labelled face identities for CPU tests of identity-encoder training and verification.

Faces have no labelled identity set offline: no package ships several photos of one person. What
stands in is built here, at test time, from what packages do ship:

- real identities: the astronaut of scikit-image and the six faces of insightface's `t1.jpg` (one
  photo each, with the 5-point landmarks the official detector gave for them, stored in
  tests/data/f2d_official/expected.npz), plus insightface's aligned `Tom_Hanks_54745.png`. Each
  "photo" of a real identity is the same photo aligned to 112x112 with the pack's own alignment
  (`f2d_core.faces.alignment.align_faces`) from landmarks moved by a random similarity (shift, rotation,
  scale), then colour-jittered (brightness, contrast, channel gains) and given sensor noise;
- synthetic identities: a seeded smooth pattern (a background colour and a few coloured Gaussian
  blobs) per identity, through the same augmentation.

So two photos of one identity differ by pose-like geometry and lighting, as in a real set, but never by
age, expression or occlusion: an encoder trained on it learns to tell these identities apart, which is
what the tests need (the loss falls, verification AUC rises), not a face model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from f2d_core.faces.alignment import ARCFACE_TEMPLATE_112, align_faces
from tests.support import formula_weights
from tests.support.photos import load_rgb

REAL_IDENTITIES = 8  # astronaut, t1.jpg faces 0-5, Tom Hanks (aligned crop)
SYNTHETIC_CANVAS = 160  # side of a synthetic identity's "photo"


@dataclass
class IdentitySet:
    """Aligned faces uint8 [N, 3, 112, 112] RGB with int64 labels [N] and a name per label.

    Shaped as `FaceRecognitionDataset`: `__getitem__(i) -> (uint8 [3, 112, 112], int)`, `num_classes`,
    `labels`, `source`, `report`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    source: str = "tests/support/identity_sets.py"
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def subset(self, identities: list[int]) -> IdentitySet:
        """The photos of the given identities, relabelled 0..len(identities)-1 in that order."""
        keep = torch.isin(self.labels, torch.tensor(identities))
        remap = {old: new for new, old in enumerate(identities)}
        labels = torch.tensor([remap[int(label)] for label in self.labels[keep]], dtype=torch.int64)
        return IdentitySet(self.images[keep], labels, [self.names[i] for i in identities], self.source)

    def write_folder(self, root: Path) -> Path:
        """One subfolder per identity (its name) of PNG crops, as VGGFace2 / CASIA-WebFace ship; returns root."""
        root = Path(root)
        for index in range(len(self)):
            folder = root / self.names[int(self.labels[index])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(self.images[index].permute(1, 2, 0).numpy()).save(folder / f"{index:05d}.png")
        return root


def _real_photos() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB uint8 photo, landmarks [5, 2]) of each real identity, from the official fixture."""
    expected = formula_weights.expected()
    photos = []
    for source, lm5 in zip(expected["sources"], expected["lm5"], strict=True):
        file_name, _, face = str(source).rpartition("/")[2].partition("#")
        name = Path(file_name).stem + (f"_{face}" if face else "")
        photos.append((name, load_rgb(str(source)), lm5.astype(np.float32)))
    return photos


def _synthetic_photo(identity: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded smooth pattern [S, S, 3] uint8 and the template landmarks placed on it."""
    rng = np.random.default_rng([seed, identity])
    side = SYNTHETIC_CANVAS
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    image = np.broadcast_to(rng.uniform(40, 215, 3), (side, side, 3)).copy()
    for _ in range(6):
        cx, cy = rng.uniform(0.2, 0.8, 2) * side
        sigma = rng.uniform(0.06, 0.18) * side
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        image += blob[..., None] * rng.uniform(-120, 120, 3)
    margin = (side - 112) / 2
    return np.clip(image, 0, 255).astype(np.uint8), ARCFACE_TEMPLATE_112.numpy() + margin


def _moved_landmarks(lm5: np.ndarray, count: int, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """`count` copies of lm5 [5, 2] moved by a random similarity: +-8 deg, +-6 % scale, +-4 % shift (x strength)."""
    centre = lm5.mean(axis=0)
    size = np.linalg.norm(lm5[1] - lm5[0]) * 112 / 35.2  # face size in photo pixels (template eye distance 35.2)
    out = np.empty((count, 5, 2), np.float32)
    for i in range(count):
        angle = math.radians(rng.uniform(-8, 8) * strength)
        scale = 1 + rng.uniform(-0.06, 0.06) * strength
        shift = rng.uniform(-0.04, 0.04, 2) * size * strength
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        out[i] = (lm5 - centre) @ rotation.T * scale + centre + shift
    return torch.from_numpy(out)


def _photos_of(
    photo: np.ndarray, lm5: np.ndarray, count: int, rng: np.random.Generator, strength: float
) -> torch.Tensor:
    """`count` augmented aligned crops uint8 [count, 3, 112, 112] of one photo."""
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255
    crops = align_faces(image.expand(count, -1, -1, -1), _moved_landmarks(lm5, count, rng, strength))
    brightness = torch.from_numpy(rng.uniform(-0.12, 0.12, (count, 1, 1, 1)) * strength).float()
    contrast = torch.from_numpy(1 + rng.uniform(-0.15, 0.15, (count, 1, 1, 1)) * strength).float()
    gains = torch.from_numpy(1 + rng.uniform(-0.06, 0.06, (count, 3, 1, 1)) * strength).float()
    noise = torch.from_numpy(rng.standard_normal(crops.shape) * 0.015 * strength).float()
    mean = crops.mean(dim=(1, 2, 3), keepdim=True)
    crops = ((crops - mean) * contrast + mean + brightness) * gains + noise
    return (crops.clamp(0, 1) * 255).round().to(torch.uint8)


def identity_set(
    photos_per_identity: int = 8,
    synthetic_identities: int = 8,
    *,
    real: bool = True,
    seed: int = 0,
    strength: float = 1.0,
) -> IdentitySet:
    """The 8 real identities (if `real`) then `synthetic_identities` synthetic ones, each with
    `photos_per_identity` augmented aligned crops; labels in that order, deterministic in `seed`.

    `strength` scales every augmentation (0: identical copies). A different `seed` gives other photos
    of the same identities (the synthetic patterns do not depend on it): use it for held-out photos.
    """
    rng = np.random.default_rng(seed)
    sources: list[tuple[str, np.ndarray, np.ndarray]] = _real_photos() if real else []
    for identity in range(synthetic_identities):
        pattern, lm5 = _synthetic_photo(identity, seed=1234)
        sources.append((f"synthetic_{identity:03d}", pattern, lm5))
    images, labels = [], []
    for label, (_, photo, lm5) in enumerate(sources):
        images.append(_photos_of(photo, lm5, photos_per_identity, rng, strength))
        labels.append(torch.full((photos_per_identity,), label, dtype=torch.int64))
    return IdentitySet(torch.cat(images), torch.cat(labels), [name for name, _, _ in sources])


def verification_pairs(
    faces: IdentitySet, pairs_per_kind: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index pairs (first [P], second [P]) and `same` [P] bool: `pairs_per_kind` same-identity pairs
    (two different photos of one identity) and as many different-identity pairs, seeded."""
    generator = torch.Generator().manual_seed(seed)
    labels = faces.labels
    first, second = [], []
    while len(first) < pairs_per_kind:
        a, b = torch.randint(len(labels), (2,), generator=generator).tolist()
        if a != b and labels[a] == labels[b]:
            first.append(a)
            second.append(b)
    while len(first) < 2 * pairs_per_kind:
        a, b = torch.randint(len(labels), (2,), generator=generator).tolist()
        if labels[a] != labels[b]:
            first.append(a)
            second.append(b)
    same = torch.arange(2 * pairs_per_kind) < pairs_per_kind
    return torch.tensor(first), torch.tensor(second), same
