"""The paper's Fig. 4: how well each tapped layer of an identity encoder tells faces apart.

For every pair of a verification set, the cosine similarity of the two faces' features at each tapped
layer (the CLS token after the block, through that scale's `norms.layer_i`: BatchNorm then LayerNorm,
exactly the slice of v_id the mapper reads) and of the concatenated v_id; per layer, the verification
AUC and best-threshold accuracy (metrics.py) and the same/different cosine histograms.

Layers are named as the paper counts them: the tap after 0-based block b is "layer b+1", so the
official taps 2, 5, 8, 11 are layers 3, 6, 9, 12.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F

from ...atomic_io import atomic_write
from ...errors import DatasetError
from ...evaluation.plots import contact_sheet, similarity_histogram_plot
from ...identity.msid_encoder import MSIDEncoder
from ..trainer import to_encoder_input
from .metrics import VerificationResult, verification_metrics
from .pairs import VerificationSet

log = logging.getLogger(__name__)

CONCATENATED = "v_id"
# Sec. 3.2 / Fig. 4 of the paper: verification AUC (%) of the features at a depth, by how the ViT was trained.
# Layer 3: plain ArcFace 93.99, MSID 99.46; the deepest layer (12): 99.97.
PAPER_AUC = {"layer 3": {"ArcFace": 93.99, "MSID": 99.46}, "layer 12": {"MSID": 99.97}}


@dataclass
class LayerResult:
    """One layer's verification: `name` ("layer 3" or "v_id"), metrics, and the pairs' cosines by kind."""

    name: str
    metrics: VerificationResult
    same_scores: torch.Tensor  # float32 [S]
    different_scores: torch.Tensor  # float32 [D]


def layer_names(encoder: MSIDEncoder) -> list[str]:
    """'layer b+1' for each tapped block b, then 'v_id'."""
    return [f"layer {b + 1}" for b in encoder.tap_blocks] + [CONCATENATED]


@torch.no_grad()
def layer_features(
    encoder: MSIDEncoder,
    faces: torch.Tensor,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """v_id float32 [M, taps * width] (CPU) of aligned faces uint8 [M, 3, 112, 112] RGB.

    The encoder is moved to `device` and runs in eval mode (BatchNorm running statistics), under autocast
    to `dtype` when it is not float32, `batch_size` faces at a time; its train/eval mode is restored.
    Tap k's features are columns k*width..(k+1)*width.
    """
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval().to(device)
    out = []
    try:
        for start in range(0, len(faces), batch_size):
            x = to_encoder_input(faces[start : start + batch_size].to(device, non_blocking=True), None)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                out.append(encoder(x).float().cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.empty(0, encoder.embed_dim * len(encoder.tap_blocks))


def analyse_layers(
    encoder: MSIDEncoder,
    pairs: VerificationSet,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[LayerResult]:
    """Verification per tapped layer and for the concatenated v_id, in `layer_names` order.

    Each face of `pairs` is encoded once (`layer_features`); a pair's score is the cosine similarity of
    its two faces' features.

    Raises:
        DatasetError: the set lacks same-identity or different-identity pairs (AUC is undefined).
    """
    n_same = int(pairs.same.sum())
    if n_same in (0, len(pairs)):
        raise DatasetError(
            f"{pairs.source} has {n_same} same-identity and {len(pairs) - n_same} different-identity pairs: "
            "verification needs both."
        )
    features = layer_features(encoder, pairs.faces, batch_size, device, dtype)
    width = encoder.embed_dim
    columns = [slice(k * width, (k + 1) * width) for k in range(len(encoder.tap_blocks))]
    columns.append(slice(0, features.shape[1]))
    results = []
    for name, cols in zip(layer_names(encoder), columns, strict=True):
        scores = F.cosine_similarity(features[pairs.first, cols], features[pairs.second, cols], dim=-1)
        metrics = verification_metrics(scores, pairs.same)
        results.append(LayerResult(name, metrics, scores[pairs.same], scores[~pairs.same]))
        log.info(
            "%s: AUC %.2f %%, accuracy %.2f %% (best threshold), %s (10-fold)",
            name,
            100 * metrics.auc,
            100 * metrics.accuracy,
            folded_text(metrics),
        )
    return results


def folded_text(metrics: VerificationResult) -> str:
    """insightface's 10-fold accuracy as "99.50 +- 0.30 %" (mean +- std over the folds), or "n/a" under 10 pairs."""
    folded = metrics.folded
    return "n/a" if folded is None else f"{100 * folded.mean:.2f} +- {100 * folded.std:.2f} %"


def layer_table(results: dict[str, list[LayerResult]], pairs_source: str) -> str:
    """A markdown table: a row per layer, AUC, best-threshold accuracy and insightface's 10-fold accuracy (%,
    mean +- std) per encoder, then the paper's AUCs.

    `results` maps an encoder's name to its `analyse_layers` output. The paper's column holds a value
    only for the layers it reports (its ViT-S encoders, its verification set): compare shapes, not digits.
    """
    names = list(results)
    rows = list(dict.fromkeys(r.name for layers in results.values() for r in layers))
    paper_kinds = list(dict.fromkeys(kind for values in PAPER_AUC.values() for kind in values))
    header = ["layer"]
    for name in names:
        header += [f"{name} AUC %", f"{name} acc. %", f"{name} 10-fold acc. %"]
    header += [f"paper {kind} AUC %" for kind in paper_kinds]
    lines = [
        f"Verification on {pairs_source}: cosine similarity of each pair's features per tapped layer "
        "(layer = the paper's 1-based depth) and of the concatenated v_id.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
    ]
    for row in rows:
        cells = [row]
        for name in names:
            found = [r for r in results[name] if r.name == row]
            m = found[0].metrics if found else None
            cells += (
                [f"{100 * m.auc:.2f}", f"{100 * m.accuracy:.2f}", folded_text(m).removesuffix(" %")]
                if m
                else ["", "", ""]
            )
        cells += [str(PAPER_AUC.get(row, {}).get(kind, "")) for kind in paper_kinds]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()), [])
    if first:
        m = first[0].metrics
        lines += ["", f"{m.same_pairs} same-identity and {m.different_pairs} different-identity pairs."]
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_layer_plots(name: str, layers: list[LayerResult], out_dir: Path) -> list[Path]:
    """One histogram PNG per layer (`<name>_<layer>.png`) and all of them on a grid of three columns
    (`<name>_layers.png`)."""
    out_dir = Path(out_dir)
    paths = []
    for layer in layers:
        m = layer.metrics
        paths.append(
            similarity_histogram_plot(
                layer.same_scores.tolist(),
                layer.different_scores.tolist(),
                out_dir / f"{_slug(name)}_{_slug(layer.name)}.png",
                title=f"{name}: {layer.name}",
                note=f"AUC {100 * m.auc:.2f} %, accuracy {100 * m.accuracy:.2f} %",
                threshold=m.threshold,
            )
        )
    panels = []
    for path in paths:
        with Image.open(path) as image:
            panels.append(image.convert("RGB"))
    sheet = contact_sheet(panels)
    sheet_path = out_dir / f"{_slug(name)}_layers.png"
    atomic_write(sheet_path, lambda tmp: sheet.save(tmp, format="PNG", optimize=True))
    return [*paths, sheet_path]
