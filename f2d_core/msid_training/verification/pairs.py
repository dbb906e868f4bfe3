"""Face pairs for verification: the set a .bin file holds, or pairs drawn (seeded) from labelled faces.

A verification set is a stack of aligned faces and pairs of indices into it, each pair marked "same
identity" or not. insightface's `.bin` files give the pairs as consecutive images (bin_file.py); a held-out
identity folder gives labels, from which `draw_pairs` draws as many same-identity pairs as
different-identity ones, deterministically for a seed, each unordered pair at most once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import DatasetError

ENUMERATE_UP_TO = 1_000_000  # sets with at most this many unordered pairs are enumerated, larger ones sampled


@dataclass
class VerificationSet:
    """Aligned faces uint8 [M, 3, 112, 112] RGB and N pairs: `first`, `second` int64 [N] index `faces`;
    `same` bool [N] is True where the two show one identity. `source` names where it came from."""

    faces: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    same: torch.Tensor
    source: str

    def __len__(self) -> int:
        return len(self.same)


def balanced_pair_subset(same: torch.Tensor, max_pairs: int, seed: int = 0) -> torch.Tensor:
    """Indices (int64, ascending) of at most `max_pairs` pairs: half same, half different where both suffice.

    Seeded and independent of anything but `same` [N] bool, `max_pairs` and `seed`. Used to score a
    part of a large set (LFW's 6000 pairs) on a CPU; when `max_pairs` >= N every pair is kept.
    Raises DatasetError when `max_pairs` < 2 (one pair of each kind is the least that can be scored).
    """
    if max_pairs < 2:
        raise DatasetError(f"at least 2 pairs (one of each kind) are needed to score verification, not {max_pairs}")
    if max_pairs >= len(same):
        return torch.arange(len(same))
    generator = torch.Generator().manual_seed(seed)
    kinds = [torch.nonzero(same).flatten(), torch.nonzero(~same).flatten()]
    half = max_pairs // 2
    take_same = min(len(kinds[0]), max(half, max_pairs - len(kinds[1])))
    take = [take_same, max_pairs - take_same]
    picked = [kind[torch.randperm(len(kind), generator=generator)[:n]] for kind, n in zip(kinds, take, strict=True)]
    return torch.sort(torch.cat(picked)).values


def _possible_pairs(labels: torch.Tensor) -> tuple[int, int]:
    """(same-identity, different-identity) unordered pairs of distinct images."""
    _, counts = torch.unique(labels, return_counts=True)
    same = int((counts * (counts - 1) // 2).sum())
    return same, len(labels) * (len(labels) - 1) // 2 - same


def _enumerated(labels: torch.Tensor, want_same: bool, count: int, generator: torch.Generator):
    a, b = torch.triu_indices(len(labels), len(labels), offset=1)
    keep = (labels[a] == labels[b]) == want_same
    a, b = a[keep], b[keep]
    pick = torch.randperm(len(a), generator=generator)[:count]
    return a[pick], b[pick]


def _sampled(labels: torch.Tensor, want_same: bool, count: int, generator: torch.Generator):
    """Rejection sampling of distinct unordered pairs (uniform over pairs of the kind), in draw order."""
    n = len(labels)
    order = torch.argsort(labels, stable=True)
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    pair_weights = (counts * (counts - 1)).double()
    chosen: dict[tuple[int, int], None] = {}
    while len(chosen) < count:
        batch = 4 * (count - len(chosen)) + 64
        if want_same:  # an identity weighted by its pairs, then two of its photos
            ident = torch.multinomial(pair_weights, batch, replacement=True, generator=generator)
            size = counts[ident]
            i = (torch.rand(batch, generator=generator) * size).long()
            j = (torch.rand(batch, generator=generator) * (size - 1)).long()
            j = j + (j >= i).long()  # a second photo, never the first
            a, b = order[starts[ident] + i], order[starts[ident] + j]
        else:
            a = torch.randint(n, (batch,), generator=generator)
            b = torch.randint(n, (batch,), generator=generator)
            ok = labels[a] != labels[b]
            a, b = a[ok], b[ok]
        for x, y in zip(torch.minimum(a, b).tolist(), torch.maximum(a, b).tolist(), strict=True):
            if len(chosen) == count:
                break
            chosen.setdefault((x, y))
    pairs = torch.tensor(list(chosen), dtype=torch.int64)
    return pairs[:, 0], pairs[:, 1]


def draw_pairs(
    labels: torch.Tensor, pairs_per_kind: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`pairs_per_kind` same-identity then as many different-identity pairs of distinct images.

    Args:
        labels: int [M], the identity of each face.
        pairs_per_kind: pairs of each kind (>= 1).
        seed: the same labels, count and seed always give the same pairs.

    Returns:
        (first, second) int64 [2P] indices into the faces (first < second, no pair twice) and
        `same` bool [2P] (True for the first P).

    Raises:
        DatasetError: the labels allow fewer than `pairs_per_kind` pairs of a kind (too few identities
        or too few photos per identity); the message gives both counts.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).flatten().cpu()
    if pairs_per_kind < 1:
        raise DatasetError(f"the number of pairs of each kind must be at least 1, not {pairs_per_kind}")
    possible_same, possible_different = _possible_pairs(labels)
    if min(possible_same, possible_different) < pairs_per_kind:
        raise DatasetError(
            f"{len(labels)} faces of {len(torch.unique(labels))} identities allow {possible_same} same-identity "
            f"and {possible_different} different-identity pairs, fewer than the {pairs_per_kind} of each asked "
            "for: ask for fewer pairs, or hold out more identities (at least two photos each)."
        )
    generator = torch.Generator().manual_seed(seed)
    small = len(labels) * (len(labels) - 1) // 2 <= ENUMERATE_UP_TO
    draw = _enumerated if small else _sampled
    same_a, same_b = draw(labels, True, pairs_per_kind, generator)
    diff_a, diff_b = draw(labels, False, pairs_per_kind, generator)
    same = torch.arange(2 * pairs_per_kind) < pairs_per_kind
    return torch.cat([same_a, diff_a]), torch.cat([same_b, diff_b]), same


def pairs_available(labels: torch.Tensor) -> int:
    """How many pairs of each kind `draw_pairs` can draw from these labels: the smaller of the number of
    same-identity and of different-identity pairs of distinct faces (0 when one kind is impossible).

    `labels`: int [M], the identity of each face.
    """
    return min(_possible_pairs(torch.as_tensor(labels, dtype=torch.int64).flatten().cpu()))


def pairs_from_dataset(dataset, pairs_per_kind: int, seed: int = 0) -> VerificationSet:
    """A VerificationSet of `draw_pairs(dataset.labels, ...)`, holding only the faces the pairs use.

    `dataset` is shaped as `FaceRecognitionDataset`: `labels` int [M], `__getitem__(i) -> (uint8
    [3, 112, 112], label)`, `source`. Raises DatasetError as `draw_pairs`, or for a face of another shape.
    """
    first, second, same = draw_pairs(dataset.labels, pairs_per_kind, seed)
    used, inverse = torch.unique(torch.cat([first, second]), return_inverse=True)
    faces = []
    for index in used.tolist():
        face = dataset[index][0]
        if face.dtype != torch.uint8 or tuple(face.shape) != (3, 112, 112):
            raise DatasetError(
                f"{getattr(dataset, 'source', 'the dataset')}: face {index} is {face.dtype} "
                f"{tuple(face.shape)}, not uint8 (3, 112, 112)"
            )
        faces.append(face)
    return VerificationSet(
        faces=torch.stack(faces),
        first=inverse[: len(first)],
        second=inverse[len(first) :],
        same=same,
        source=f"{getattr(dataset, 'source', 'dataset')} ({pairs_per_kind} + {pairs_per_kind} pairs, seed {seed})",
    )
