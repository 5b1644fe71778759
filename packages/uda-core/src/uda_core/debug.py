"""Debug pictures: a grid with one row per sample and one column per panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from uda_core.augment import IMAGENET_MEAN, IMAGENET_STD
from uda_core.checkpoint import atomic_write_bytes


def _to_rgb(panel: torch.Tensor, palette: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """B x 3 x H x W normalised images, B x H x W label maps or float maps -> B x H x W x 3."""
    panel = panel.detach().float().cpu()
    if panel.dim() == 4 and panel.shape[1] == 1:
        panel = panel[:, 0]
    if panel.dim() == 4:
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        rgb = (panel * std + mean).clamp(0, 255)
    elif torch.all(panel == panel.round()) and panel.max() >= 1:
        ids = panel.long().clamp(0, 255)
        table = torch.zeros(256, 3)
        table[: len(palette)] = torch.from_numpy(palette).float()
        rgb = table[ids].permute(0, 3, 1, 2)
    else:
        lo, hi = panel.amin(dim=(1, 2), keepdim=True), panel.amax(dim=(1, 2), keepdim=True)
        grey = (panel - lo) / (hi - lo).clamp(min=1e-6) * 255
        rgb = grey.unsqueeze(1).expand(-1, 3, -1, -1)
    rgb = torch.nn.functional.interpolate(rgb, size, mode="nearest")
    return rgb.permute(0, 2, 3, 1).round().byte().numpy()


def save_panels(
    path: Path, panels: dict[str, torch.Tensor], palette: np.ndarray, rows: int = 2
) -> None:
    """Write a PNG grid of the panels (titles on top) for the first ``rows`` samples."""
    first = next(iter(panels.values()))
    height, width = first.shape[-2:]
    cols = [_to_rgb(p[:rows], palette, (height, width)) for p in panels.values()]
    n = cols[0].shape[0]
    title = 14
    grid = np.zeros((title + n * height, len(cols) * width, 3), np.uint8)
    for c, col in enumerate(cols):
        for r in range(n):
            grid[title + r * height : title + (r + 1) * height, c * width : (c + 1) * width] = col[
                r
            ]
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for c, name in enumerate(panels):
        draw.text((c * width + 3, 1), name, fill=(255, 255, 255))
    atomic_write_bytes(path, lambda f: image.save(f, format="PNG"))
