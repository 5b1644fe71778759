"""Pure NumPy reference of the instance directional dispersion, written to read like the
definition (README, "Definition") rather than to be fast. The tests hold the native backends
against it.

Connected components use vectorised union-find: every pixel points at a parent, each round
hooks the larger of two touching roots under the smaller and then follows pointers to the
roots, so a component's root is its first pixel in raster order, as in the native code.
"""

from __future__ import annotations

import numpy as np

MIN_DISTANCE = 1e-6
WEIGHTINGS = ("uniform", "area", "sqrt_area")
TABLE_COLUMNS = ("batch", "class", "area", "x", "y", "z", "dispersion")


def dispersion_map(
    labels: np.ndarray,
    depth: np.ndarray,
    *,
    ignore_index: int = 255,
    connectivity: int = 8,
    min_area: int = 16,
    depth_weight: float = 1.0,
    weighting: str = "uniform",
    fill: float = -1.0,
) -> np.ndarray:
    """Float32 B x 1 x H x W dispersion map of H x W, B x H x W or B x 1 x H x W inputs."""
    ids, table = instances(
        labels,
        depth,
        ignore_index=ignore_index,
        connectivity=connectivity,
        min_area=min_area,
        depth_weight=depth_weight,
        weighting=weighting,
        fill=fill,
    )
    values = np.append(table[:, 6], fill).astype(np.float32)  # id -1 (ignored) reads `fill`
    return values[ids]


def instances(
    labels: np.ndarray,
    depth: np.ndarray,
    *,
    ignore_index: int = 255,
    connectivity: int = 8,
    min_area: int = 16,
    depth_weight: float = 1.0,
    weighting: str = "uniform",
    fill: float = -1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (int32 B x 1 x H x W, -1 on ignored pixels) and the N x 7 table
    (batch, class, area, x, y, z, dispersion), instances numbered image by image in raster
    order of their first pixel."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    labels = _batched(np.asarray(labels)).astype(np.int64)
    depth = _batched(np.asarray(depth)).astype(np.float32).astype(np.float64)
    ids = np.full(labels.shape, -1, dtype=np.int32)
    tables = []
    first_id = 0
    for b in range(labels.shape[0]):
        image_ids, table = _image_instances(
            labels[b], depth[b], ignore_index, connectivity, depth_weight
        )
        table[:, 6] = _dispersion(table, min_area, weighting, fill)
        table[:, 0] = b
        ids[b] = np.where(image_ids >= 0, image_ids + first_id, -1)
        first_id += len(table)
        tables.append(table)
    return ids[:, None], np.concatenate(tables)


def _batched(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        return array[None]
    if array.ndim == 4 and array.shape[1] == 1:
        return array[:, 0]
    if array.ndim == 3:
        return array
    raise ValueError(f"expected H x W, B x H x W or B x 1 x H x W, got shape {array.shape}")


def connected_components(labels: np.ndarray, valid: np.ndarray, connectivity: int) -> np.ndarray:
    """Instance id of each pixel of an H x W map (-1 where not valid), in raster order of the
    instances' first pixels."""
    h, w = labels.shape
    index = np.arange(h * w).reshape(h, w)
    steps = [(0, 1), (1, 0)] + ([(1, 1), (1, -1)] if connectivity == 8 else [])
    first, second = [], []
    for dr, dc in steps:
        a = index[: h - dr, max(0, -dc) : w - max(0, dc)].ravel()
        b = index[dr:, max(0, dc) : w - max(0, -dc)].ravel()
        flat_valid, flat_labels = valid.ravel(), labels.ravel()
        joined = flat_valid[a] & flat_valid[b] & (flat_labels[a] == flat_labels[b])
        first.append(a[joined])
        second.append(b[joined])
    a, b = np.concatenate(first), np.concatenate(second)
    parent = np.arange(h * w)
    while True:
        root_a, root_b = parent[a], parent[b]
        apart = root_a != root_b
        if not apart.any():
            break
        low = np.minimum(root_a, root_b)[apart]
        high = np.maximum(root_a, root_b)[apart]
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots = parent.reshape(h, w)
    ids = np.full((h, w), -1, dtype=np.int64)
    ids[valid] = np.searchsorted(np.unique(roots[valid]), roots[valid])
    return ids


def _image_instances(
    labels: np.ndarray, depth: np.ndarray, ignore_index: int, connectivity: int, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    h, w = labels.shape
    valid = labels != ignore_index
    ids = connected_components(labels, valid, connectivity)
    count = int(ids.max()) + 1 if valid.any() else 0
    table = np.zeros((count, 7))
    if count == 0:
        return ids, table
    rows, cols = np.nonzero(valid)
    d = depth[valid]
    d_min, d_max = d.min(), d.max()
    z = weight * (d - d_min) / (d_max - d_min) if d_max > d_min else np.zeros_like(d)
    x = (cols + 0.5) / w
    y = (rows + 0.5) / h
    instance = ids[valid]
    area = np.bincount(instance, minlength=count).astype(np.float64)
    first_pixel = np.unique(instance, return_index=True)[1]
    table[:, 1] = labels[valid][first_pixel]
    table[:, 2] = area
    for column, values in ((3, x), (4, y), (5, z)):
        table[:, column] = np.bincount(instance, weights=values, minlength=count) / area
    return ids, table


def _dispersion(table: np.ndarray, min_area: int, weighting: str, fill: float) -> np.ndarray:
    """delta_i = 1 - |sum_j w_j u_ij| / sum_j w_j over the supporters j of each instance i."""
    result = np.full(len(table), fill, dtype=np.float64)
    kept = np.nonzero(table[:, 2] >= min_area)[0]
    classes, area, centroid = table[kept, 1], table[kept, 2], table[kept, 3:6]
    weights = {"uniform": np.ones_like(area), "area": area, "sqrt_area": np.sqrt(area)}[weighting]
    for start in range(0, len(kept), 256):
        rows = slice(start, start + 256)
        offset = centroid[None, :, :] - centroid[rows, None, :]
        distance = np.linalg.norm(offset, axis=2)
        supports = (classes[None, :] != classes[rows, None]) & (distance > MIN_DISTANCE)
        w = np.where(supports, weights[None, :], 0.0)
        directions = offset / np.where(supports, distance, 1.0)[:, :, None]
        resultant = np.linalg.norm((w[:, :, None] * directions).sum(axis=1), axis=1)
        total = w.sum(axis=1)
        spread = np.maximum(1.0 - resultant / np.where(total > 0, total, 1.0), 0.0)
        result[kept[rows]] = np.where(total > 0, spread, fill)
    return result
