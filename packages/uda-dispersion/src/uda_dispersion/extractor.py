"""Public API: the dispersion map, the instances behind it, and the torch custom op that lets
the map sit inside torch.compile'd code without a graph break."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from uda_dispersion import _backend
from uda_dispersion._backend import MAX_INSTANCES, Options

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
    max_instances: int | None = MAX_INSTANCES,
) -> Array:
    """Float32 B x 1 x H x W map holding each instance's directional dispersion on its pixels
    and `fill` on ignored pixels, too-small instances and instances without supporters.

    `labels` (any integer dtype) and `depth` are H x W, B x H x W or B x 1 x H x W torch
    tensors (CPU or CUDA; the map is computed on their device, on the current stream) or
    NumPy arrays (a NumPy map is returned). An image with more than `max_instances` instances
    of at least `min_area` pixels raises ValueError, since every pair of them is compared
    (`None`: no limit; on the CPU Ctrl-C interrupts a long call).
    """
    options = Options(
        ignore_index, connectivity, min_area, depth_weight, weighting, fill, max_instances
    )
    labels_t, depth_t, as_numpy = _batch(labels, depth)
    out = torch.ops.uda_dispersion.dispersion_map(
        labels_t,
        depth_t,
        options.ignore_index,
        options.connectivity,
        options.min_area,
        options.depth_weight,
        options.weighting,
        options.fill,
        options.instance_limit,
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
    max_instances: int | None = MAX_INSTANCES,
) -> Instances:
    """The instances behind `dispersion_map` (same arguments): their id map and table.

    On CUDA this waits for the device once, to learn how many instances there are.
    """
    options = Options(
        ignore_index, connectivity, min_area, depth_weight, weighting, fill, max_instances
    )
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
    max_instances: int,
) -> torch.Tensor:
    """The map of B x H x W labels and depth; max_instances -1 for no limit."""
    _check_op_inputs(labels, depth)
    limit = None if max_instances == -1 else max_instances
    options = Options(ignore_index, connectivity, min_area, depth_weight, weighting, fill, limit)
    out, _, _ = _backend.run(labels, depth, options, False)
    return out


@_dispersion_map_op.register_fake
def _(labels: torch.Tensor, depth: torch.Tensor, *options: object) -> torch.Tensor:
    _check_op_inputs(labels, depth)
    b, h, w = labels.shape
    return labels.new_empty((b, 1, h, w), dtype=torch.float32)


def _check_op_inputs(labels: torch.Tensor, depth: torch.Tensor) -> None:
    if labels.dim() != 3 or labels.shape != depth.shape:
        raise ValueError(
            "uda_dispersion::dispersion_map takes B x H x W labels and depth of one shape, got "
            f"{tuple(labels.shape)} and {tuple(depth.shape)}"
        )
    _check_dtypes(labels, depth)


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
    if labels.device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"uda_dispersion computes maps of CPU or CUDA tensors, got {labels.device.type} "
            "tensors" + (" (meta tensors hold no values)" if labels.device.type == "meta" else "")
        )
    _check_dtypes(labels, depth)
    labels, depth = _to_bhw(labels, "labels"), _to_bhw(depth, "depth")
    if labels.shape != depth.shape:
        raise ValueError(
            f"labels and depth shapes differ: {tuple(labels.shape)} vs {tuple(depth.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError(f"labels and depth are empty (shape {tuple(labels.shape)})")
    return labels, depth, as_numpy


def _check_dtypes(labels: torch.Tensor, depth: torch.Tensor) -> None:
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    if depth.dtype.is_complex or depth.dtype == torch.bool:
        raise ValueError(f"depth must hold real numbers, got dtype {depth.dtype}")


def _as_tensor(x: object, name: str, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":
            raise ValueError(f"{name} must hold numbers, got a NumPy array of dtype {x.dtype}")
        try:
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)
        except TypeError:
            raise ValueError(f"{name}: NumPy dtype {x.dtype} has no torch equivalent") from None
    raise ValueError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def _to_bhw(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 2:
        return x.unsqueeze(0)
    if x.dim() == 3:
        return x
    if x.dim() == 4 and x.shape[1] == 1:
        return x.squeeze(1)
    raise ValueError(f"{name} must be H x W, B x H x W or B x 1 x H x W, got {tuple(x.shape)}")
