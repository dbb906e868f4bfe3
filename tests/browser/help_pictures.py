"""Pictures of the nodes' help pages (js/docs/images/), drawn or produced here: never a photo.

`encode_face_alignment` runs the pack's own alignment (f2d_core.faces.alignment.align_faces, the one
Encode Face uses) on the drawn "your photo" placeholder of placeholders.py, whose five landmarks are
known from how it is drawn. The loss plot is made by the F2D Loss Graph node on a real training run of
the tiny test model (test_help_pages.py, F2D_EXPORT_HELP_PICTURES=1).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from f2d_core.faces.alignment import align_faces
from tests.browser.placeholders import INK, SIZE, _font, face_placeholder

# The placeholder's eyes, nose tip and mouth corners (insightface's order), from how placeholders.py draws
# them: eyes at (215, 210) and (297, 210), the nose line ending at (246, 258), the mouth arc's ends at
# 20 and 160 degrees of the ellipse (216, 250, 296, 300).
PLACEHOLDER_LANDMARKS = np.array([[215, 210], [297, 210], [248, 257], [218.4, 283.6], [293.6, 283.6]], dtype=np.float32)
CROP_ZOOM = 3  # the 112 px crop is shown 3x, nearest-neighbour, so its pixels stay visible


def aligned_crop(photo: Image.Image, landmarks: np.ndarray) -> Image.Image:
    """The 112x112 crop Encode Face makes of `photo` from its five landmarks."""
    image = torch.from_numpy(np.asarray(photo.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    crop = align_faces(image, torch.from_numpy(landmarks)[None])[0]
    return Image.fromarray((crop.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def encode_face_alignment() -> Image.Image:
    """The placeholder photo with its five landmarks, an arrow, and the aligned crop, labelled."""
    photo = face_placeholder()
    crop = aligned_crop(photo, PLACEHOLDER_LANDMARKS).resize((112 * CROP_ZOOM,) * 2, Image.Resampling.NEAREST)
    width = SIZE + 120 + crop.width + 40
    canvas = Image.new("RGB", (width, SIZE + 60), (250, 250, 250))
    marked = photo.copy()
    draw = ImageDraw.Draw(marked)
    for x, y in PLACEHOLDER_LANDMARKS:
        draw.ellipse((x - 7, y - 7, x + 7, y + 7), outline=(220, 30, 30), width=3)
    canvas.paste(marked, (20, 20))
    top = 20 + (SIZE - crop.height) // 2
    canvas.paste(crop, (SIZE + 100, top))
    draw = ImageDraw.Draw(canvas)
    arrow_y = 20 + SIZE // 2
    draw.line((SIZE + 30, arrow_y, SIZE + 85, arrow_y), fill=INK, width=5)
    draw.polygon([(SIZE + 90, arrow_y), (SIZE + 75, arrow_y - 12), (SIZE + 75, arrow_y + 12)], fill=INK)
    font = _font(22)
    draw.text((20 + SIZE // 2, SIZE + 40), "photo + its 5 landmarks", fill=INK, font=font, anchor="mm")
    label = "aligned 112 x 112 crop (what MSID reads)"
    draw.text((SIZE + 100 + crop.width // 2, top + crop.height + 24), label, fill=INK, font=font, anchor="mm")
    return canvas
