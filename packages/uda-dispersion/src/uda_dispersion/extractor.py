"""Public API: the dispersion map, the instances behind it, and the torch custom op that lets
the map sit inside torch.compile'd code without a graph break."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from uda_dispersion import _backend
from uda_dispersion._backend import Options

Array = torch.Tensor | np.ndarray


@dataclass
class InstanceTable:
    """One entry per instance, instances numbered image by image in raster order of their
    first pixel; `centroid` is (x, y, z) in the joint image-depth space."""

    batch: Array
    class_id: Array
    area: Array
    centroid: Array
    dispersion: Array


@dataclass
class Instances:
    """Instance id of every pixel (int32 B x 1 x H x W, -1 on ignored pixels; ids index the
    table) and the per-instance table."""

    ids: Array
    table: InstanceTable


def dispersion_map(
    labels: Array,
    depth: Array,
    *,
    ignore_index: int = 255,
    connectivity: int = 8,
    min_area: int = 16,
    depth_weight: float = 1.0,
    weighting: str = "uniform",
    fill: float = -1.0,
) -> Array:
    """Float32 B x 1 x H x W map holding each instance's directional dispersion on its pixels
    and `fill` on ignored pixels, too-small instances and instances without supporters.

    `labels` (any integer dtype) and `depth` are H x W, B x H x W or B x 1 x H x W torch
    tensors (CPU or CUDA; the map is computed on their device, on the current stream) or
    NumPy arrays (a NumPy map is returned).
    """
    options = Options(ignore_index, connectivity, min_area, depth_weight, weighting, fill)
    labels_t, depth_t, as_numpy = _batch(labels, depth)
    out = torch.ops.uda_dispersion.dispersion_map(
        labels_t,
        depth_t,
        options.ignore_index,
        options.connectivity,
        options.min_area,
        float(options.depth_weight),
        options.weighting,
        float(options.fill),
    )
    return out.numpy() if as_numpy else out


def instances(
    labels: Array,
    depth: Array,
    *,
    ignore_index: int = 255,
    connectivity: int = 8,
    min_area: int = 16,
    depth_weight: float = 1.0,
    weighting: str = "uniform",
    fill: float = -1.0,
) -> Instances:
    """The instances behind `dispersion_map` (same arguments): their id map and table.

    On CUDA this waits for the device once, to learn how many instances there are.
    """
    options = Options(ignore_index, connectivity, min_area, depth_weight, weighting, fill)
    labels_t, depth_t, as_numpy = _batch(labels, depth)
    _, ids, rows = _backend.run(labels_t, depth_t, options, True)
    table = InstanceTable(
        batch=rows[:, 0].long(),
        class_id=rows[:, 1].long(),
        area=rows[:, 2].long(),
        centroid=rows[:, 3:6].clone(),
        dispersion=rows[:, 6].float(),
    )
    if as_numpy:
        ids = ids.numpy()
        table = InstanceTable(**{f.name: getattr(table, f.name).numpy() for f in fields(table)})
    return Instances(ids=ids, table=table)


@torch.library.custom_op("uda_dispersion::dispersion_map", mutates_args=())
def _dispersion_map_op(
    labels: torch.Tensor,
    depth: torch.Tensor,
    ignore_index: int,
    connectivity: int,
    min_area: int,
    depth_weight: float,
    weighting: str,
    fill: float,
) -> torch.Tensor:
    options = Options(ignore_index, connectivity, min_area, depth_weight, weighting, fill)
    out, _, _ = _backend.run(labels, depth, options, False)
    return out


@_dispersion_map_op.register_fake
def _(labels: torch.Tensor, depth: torch.Tensor, *options: object) -> torch.Tensor:
    b, h, w = labels.shape
    return labels.new_empty((b, 1, h, w), dtype=torch.float32)


def _batch(labels: Array, depth: Array) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Checks what the shapes and dtypes alone decide; returns B x H x W tensors."""
    as_numpy = not isinstance(labels, torch.Tensor) and not isinstance(depth, torch.Tensor)
    device = next(
        (x.device for x in (labels, depth) if isinstance(x, torch.Tensor)), torch.device("cpu")
    )
    labels = _as_tensor(labels, "labels", device)
    depth = _as_tensor(depth, "depth", device)
    if labels.device != depth.device:
        raise ValueError(f"labels are on {labels.device} but depth is on {depth.device}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    if depth.dtype.is_complex or depth.dtype == torch.bool:
        raise ValueError(f"depth must hold real numbers, got dtype {depth.dtype}")
    labels, depth = _to_bhw(labels, "labels"), _to_bhw(depth, "depth")
    if labels.shape != depth.shape:
        raise ValueError(
            f"labels and depth shapes differ: {tuple(labels.shape)} vs {tuple(depth.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError(f"labels and depth are empty (shape {tuple(labels.shape)})")
    return labels, depth, as_numpy


def _as_tensor(x: object, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)
    raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _to_bhw(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 3:
        return x
    if x.dim() == 4 and x.shape[1] == 1:
        return x.squeeze(1)
    raise ValueError(f"{name} must be H x W, B x H x W or B x 1 x H x W, got {tuple(x.shape)}")
