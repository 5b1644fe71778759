"""Reading the files of a dataset: one rule for every reader (training, evaluation, prediction,
``uda data check``, ``uda data convert``).

- An image is decoded by its content, not its name: a JPEG named ``.png`` is read as the JPEG
  it is (and warned of; BDD100K and Mapillary Vistas ship ``.jpg`` images, the others PNGs).
  It is converted explicitly to 8-bit RGB: grey is repeated, a palette applied, alpha dropped,
  16-bit values scaled by 255/65535 (rounded).
- A trainId label is a single-channel 8-bit PNG (grey, or palette indices) of trainIds 0-18 and
  255. RGB, 16-bit or lossy (JPEG) labels are refused, never reinterpreted.
- A depth map is a single-channel PNG of the bit depth its encoding says (8-bit also as RGB
  with equal channels), or an H x W ``.npy`` array of finite numbers.

Every file is decoded completely, so truncated files fail where they are read. Anything else
raises a ``DataError``: one line naming the file, what it holds and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_png, read_file

from uda_data.classes import IGNORE_INDEX, NUM_CLASSES
from uda_data.depth import DepthEncoding, decode_depth_anything
from uda_data.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOURS = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
CONVERT = "convert the labels with `uda data convert`"
FORMAT_SUFFIXES = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg")}
"""The names the image formats of the releases go by; a file by another name is a warning."""


@dataclass(frozen=True)
class PngHeader:
    bits: int
    """Bits per sample: 1, 2, 4, 8 or 16."""
    colour: int
    """PNG colour type: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA."""

    def __str__(self) -> str:
        article = "an" if self.bits == 8 else "a"
        return f"{article} {self.bits}-bit {_PNG_COLOURS.get(self.colour, 'unknown colour')} PNG"


@dataclass(frozen=True)
class Decoded:
    """An image file read as 8-bit RGB, and how it was converted on the way."""

    pixels: np.ndarray
    """H x W x 3 uint8."""
    conversions: tuple[str, ...] = ()
    """What differs from a plain 8-bit RGB PNG, e.g. ``"16-bit, scaled to 8 bits"``."""


def require_file(path: Path) -> None:
    """A DataError unless ``path`` is a file: missing, a dangling link or a folder."""
    if path.is_file():
        return
    if path.is_symlink():
        raise DataError(
            f"{path}: a symbolic link to {os.readlink(path)}, which does not exist;"
            " fix the link or remove it",
            "unreadable",
        )
    what = "a folder, not a file" if path.is_dir() else "missing"
    raise DataError(f"{path}: {what}", "unreadable")


def _require_content(path: Path) -> None:
    require_file(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes); replace it", "unreadable")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file from its header, or a DataError saying why not."""
    _require_content(path)
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as exc:  # decoders raise OSError, SyntaxError, ...
        raise DataError(
            f"{path}: cannot be read as an image ({exc}); replace the file", "unreadable"
        ) from None


def open_decoded(path: Path) -> Image.Image:
    """The file decoded by Pillow with every pixel read, or a DataError saying why not."""
    _require_content(path)
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except Exception as exc:  # decoders raise OSError, SyntaxError, zlib.error, ...
        why = "not an image format Pillow reads" if isinstance(exc, UnidentifiedImageError) else exc
        raise DataError(
            f"{path}: cannot be read as an image ({why}); replace the file", "unreadable"
        ) from None


def png_header(path: Path) -> PngHeader | None:
    """Bit depth and colour type of a PNG file; None for any other format."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror})", "unreadable") from None
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return PngHeader(head[24], head[25])


def read_png16(path: Path) -> np.ndarray:
    """A 16-bit PNG as H x W x C uint16 (Pillow reads only 8 bits of colour ones)."""
    try:
        channels = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)
    except RuntimeError as exc:
        raise DataError(
            f"{path}: cannot be read as an image ({exc}); replace the file", "unreadable"
        ) from None
    return channels.permute(1, 2, 0).numpy()


def scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """16-bit values to 8 bits: round(v * 255 / 65535)."""
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def decode_image(path: Path) -> Decoded:
    """An image file as 8-bit RGB (see the module docstring for the rule)."""
    path = Path(path)
    img = open_decoded(path)
    header = png_header(path)
    conversions = []
    if path.suffix.lower() not in FORMAT_SUFFIXES.get(img.format, ()):
        named = f" named {path.suffix}" if path.suffix else ""
        conversions.append(f"a {img.format} file{named}, decoded as {img.format}")
    if header is not None and header.bits == 16:
        stored = read_png16(path)
        if stored.shape[2] in (2, 4):
            conversions.append("alpha dropped")
        grey = stored.shape[2] < 3
        rgb = np.repeat(stored[..., :1], 3, axis=2) if grey else stored[..., :3]
        conversions.append("16-bit, scaled to 8 bits")
        return Decoded(scale_16_to_8(rgb), tuple(conversions))
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        raise DataError(
            f"{path}: a {img.mode} image of 32-bit values; images must be 8-bit or 16-bit"
            " RGB or grey",
            "format",
        )
    if "A" in img.mode or "transparency" in img.info:
        conversions.append("alpha dropped")
    return Decoded(np.array(img.convert("RGB")), tuple(conversions))


def read_image(path: Path) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB."""
    return decode_image(path).pixels


