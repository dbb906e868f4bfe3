"""Where each person of a several-people image goes: layout masks, and checks of the masks a user gives.

Masks are ComfyUI MASKs: float tensors [N, H, W] in [0, 1] at the image's pixel size. A person's
conditioning carries one of them [1, H, W]; the sampler resizes it to the latent (bilinear) and weighs
that person's prediction by mask x strength, so each person's S* acts only inside their region.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ..errors import F2DError

LATENT_SCALE = 8  # SD1.x VAE: one latent pixel is 8 x 8 image pixels
# A mask whose width/height ratio is within 2% of the image's is resized to it (hand-painted masks a few
# pixels off); any other shape is refused rather than stretched.
MASK_ASPECT_TOLERANCE = 0.02
MAX_PEOPLE = 4
# layout name -> (rows, columns); regions are numbered row by row, left to right.
LAYOUTS: dict[str, tuple[int, int]] = {
    "left/right halves": (1, 2),
    "thirds (left to right)": (1, 3),
    "2x2 grid": (2, 2),
}


class RegionError(F2DError):
    """A region mask cannot be used for a person (wrong size, empty, missing)."""


def _spans(cells: int, length: int, overlap: float) -> list[tuple[int, int]]:
    """[start, end) pixel spans of `cells` equal cells along `length`, each widened by overlap x cell size per side."""
    cell = length / cells
    grow = overlap * cell
    return [(max(0, round(i * cell - grow)), min(length, round((i + 1) * cell + grow))) for i in range(cells)]


def layout_masks(layout: str, height: int, width: int, overlap: float = 0.0) -> torch.Tensor:
    """One mask per region of `layout` (see LAYOUTS): float32 [N, height, width], 1 inside, 0 outside.

    overlap: how far each region reaches into its neighbours, as a fraction of a cell's size (0 to 0.5);
    where regions overlap, the sampler averages the people's predictions there.
    Raises RegionError for an unknown layout or an overlap outside [0, 0.5].
    """
    if layout not in LAYOUTS:
        raise RegionError(f"Unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    if not 0.0 <= overlap <= 0.5:
        raise RegionError(f"overlap {overlap} must be between 0 (regions touch) and 0.5 (half a region).")
    rows, cols = LAYOUTS[layout]
    masks = torch.zeros(rows * cols, height, width)
    for r, (y0, y1) in enumerate(_spans(rows, height, overlap)):
        for c, (x0, x1) in enumerate(_spans(cols, width, overlap)):
            masks[r * cols + c, y0:y1, x0:x1] = 1.0
    return masks


def person_mask(masks: torch.Tensor, person: int, latent_size: tuple[int, int], source: str = "masks") -> torch.Tensor:
    """Mask number `person` (1-based) of a MASK batch, checked against the latent: float32 [1, H, W].

    masks: [N, H, W] or [H, W]; latent_size: (height, width) of the latent in latent pixels.
    A mask fits when it is the latent's image size (H // 8, W // 8 equal the latent's, so the photo a
    latent was encoded from fits) or the latent's own size. A mask of another size with the image's aspect
    ratio (within `MASK_ASPECT_TOLERANCE`, e.g. a 1023x1023 hand-painted mask for a 1024x1024 image) is
    resized bilinearly to the image size, as core's ConditioningSetMask would stretch it while sampling.
    Raises RegionError naming the person when there is no mask `person`, its shape does not fit (another
    aspect ratio), or it is empty (all zero).
    """
    if masks.ndim == 2:
        masks = masks.unsqueeze(0)
    if masks.ndim != 3:
        raise RegionError(f"{source}: expected a MASK [N, H, W], got a tensor of shape {list(masks.shape)}.")
    count = masks.shape[0]
    if not 1 <= person <= count:
        raise RegionError(
            f"Person {person} has no region: {source} holds {count} mask(s) (people 1 to {count}). Choose a layout "
            f"with more regions (up to {MAX_PEOPLE} people), or give one mask per person."
        )
    mask = masks[person - 1 : person].float()
    height, width = mask.shape[-2:]
    latent_h, latent_w = latent_size
    fits_image = (height // LATENT_SCALE, width // LATENT_SCALE) == (latent_h, latent_w)
    same_aspect = abs((width / height) / (latent_w / latent_h) - 1.0) <= MASK_ASPECT_TOLERANCE
    if not (fits_image or (height, width) == (latent_h, latent_w)) and same_aspect:
        size = (latent_h * LATENT_SCALE, latent_w * LATENT_SCALE)
        mask = F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    elif not (fits_image or (height, width) == (latent_h, latent_w)):
        raise RegionError(
            f"Person {person}'s mask is {width}x{height} pixels, but the latent is for a "
            f"{latent_w * LATENT_SCALE}x{latent_h * LATENT_SCALE} image, another shape: make the mask at the image "
            f"size (e.g. F2D Region Layout on the same latent), or scale it to that size."
        )
    if not bool((mask > 0).any()):
        raise RegionError(
            f"Person {person}'s mask ({source}, mask {person} of {count}) is empty (all zero), so this person "
            f"would appear nowhere: paint the person's region, or pick another mask."
        )
    return mask.clamp(0.0, 1.0)


Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels


def face_box_regions(boxes: list[Box], height: int, width: int, grow: float = 0.5) -> torch.Tensor:
    """One mask per face box, ordered left to right by box centre: float32 [N, height, width].

    grow: how far each mask reaches beyond its box on every side, as a fraction of the box's size (hair,
    ears and neck lie outside a detector's box; 0 = the box itself). Raises RegionError for no boxes or a
    negative grow.
    """
    if grow < 0:
        raise RegionError(f"grow {grow} must be 0 (the face box) or more.")
    if not boxes:
        raise RegionError(
            "No face found in the image, so there is no region to put a person in: use a photo where the faces "
            "are clearly visible and roughly frontal, or give the regions as masks."
        )
    ordered = sorted(boxes, key=lambda box: ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
    masks = torch.zeros(len(ordered), height, width)
    for i, (x1, y1, x2, y2) in enumerate(ordered):
        dx, dy = grow * (x2 - x1), grow * (y2 - y1)
        left, top = max(0, round(x1 - dx)), max(0, round(y1 - dy))
        right, bottom = min(width, round(x2 + dx)), min(height, round(y2 + dy))
        masks[i, top:bottom, left:right] = 1.0
    return masks
