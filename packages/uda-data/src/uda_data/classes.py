"""The Cityscapes 19-class label space that every dataset here is converted to.

Labels are stored as *trainIds*: 0..18 for the classes below, ``IGNORE_INDEX`` (255)
for pixels that are unlabelled or belong to a class outside the benchmark.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
NUM_CLASSES = len(CLASSES)
TRAIN_ID = {name: i for i, name in enumerate(CLASSES)}

# The official Cityscapes colours, indexed by trainId.
PALETTE = np.array(
    [
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ],
    dtype=np.uint8,
)

# Synthia -> Cityscapes is scored on the 16 classes Synthia labels (no terrain, truck, train),
# and often also on 13 (additionally without wall, fence, pole).
SYNTHIA_16 = tuple(i for i, n in enumerate(CLASSES) if n not in ("terrain", "truck", "train"))
SYNTHIA_13 = tuple(i for i in SYNTHIA_16 if CLASSES[i] not in ("wall", "fence", "pole"))
# Classes with instances ("things"), used by feature distance and instance statistics.
THING_CLASSES = tuple(
    TRAIN_ID[n]
    for n in (
        "traffic light",
        "traffic sign",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    )
)


def colorize(label: np.ndarray) -> np.ndarray:
    """An H x W x 3 uint8 picture of a trainId map; ignored pixels are black."""
    out = np.zeros((*label.shape, 3), dtype=np.uint8)
    valid = label < NUM_CLASSES
    out[valid] = PALETTE[label[valid]]
    return out
