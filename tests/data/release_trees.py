"""Tiny dataset trees in the formats of the real releases (GTA5, Synthia RAND-CITYSCAPES,
Cityscapes), as they are downloaded: original label ids, depth maps beside the images."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 64, 32

# Cityscapes label ids (as GTA and Cityscapes store them) -> trainIds, written out here from
# the official definitions so that the tests do not trust the code they test.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
# Synthia class ids -> trainIds as DAFormer's tools/convert_datasets/synthia.py maps them.
SYNTHIA_TRAIN_IDS = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
    10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}  # fmt: skip
# The scene's parts in each id space: sky, building, road, car, person, an unlabelled id.
CITYSCAPES_SCENE = {"sky": 23, "building": 11, "road": 7, "car": 26, "person": 24, "void": 0}
SYNTHIA_SCENE = {"sky": 1, "building": 2, "road": 3, "car": 8, "person": 10, "void": 0}


def scene_ids(index: int, ids: dict[str, int], size=(WIDTH, HEIGHT)) -> np.ndarray:
    """A street-like id map that differs per image: sky, buildings, road, a car, a person."""
    width, height = size
    rng = np.random.default_rng(index)
    out = np.full((height, width), ids["sky"], dtype=np.uint16)
    horizon = height // 3 + int(rng.integers(0, 3))
    out[horizon : height // 2 + 2] = ids["building"]
    out[height // 2 + 2 :] = ids["road"]
    left = int(rng.integers(0, width - 24))
    out[height // 2 : height - 4, left : left + 16] = ids["car"]
    out[height // 2 - 4 : height - 2, left + 18 : left + 22] = ids["person"]
    out[height - 2 :, : width // 8] = ids["void"]
    return out


def train_ids_of(ids: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(ids.shape, 255, np.uint8)
    for source, target in table.items():
        out[ids == source] = target
    return out


def image(index: int, size=(WIDTH, HEIGHT)) -> np.ndarray:
    rng = np.random.default_rng(100 + index)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def depth_png(index: int, size=(WIDTH, HEIGHT)) -> np.ndarray:
    rows = np.linspace(0, 255, size[1], dtype=np.float64)[:, None]
    return np.broadcast_to(rows + index, (size[1], size[0])).clip(0, 255).astype(np.uint8)


def write_png16(path: Path, array: np.ndarray) -> None:
    """A 16-bit PNG of an H x W x C array (C = 1, 3 or 4), which Pillow cannot write."""
    height, width, channels = array.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in array)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _save_palette(path: Path, ids: np.ndarray) -> None:
    """As GTA stores labels: a palette PNG whose indices are the ids."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.astype(np.uint8).tobytes())
    picture.putpalette([v for k in range(256) for v in (k, 255 - k, (7 * k) % 256)])
    picture.save(path)


def write_gta(root: Path, count: int = 4) -> Path:
    for i in range(count):
        name = f"{i + 1:05d}.png"
        _save(root / "images" / name, image(i))
        _save_palette(root / "labels" / name, scene_ids(i, CITYSCAPES_SCENE))
        _save(root / "depth" / name, depth_png(i))
    return root


def write_synthia(root: Path, count: int = 4) -> Path:
    for i in range(count):
        name = f"{i:07d}.png"
        _save(root / "RGB" / name, image(i))
        ids = scene_ids(i, SYNTHIA_SCENE)
        instance = np.where(ids == SYNTHIA_SCENE["car"], 7, 0).astype(np.uint16)
        write_png16(root / "GT" / "LABELS" / name, np.stack([ids, instance, instance], axis=2))
        _save(root / "depth" / name, depth_png(i))
    return root


CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",), "test": ("berlin",)}


def write_cityscapes(root: Path, per_city: int = 2) -> Path:
    index = 0
    for split, cities in CITIES.items():
        for city in cities:
            for k in range(per_city):
                base = f"{city}_000000_{k:06d}"
                _save(root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png", image(index))
                _save(root / "depth" / split / city / f"{base}_leftImg8bit.png", depth_png(index))
                if split != "test":
                    ids = scene_ids(index, CITYSCAPES_SCENE).astype(np.uint8)
                    _save(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", ids)
                index += 1
    return root