def describe(path: Path, img: Image.Image) -> str:
    """What a decoded file is, e.g. ``a 16-bit grey PNG`` or ``a JPEG file``."""
    header = png_header(path)
    return str(header) if header is not None else f"a {img.format} file"


def read_label(path: Path) -> np.ndarray:
    """A trainId label map (H x W uint8); anything else raises a DataError naming the file."""
    path = Path(path)
    img = open_decoded(path)
    header = png_header(path)
    single = img.mode == "P" or (img.mode == "L" and header is not None and header.bits == 8)
    if header is None or header.bits == 16 or not single:
        raise DataError(
            f"{path}: {describe(path, img)}, but a trainId label is a single-channel 8-bit PNG;"
            f" {CONVERT}",
            "format",
        )
    label = np.array(img)
    values = np.unique(label)
    bad = values[(values >= NUM_CLASSES) & (values != IGNORE_INDEX)]
    if len(bad):
        raise DataError(
            f"{path}: label values {bad[:5].tolist()} are not trainIds (0-{NUM_CLASSES - 1} or"
            f" {IGNORE_INDEX}); {CONVERT}",
            "values",
        )
    return label


def read_npy(path: Path) -> np.ndarray:
    """A 2-D numeric array from a ``.npy`` file, as float32 (values not yet checked)."""
    require_file(path)
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, EOFError, UnpicklingError, ...
        raise DataError(
            f"{path}: cannot be read as a .npy array ({exc}); regenerate it", "unreadable"
        ) from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: an .npz archive, not one .npy array; regenerate it", "format")
    if array.ndim != 2:
        raise DataError(
            f"{path}: holds a {'x'.join(map(str, array.shape)) or 'scalar'} array, but a depth"
            " map is H x W; save one 2-D array per image",
            "format",
        )
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}: holds {array.dtype} values, not numbers; regenerate it", "format")
    return array.astype(np.float32)


DEPTH_BITS: dict[DepthEncoding, int] = {"depth_anything_png": 8, "uint16_mm": 16}


def depth_encoding_of(path: Path) -> DepthEncoding:
    """How a depth file is stored, from its name and header (a PNG's bit depth)."""
    if path.suffix == ".npy":
        return "float_npy"
    require_file(path)
    header = png_header(path)
    return "uint16_mm" if header is not None and header.bits == 16 else "depth_anything_png"


def read_depth(path: Path, encoding: DepthEncoding) -> np.ndarray:
    """A float32 depth map (H x W) from a file in the given encoding."""
    path = Path(path)
    depth = read_npy(path) if encoding == "float_npy" else _read_depth_png(path, encoding)
    bad = int(np.count_nonzero(~np.isfinite(depth)))
    if bad:
        raise DataError(
            f"{path}: depth holds {bad} NaN or infinite values; regenerate it", "values"
        )
    return depth


def _read_depth_png(path: Path, encoding: DepthEncoding) -> np.ndarray:
    img = open_decoded(path)
    header = png_header(path)
    bits = DEPTH_BITS[encoding]
    if header is None or header.bits != bits:
        raise DataError(
            f"{path}: {encoding} depth maps are {bits}-bit single-channel PNGs, this one is"
            f" {describe(path, img)}; set depth_encoding to how the maps were written",
            "format",
        )
    raw = np.array(img) if bits == 8 else read_png16(path)
    if img.mode == "P" or (raw.ndim == 3 and not (raw[..., :3] == raw[..., :1]).all()):
        raise DataError(
            f"{path}: {describe(path, img)} of colours, not a single-channel depth map;"
            " regenerate it with `uda data depth`",
            "format",
        )
    if raw.ndim == 3:
        raw = raw[..., 0]
    if encoding == "depth_anything_png":
        return decode_depth_anything(raw)
    return raw.astype(np.float32) / 1000.0
