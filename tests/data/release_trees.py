"""Tiny dataset trees in the formats of the real releases (GTA5, Synthia RAND-CITYSCAPES,
Cityscapes, ACDC, Dark Zurich, BDD100K, Mapillary Vistas v1.2), as they are downloaded: labels as
released, the files the loaders must leave alone, and (optionally) depth maps."""

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
# Mapillary Vistas v1.2 class ids -> trainIds as HRDA's tools/convert_datasets/mapillary.py
# maps them (github.com/lhoyer/HRDA).
MAPILLARY_TRAIN_IDS = {
    13: 0, 24: 0, 41: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8,
    29: 9, 27: 10, 19: 11, 20: 12, 21: 12, 22: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18,
}  # fmt: skip
# The scene's parts in each id space: sky, building, road, car, person, an unlabelled id.
CITYSCAPES_SCENE = {"sky": 23, "building": 11, "road": 7, "car": 26, "person": 24, "void": 0}
SYNTHIA_SCENE = {"sky": 1, "building": 2, "road": 3, "car": 8, "person": 10, "void": 0}
MAPILLARY_SCENE = {"sky": 27, "building": 17, "road": 13, "car": 55, "person": 19, "void": 65}


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
                _save(root / "depth" / split / city / f"{base}_depth.png", depth_png(index))
                if split != "test":
                    ids = scene_ids(index, CITYSCAPES_SCENE).astype(np.uint8)
                    _save(root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png", ids)
                index += 1
    return root


def _save_jpeg(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=95)


def _save_cityscapes_style_gt(folder: Path, base: str, index: int) -> None:
    """The labels of one ACDC or Dark Zurich image as released: label ids, trainIds, colours and
    the invalid-region mask (the last two unused)."""
    ids = scene_ids(index, CITYSCAPES_SCENE).astype(np.uint8)
    _save(folder / f"{base}_gt_labelIds.png", ids)
    _save(folder / f"{base}_gt_labelTrainIds.png", train_ids_of(ids, CITYSCAPES_TRAIN_IDS))
    _save(folder / f"{base}_gt_labelColor.png", image(index + 500))
    _save(folder / f"{base}_gt_invIds.png", np.zeros((HEIGHT, WIDTH), np.uint8))


ACDC_SEQUENCES = {"fog": "GOPR0475", "night": "GOPR0351", "rain": "GOPR0400", "snow": "GOPR0122"}


def write_acdc(root: Path, *, depth: bool = True) -> Path:
    """ACDC as rgb_anon_trainvaltest.zip and gt_trainval.zip extract: four conditions, each with
    one train, val and test sequence of one image, labelled but for test, and the daytime
    reference images of each split (``*_ref``)."""
    index = 0
    for condition, sequence in ACDC_SEQUENCES.items():
        for split in ("train", "val", "test"):
            base = f"{sequence}_frame_{index:06d}"
            picture = root / "rgb_anon" / condition / split / sequence / f"{base}_rgb_anon.png"
            _save(picture, image(index))
            reference = root / "rgb_anon" / condition / f"{split}_ref" / sequence
            _save(reference / f"{base}_ref_anon.png", image(index + 100))
            if depth:
                folder = root / "depth" / condition / split / sequence
                _save(folder / f"{base}_rgb_anon.png", depth_png(index))
            if split != "test":
                _save_cityscapes_style_gt(root / "gt" / condition / split / sequence, base, index)
            index += 1
    return root


def write_dark_zurich(root: Path, *, depth: bool = True) -> Path:
    """Dark Zurich as its train, val and test zips extract: unlabelled train images at day,
    twilight and night (two per sequence), two labelled val and one test image at night, and
    the daytime references of val (``val_ref``)."""
    images = [
        ("train", "day", "GOPR0354", "GOPR0354_frame_000001"),
        ("train", "day", "GOPR0354", "GOPR0354_frame_000002"),
        ("train", "twilight", "GOPR0351", "GOPR0351_frame_000031"),
        ("train", "twilight", "GOPR0351", "GOPR0351_frame_000032"),
        ("train", "night", "GOPR0594", "GOPR0594_frame_000101"),
        ("train", "night", "GOPR0594", "GOPR0594_frame_000102"),
        ("val", "night", "GOPR0356", "GOPR0356_000000"),
        ("val", "night", "GOPR0356", "GOPR0356_000001"),
        ("test", "night", "GOPR0364", "GOPR0364_000000"),
    ]
    for index, (split, condition, sequence, base) in enumerate(images):
        _save(
            root / "rgb_anon" / split / condition / sequence / f"{base}_rgb_anon.png", image(index)
        )
        if depth:
            folder = root / "depth" / split / condition / sequence
            _save(folder / f"{base}_rgb_anon.png", depth_png(index))
        if split == "val":
            _save_cityscapes_style_gt(root / "gt" / split / condition / sequence, base, index)
            reference = root / "rgb_anon" / "val_ref" / "day" / f"{sequence}_ref"
            _save(reference / f"{base}_ref_anon.png", image(index + 100))
    return root


BDD100K_NAMES = {
    "train": ("0a0a0b1a-7c39d841", "0a0b16e2-93f8c456"),
    "val": ("7d2f7975-e0c1c5a7", "7d4a9094-0455564b"),
    "test": ("ac517380-00000000",),
}


def write_bdd100k(root: Path, *, depth: bool = True) -> Path:
    """BDD100K as the 10K Images and Segmentation zips extract: JPEG images, trainId masks for
    train and val, and the colour maps beside them (unused)."""
    index = 0
    for split, names in BDD100K_NAMES.items():
        for name in names:
            _save_jpeg(root / "images" / "10k" / split / f"{name}.jpg", image(index))
            if depth:
                _save(root / "depth" / "10k" / split / f"{name}.png", depth_png(index))
            if split != "test":
                train_ids = train_ids_of(scene_ids(index, CITYSCAPES_SCENE), CITYSCAPES_TRAIN_IDS)
                _save(root / "labels" / "sem_seg" / "masks" / split / f"{name}.png", train_ids)
                colours = root / "labels" / "sem_seg" / "colormaps" / split / f"{name}.png"
                _save(colours, image(index + 500))
            index += 1
    return root


MAPILLARY_NAMES = {
    "training": ("-1kDtXjB8Kz7q0vMd5LC1w", "_1Gn_xkw7sa_i9GU4mkxxQ"),
    "validation": ("--2R6EaCOmt1xNyyo_vRuRg", "0E8K4zU7BvJ9q2xLmD3s1A", "zZ1y2X3w4V5u6T7s8R9q0P"),
    "testing": ("-0cdArzTlSGTbqBMP7dVMg",),
}


def write_mapillary(root: Path, *, depth: bool = True) -> Path:
    """Mapillary Vistas v1.2 as mapillary-vistas-dataset_public_v1.2.zip extracts: JPEG images,
    labels as palette PNGs of the 66 class ids for training and validation, and the 16-bit
    instance maps beside them (unused)."""
    index = 0
    for split, names in MAPILLARY_NAMES.items():
        for name in names:
            _save_jpeg(root / split / "images" / f"{name}.jpg", image(index))
            if depth:
                _save(root / "depth" / split / f"{name}.png", depth_png(index))
            if split != "testing":
                ids = scene_ids(index, MAPILLARY_SCENE)
                _save_palette(root / split / "labels" / f"{name}.png", ids)
                instances = (ids.astype(np.uint16) * 256)[..., None]
                write_png16(root / split / "instances" / f"{name}.png", instances)
            index += 1
    return root


WRITERS = {
    "gta": write_gta,
    "synthia": write_synthia,
    "cityscapes": write_cityscapes,
    "acdc": write_acdc,
    "darkzurich": write_dark_zurich,
    "bdd100k": write_bdd100k,
    "mapillary": write_mapillary,
}
"""Each layout's fixture-tree writer, by layout name."""
