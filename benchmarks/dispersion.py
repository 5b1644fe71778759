"""Milliseconds per dispersion map, per backend, side by side.

    python benchmarks/dispersion.py [--sizes 512 1024] [--batch 2] [--repeats 20]
    python benchmarks/dispersion.py --worst [--worst-sizes 64 128 256]

Columns: the native CPU backend on one thread and on all threads, the CUDA backend (when a GPU
is present), the NumPy reference, the best composition of existing Python libraries (cc3d
labelling + NumPy statistics; `pip install connected-components-3d`, the column is skipped
without it) and, for comparison, only the ctypes marshalling that the published closed binary's
wrapper does per map (labels and depth copied element by element into ctypes arrays, the map
copied back). Two kinds of maps: synthetic scenes (tens of instances) and noisy pseudo-label-like
maps (hundreds of instances, ragged ignore regions).

`--worst` times the pair step's worst case instead: uniformly random labels with min_area=1, so
that nearly every pixel is an instance and the all-pairs step dominates (N^2 for N instances),
once per size without a limit (`max_instances=None`), on one thread, on all threads and on CUDA;
then the 1024x1024 map with the default limit, which refuses it with a ValueError.
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from uda_dispersion import dispersion_map, instances, reference

try:
    import cc3d
except ImportError:
    cc3d = None

IGNORE = 255
CLASSES = 19


def synthetic_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """Road, sky and buildings bands with cars, poles and people as rectangles."""
    labels = np.empty((size, size), np.int64)
    labels[: size // 3] = 10
    labels[size // 3 : size // 2] = 2
    labels[size // 2 :] = 0
    labels[size // 2 + size // 4 :, : size // 6] = 1
    for _ in range(40):
        r, c = rng.integers(size // 4, size, 2)
        h, w = rng.integers(size // 40, size // 6, 2)
        labels[r : r + h, c : c + w] = rng.choice([5, 6, 7, 11, 12, 13, 14, 17, 18])
    return labels


def noisy_pseudo_labels(rng: np.random.Generator, size: int) -> np.ndarray:
    """A scene with blobs of wrong classes and ragged low-confidence (ignored) regions."""
    labels = synthetic_scene(rng, size)
    scale = size / 512
    for value in [*rng.integers(0, CLASSES, 700), *[IGNORE] * 300]:
        r, c = rng.integers(0, size, 2)
        h, w = (rng.integers(2, 14, 2) * scale).astype(int)
        labels[r : r + h, c : c + w] = value
    return labels


def batch(kind: str, size: int, b: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    make = synthetic_scene if kind == "scene" else noisy_pseudo_labels
    labels = np.stack([make(rng, size) for _ in range(b)]).astype(np.uint8)
    rows = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    depth = (rows + 0.05 * rng.random((b, size, size))).astype(np.float32)
    return labels, depth


def cc3d_composition(labels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """cc3d labelling and NumPy statistics per image, the definition's defaults."""
    out = np.full(labels.shape, -1.0, np.float32)
    for b in range(labels.shape[0]):
        h, w = labels[b].shape
        shifted = np.where(labels[b] == IGNORE, 0, labels[b].astype(np.int32) + 1)
        ids = cc3d.connected_components(shifted, connectivity=8).astype(np.int64)
        count = int(ids.max()) + 1
        valid = shifted > 0
        rows, cols = np.nonzero(valid)
        d = depth[b][valid].astype(np.float64)
        z = (d - d.min()) / (d.max() - d.min()) if d.max() > d.min() else np.zeros_like(d)
        inst = ids[valid]
        area = np.bincount(inst, minlength=count).astype(np.float64)
        kept = np.nonzero(area >= 16)[0]
        mu = (
            np.stack(
                [
                    np.bincount(inst, weights=v, minlength=count)
                    for v in ((cols + 0.5) / w, (rows + 0.5) / h, z)
                ],
                axis=1,
            )[kept]
            / area[kept, None]
        )
        cls = np.zeros(count, np.int64)
        cls[inst] = shifted[valid]
        cls = cls[kept]
        offset = mu[None] - mu[:, None]
        dist = np.linalg.norm(offset, axis=2)
        support = (cls[None] != cls[:, None]) & (dist > 1e-6)
        u = np.where(support[..., None], offset / np.maximum(dist, 1e-300)[..., None], 0.0)
        n = support.sum(1)
        delta = np.where(n > 0, 1 - np.linalg.norm(u.sum(1), axis=1) / np.maximum(n, 1), -1.0)
        values = np.full(count, -1.0, np.float32)
        values[kept] = delta
        out[b] = np.where(valid, values[ids], -1.0)
    return out


