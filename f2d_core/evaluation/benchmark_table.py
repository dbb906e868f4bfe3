"""Benchmark results: per-image rows -> the paper's Table 1 layout and the best-of-N curve, as markdown.

Columns as in Face2Diffusion's Table 1 with one recogniser: identity, CLIP, dCLIP, and hMean / gMean
of the three per image, averaged (the paper's per-image means: a missed face makes the image's
means 0). The face-found rate and the image count are added.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .best_of_n import BEST_OF_N, best_of_n_curve

Row = Mapping[str, object]
METRICS = ("identity", "clip", "dclip", "hmean", "gmean")
HEADERS = {"identity": "identity", "clip": "CLIP", "dclip": "dCLIP", "hmean": "hMean", "gmean": "gMean"}

# Face2Diffusion, Table 1 (CVPR 2024): three recognisers, CLIP / dCLIP / SigLIP, hMean / gMean of the six.
PAPER_TABLE_1 = """| method | AdaFace | SphereFace | FaceNet | CLIP | dCLIP | SigLIP | hMean | gMean |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| CustomDiffusion | 0.4537 | 0.5624 | 0.6458 | 0.2023 | 0.1490 | 0.2182 | 0.1078 | 0.1700 |
| CelebBasis | 0.1601 | 0.2724 | 0.3762 | 0.2563 | 0.1847 | 0.3624 | 0.1138 | 0.1542 |
| FastComposer | 0.1736 | 0.3271 | 0.4725 | 0.2495 | 0.2149 | 0.3168 | 0.1655 | 0.2120 |
| DreamIdentity | 0.2847 | 0.4252 | 0.5523 | 0.1924 | 0.1463 | 0.1539 | 0.0849 | 0.1326 |
| Face2Diffusion | 0.3143 | 0.4215 | 0.5313 | 0.2486 | 0.2020 | 0.3856 | 0.1749 | 0.2252 |"""


@dataclass(frozen=True)
class SettingSummary:
    """Means of one setting's rows."""

    setting: str
    images: int
    face_found_rate: float
    means: dict[str, float]


def _float(row: Row, key: str) -> float:
    return float(row[key])  # type: ignore[arg-type]


def summarize(rows: Sequence[Row]) -> list[SettingSummary]:
    """One summary per setting, in order of first appearance."""
    by_setting: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_setting[str(row["setting"])].append(row)
    summaries = []
    for setting, group in by_setting.items():
        found = sum(str(r["face_found"]) in ("1", "True", "true") for r in group) / len(group)
        means = {m: sum(_float(r, m) for r in group) / len(group) for m in METRICS}
        summaries.append(SettingSummary(setting, len(group), found, means))
    return summaries


def results_table(summaries: Sequence[SettingSummary]) -> str:
    """Markdown table: one row per setting, the paper's Table 1 columns (one recogniser, no SigLIP)."""
    head = ["setting", *(HEADERS[m] for m in METRICS), "faces found", "images"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for s in summaries:
        cells = [s.setting, *(f"{s.means[m]:.4f}" for m in METRICS), f"{100 * s.face_found_rate:.0f}%", str(s.images)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_of_n_by_setting(rows: Sequence[Row], ns: Sequence[int] = BEST_OF_N) -> dict[str, dict[int, float]]:
    """Per setting, N -> expected hMean of the best of N images by hMean (groups: one face x one prompt)."""
    groups: dict[str, dict[tuple[str, str], list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        groups[str(row["setting"])][(str(row["face"]), str(row["prompt_index"]))].append(_float(row, "hmean"))
    return {
        setting: best_of_n_curve([(scores, scores) for scores in by_group.values()], ns)
        for setting, by_group in groups.items()
    }


def best_of_n_table(curves: Mapping[str, Mapping[int, float]], ns: Sequence[int] = BEST_OF_N) -> str:
    """Markdown table of best-of-N hMean, one row per setting; '—' where a group has fewer than N images."""
    head = ["setting", *(f"N={n}" for n in ns)]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for setting, curve in curves.items():
        lines.append("| " + " | ".join([setting, *(f"{curve[n]:.4f}" if n in curve else "—" for n in ns)]) + " |")
    return "\n".join(lines)
