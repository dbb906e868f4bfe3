"""The pictures the bundled workflows' Load Image nodes show in screenshots and thumbnails: drawn here.

No photo (from another package or anywhere else) may appear in a committed thumbnail, so the export
uploads these, under workflow_files.PLACEHOLDER_FILES: a flat cartoon face labelled "your photo", the
same face surprised, a template card whose face area is transparent (LoadImage's mask), and an OpenPose
stick figure. Everything is drawn with PIL from code; nothing is read from a file.
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from tests.support.workflow_files import pose_image

SIZE = 512
SKIN, HAIR, INK, SHIRT = (236, 196, 164), (92, 64, 46), (40, 40, 48), (70, 92, 124)

Box = tuple[float, float, float, float]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font (no file), at `size` when FreeType is there."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _gradient(top: tuple[int, int, int], bottom: tuple[int, int, int], mode: str = "RGB") -> Image.Image:
    """A vertical gradient card."""
    image = Image.new(mode, (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.line((0, y, SIZE, y), fill=colour + ((255,) if mode == "RGBA" else ()))
    return image


def _label(draw: ImageDraw.ImageDraw, text: str, box: Box, size: int = 40) -> None:
    """White rounded label with centred dark text."""
    draw.rounded_rectangle(box, radius=18, fill=(255, 255, 255), outline=INK, width=3)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    draw.text((cx, cy), text, fill=INK, font=_font(size), anchor="mm")


def _head_and_shoulders(
    draw: ImageDraw.ImageDraw, expression: str, shirt: tuple[int, int, int] = SHIRT, hair: tuple[int, int, int] = HAIR
) -> None:
    """A flat cartoon person: shoulders, neck, head, hair and a `neutral` or `surprised` face."""
    draw.ellipse((86, 370, 426, 700), fill=shirt)
    draw.rectangle((226, 300, 286, 390), fill=SKIN)
    draw.ellipse((166, 110, 346, 330), fill=SKIN, outline=INK, width=3)
    draw.chord((158, 92, 354, 262), start=180, end=360, fill=hair)
    eye = 12 if expression == "surprised" else 8
    brow = 178 if expression == "surprised" else 190
    for x in (215, 297):
        draw.ellipse((x - eye, 210 - eye, x + eye, 210 + eye), fill=INK)
        draw.line((x - 20, brow, x + 20, brow - 4), fill=HAIR, width=6)
    draw.line((256, 222, 246, 258, 260, 260), fill=INK, width=3)
    if expression == "surprised":
        draw.ellipse((236, 272, 276, 312), fill=(150, 40, 50), outline=INK, width=3)
    else:
        draw.arc((216, 250, 296, 300), start=20, end=160, fill=(170, 50, 60), width=5)


def face_placeholder() -> Image.Image:
    """A cartoon head and shoulders on a pale blue card, labelled "your photo"."""
    image = _gradient((223, 232, 241), (190, 207, 226))
    draw = ImageDraw.Draw(image)
    _head_and_shoulders(draw, "neutral")
    _label(draw, "your photo", (116, 420, 396, 484))
    return image


def second_face_placeholder() -> Image.Image:
    """Another cartoon person (blond, red shirt) on a pale pink card, labelled "2nd person"."""
    image = _gradient((244, 226, 230), (226, 196, 204))
    draw = ImageDraw.Draw(image)
    _head_and_shoulders(draw, "neutral", shirt=(160, 60, 60), hair=(210, 170, 90))
    _label(draw, "2nd person", (116, 420, 396, 484))
    return image


def group_template_placeholder() -> Image.Image:
    """A template card with two cartoon people side by side (the faces F2D Face Masks finds)."""
    image = _gradient((214, 226, 214), (170, 190, 170))
    for x, (shirt, hair) in ((0, (SHIRT, HAIR)), (SIZE // 2, ((160, 60, 60), (210, 170, 90)))):
        person = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
        _head_and_shoulders(ImageDraw.Draw(person), "neutral", shirt=shirt, hair=hair)
        half = person.resize((SIZE // 2, SIZE // 2))
        image.paste(half, (x, SIZE // 2 - 40), half)
    _label(ImageDraw.Draw(image), "group template", (116, 40, 396, 104), size=36)
    return image


def expression_placeholder() -> Image.Image:
    """The cartoon, surprised, on a pale yellow card, labelled "expression photo"."""
    image = _gradient((248, 240, 214), (232, 214, 170))
    draw = ImageDraw.Draw(image)
    _head_and_shoulders(draw, "surprised")
    _label(draw, "expression photo", (76, 420, 436, 484), size=36)
    return image


def template_placeholder() -> Image.Image:
    """A template card (suit, collar) whose oval face area is transparent: LoadImage's mask (1 - alpha)."""
    image = _gradient((214, 226, 214), (170, 190, 170), "RGBA")
    draw = ImageDraw.Draw(image)
    draw.ellipse((66, 360, 446, 720), fill=(42, 52, 74, 255))
    draw.polygon((206, 372, 256, 452, 306, 372), fill=(245, 245, 245, 255))
    draw.rectangle((226, 300, 286, 380), fill=(200, 200, 200, 255))
    _label(draw, "template", (156, 24, 356, 84))
    ImageDraw.Draw(image).ellipse((166, 110, 346, 330), fill=(0, 0, 0, 0))  # the masked face
    return image


def placeholder_images() -> dict[str, Image.Image]:
    """One drawn picture per LoadImage role (the keys of workflow_files.PLACEHOLDER_FILES), 512×512."""
    return {
        "face": face_placeholder(),
        "expression": expression_placeholder(),
        "template": template_placeholder(),
        "pose": pose_image(SIZE),
        "face_2": second_face_placeholder(),
        "group_template": group_template_placeholder(),
    }