def ctypes_marshalling(labels: np.ndarray, depth: np.ndarray) -> None:
    """What a ctypes wrapper around the closed binary pays per map before and after calling it."""
    for b in range(labels.shape[0]):
        n = labels[b].size
        c_labels = (ctypes.c_int * n)(*labels[b].ravel().tolist())
        c_depth = (ctypes.c_float * n)(*depth[b].ravel().tolist())
        c_out = (ctypes.c_float * n)()
        np.array(c_out[:], dtype=np.float32).reshape(labels[b].shape)
        del c_labels, c_depth


def median_ms(run: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None):
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--slow-repeats", type=int, default=2, help="reference, ctypes, cc3d")
    parser.add_argument("--worst", action="store_true", help="time the pair step's worst case")
    parser.add_argument("--worst-sizes", type=int, nargs="+", default=[64, 128, 256])
    args = parser.parse_args()
    if args.worst:
        worst_case(args.worst_sizes)
        return
    b = args.batch
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{threads} threads, B = {b}; ms per map (median)"
    )
    columns = ["native CPU 1 thread", f"native CPU {threads} threads"]
    if torch.cuda.is_available():
        columns.append(f"native CUDA ({torch.cuda.get_device_name()})")
    columns += ["NumPy reference", "cc3d + NumPy" if cc3d else "cc3d + NumPy (not installed)"]
    columns.append("ctypes marshalling alone")
    print("| maps | size | instances per map | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 3) + "|")
    for kind in ("scene", "noisy"):
        for size in args.sizes:
            labels, depth = batch(kind, size, b)
            count = len(reference.instances(labels, depth)[1]) / b
            cells = [ms / b for ms in measure(labels, depth, threads, args)]
            text = ["-" if c != c else f"{c:.2f}" for c in cells]
            print(f"| {kind} | {size}x{size} | {count:.0f} | " + " | ".join(text) + " |")


def noise(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random labels: about 0.8 instances per pixel with 8-connectivity."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, (size, size)).astype(np.uint8)
    return labels, rng.random((size, size)).astype(np.float32)


def unlimited_seconds(
    labels: torch.Tensor, depth: torch.Tensor, sync: Callable[[], None] = lambda: None
) -> float:
    """Seconds of one map with min_area=1 and no instance limit."""
    start = time.perf_counter()
    dispersion_map(labels, depth, min_area=1, max_instances=None)
    sync()
    return time.perf_counter() - start


def worst_case(sizes: list[int]) -> None:
    """Seconds per map of random labels with min_area=1, one run each (they are long)."""
    threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{threads} threads; seconds per map, random labels, min_area=1, max_instances=None"
    )
    columns = ["CPU 1 thread", f"CPU {threads} threads"]
    if torch.cuda.is_available():
        columns.append(f"CUDA ({torch.cuda.get_device_name()})")
    print("| size | instances | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    unlimited_seconds(*(torch.from_numpy(x) for x in noise(8)))  # the op's first call is slow
    for size in sizes:
        labels, depth = (torch.from_numpy(x) for x in noise(size))
        count = len(instances(labels, depth, min_area=10**9).table.area)
        cells = []
        for n in (1, threads):
            torch.set_num_threads(n)
            cells.append(unlimited_seconds(labels, depth))
        torch.set_num_threads(threads)
        if torch.cuda.is_available():
            labels, depth = labels.cuda(), depth.cuda()
            unlimited_seconds(labels, depth, torch.cuda.synchronize)  # warm-up
            cells.append(unlimited_seconds(labels, depth, torch.cuda.synchronize))
        print(f"| {size}x{size} | {count} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    labels, depth = (torch.from_numpy(x) for x in noise(1024))
    start = time.perf_counter()
    try:
        dispersion_map(labels, depth, min_area=1)
    except ValueError as error:
        print(
            f"1024x1024 with the default max_instances: ValueError after "
            f"{time.perf_counter() - start:.3f} s: {error}"
        )


def measure(labels: np.ndarray, depth: np.ndarray, threads: int, args) -> list[float]:
    """Milliseconds per batch for each column; NaN where a column is skipped."""
    lt, dt = torch.from_numpy(labels), torch.from_numpy(depth)
    cells = []
    for n in (1, threads):
        torch.set_num_threads(n)
        cells.append(median_ms(lambda: dispersion_map(lt, dt), args.repeats))
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        lc, dc = lt.cuda(), dt.cuda()
        cells.append(
            median_ms(lambda: dispersion_map(lc, dc), args.repeats, torch.cuda.synchronize)
        )
    slow = args.slow_repeats
    cells.append(median_ms(lambda: reference.dispersion_map(labels, depth), slow))
    cells.append(median_ms(lambda: cc3d_composition(labels, depth), slow) if cc3d else np.nan)
    cells.append(median_ms(lambda: ctypes_marshalling(labels, depth), slow))
    return cells


if __name__ == "__main__":
    main()
