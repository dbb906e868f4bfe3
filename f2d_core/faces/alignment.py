"""Align faces: a 4-parameter similarity fit of five landmarks onto the ArcFace template, then a warp."""

from __future__ import annotations

import torch
from kornia.geometry.transform import warp_affine

# ArcFace 112x112 template: eye, eye, nose tip, mouth corner, mouth corner (x, y in pixels).
ARCFACE_TEMPLATE_112 = torch.tensor(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (scale, rotation, translation; no reflection) mapping src onto dst.

    Umeyama's closed form (Umeyama 1991, eq. 40-42), batched: src [B, N, 2], dst [N, 2] or [B, N, 2]
    (any device, any dtype) -> [B, 2, 3] float32 on the CPU, the affine matrix in pixel coordinates
    (as skimage's `SimilarityTransform.params[:2]`). The fit always runs in float64 on the CPU: it is
    a few hundred flops, and accelerators may lack float64 (Apple's MPS has none) or `linalg.svd`.
    """
    src64 = src.detach().to("cpu", torch.float64)
    dst64 = dst.detach().to("cpu", torch.float64).expand_as(src64)
    src_mean, dst_mean = src64.mean(dim=1, keepdim=True), dst64.mean(dim=1, keepdim=True)
    src_c, dst_c = src64 - src_mean, dst64 - dst_mean
    cov = dst_c.transpose(1, 2) @ src_c / src.shape[1]  # [B, 2, 2]
    u, s, vh = torch.linalg.svd(cov)
    reflect = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    d = torch.stack([torch.ones_like(reflect), reflect], dim=-1)  # [B, 2]
    rotation = u @ torch.diag_embed(d) @ vh
    scale = (s * d).sum(-1) / src_c.pow(2).sum(dim=(1, 2)).div(src.shape[1])
    linear = scale[:, None, None] * rotation
    translation = dst_mean.transpose(1, 2) - linear @ src_mean.transpose(1, 2)
    return torch.cat([linear, translation], dim=2).to(torch.float32)


def align_faces(images: torch.Tensor, landmarks: torch.Tensor, size: int = 112) -> torch.Tensor:
    """Aligned crops [B, 3, size, size] float32 in [0, 1] from images [B, 3, H, W] in [0, 1] and landmarks [B, 5, 2].

    The landmark fit runs on the CPU in float64 (`similarity_transform`); only the [B, 2, 3] matrix
    goes to the images' device. The warp runs in float32 whatever the images' dtype: a half-precision
    sampling grid is off by pixels on large photos (bf16 keeps 8 bits of a coordinate) and older
    kornia returns NaN for it on the CPU. Bilinear, black border, pixel centres at integer
    coordinates (as cv2.warpAffine).
    """
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    matrix = similarity_transform(landmarks, template).to(images.device)
    return warp_affine(
        images.float(), matrix, dsize=(size, size), mode="bilinear", padding_mode="zeros", align_corners=True
    )


def to_msid_input(crops: torch.Tensor) -> torch.Tensor:
    """[0, 1] crops -> the encoder's [-1, 1] range: `(x - 0.5) / 0.5`."""
    return (crops - 0.5) / 0.5
