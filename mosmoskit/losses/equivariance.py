"""Maps that move with the image: an equivariance consistency loss for the tag head's pixels.

A map that finds the organ moves when the image moves. One that leans on absolute position (the
"organ is usually here" shortcut a position encoding allows) stays put. The loss below shows the
network the same images twice, once moved by a random rotation, zoom and shift, and asks that the
pixel class probabilities of the moved image equal those of the original, moved the same way:

    p(move(x)) == move(p(x))

Both sides carry gradients (neither view is the teacher). Pixels whose moved position falls outside
the original image are not compared: nothing says what the original saw there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["equivariance_loss", "move_by_theta", "random_moves"]


def random_moves(
    batch: int,
    image_size: Sequence[int],
    max_shift: float,
    max_rotation_deg: float,
    max_scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random 2D moves as ``affine_grid`` matrices (B, 2, 3).

    Args:
        batch: B.
        image_size: (H, W) of the images, to turn ``max_shift`` pixels into grid units.
        max_shift: shifts are uniform in +-this many pixels per axis.
        max_rotation_deg: rotations are uniform in +-this many degrees.
        max_scale: zooms are uniform in 1 +- this.
        generator: for reproducible moves.

    Raises:
        ValueError: not a 2D size, negative ranges, or ``max_scale`` outside [0, 1).
    """
    if len(image_size) != 2:
        raise ValueError(f"random_moves makes 2D moves; got image_size {tuple(image_size)}")
    if min(max_shift, max_rotation_deg) < 0 or not 0.0 <= max_scale < 1.0:
        raise ValueError(f"moves need max_shift >= 0, max_rotation_deg >= 0 and max_scale in [0, 1), got "
                         f"{max_shift!r}, {max_rotation_deg!r}, {max_scale!r}")
    u = torch.rand(batch, 4, generator=generator) * 2 - 1  # uniform in [-1, 1]
    angle = u[:, 0] * math.radians(max_rotation_deg)
    scale = 1.0 + u[:, 1] * max_scale
    # affine_grid's coordinates run from -1 to 1 across the image: a pixel is 2 / size of them.
    shift = torch.stack([u[:, 2] * 2 * max_shift / image_size[1], u[:, 3] * 2 * max_shift / image_size[0]], dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)


def move_by_theta(x: torch.Tensor, theta: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Resample (B, C, H, W) ``x`` with ``affine_grid`` matrices ``theta`` (B, 2, 3); outside is 0."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def equivariance_loss(
    pixel_logits: torch.Tensor, moved_pixel_logits: torch.Tensor, theta: torch.Tensor, grid: Sequence[int]
) -> dict[str, torch.Tensor]:
    """Mean squared difference between the moved image's pixel probabilities and the moved originals'.

    Args:
        pixel_logits: (B, C, N) class scores of the original images' pixels (``TagHeadOutput.pixel_logits``).
        moved_pixel_logits: (B, C, N) the same for the images moved by ``theta``.
        theta: (B, 2, 3) the moves (:func:`random_moves`) that made the moved images.
        grid: the 2D grid (h, w) of the N pixels.

    Returns:
        ``{"equivariance": loss}``: the squared difference of the class probabilities summed over
        classes, averaged over the pixels whose moved position lies inside the original image.

    Raises:
        ValueError: shapes that do not match.
    """
    grid = tuple(int(g) for g in grid)
    if (pixel_logits.shape != moved_pixel_logits.shape or pixel_logits.ndim != 3 or len(grid) != 2
            or math.prod(grid) != pixel_logits.shape[2] or theta.shape != (pixel_logits.shape[0], 2, 3)):
        raise ValueError(f"equivariance_loss expects two (B, C, N) logits of one shape, N = prod of a 2D grid and "
                         f"theta (B, 2, 3); got {tuple(pixel_logits.shape)}, {tuple(moved_pixel_logits.shape)}, "
                         f"grid {grid}, theta {tuple(theta.shape)}")
    batch, classes = pixel_logits.shape[:2]
    probs = pixel_logits.float().softmax(dim=1).reshape(batch, classes, *grid)
    moved_probs = moved_pixel_logits.float().softmax(dim=1).reshape(batch, classes, *grid)
    target = move_by_theta(probs, theta)
    inside = move_by_theta(torch.ones_like(probs[:, :1]), theta) > 0.999
    difference = (moved_probs - target).pow(2).sum(dim=1, keepdim=True)
    count = inside.sum().clamp_min(1)
    return {"equivariance": (difference * inside).sum() / count}
