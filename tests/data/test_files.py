"""One rule for every reader of images, labels and depth maps, and errors that stay one line
that names the file, also when raised in a DataLoader worker."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.faults import truncate
from tests.data.release_trees import write_png16
from uda_data.convert import read_ids
from uda_data.datasets import EvalSet, cityscapes_folder
from uda_data.errors import DataError
from uda_data.files import decode_image, read_depth, read_image, read_label


def save(path, array, **options):
    Image.fromarray(array).save(path, **options)
    return path


def test_images_are_decoded_by_content_and_converted_to_8_bit_rgb(tmp_path):
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    jpeg = save(tmp_path / "photo.png", rgb, format="JPEG", quality=100)
    decoded = decode_image(jpeg)
    assert decoded.conversions == ("a JPEG file named .png, decoded as JPEG",)
    assert np.abs(decoded.pixels.astype(int) - rgb).max() <= 8

    grey = save(tmp_path / "grey.png", rgb[..., 0])
    np.testing.assert_array_equal(read_image(grey), np.repeat(rgb[..., :1], 3, axis=2))
    rgba = save(tmp_path / "rgba.png", np.dstack([rgb, np.zeros((4, 6), np.uint8)]))
    assert decode_image(rgba).conversions == ("alpha dropped",)
    np.testing.assert_array_equal(read_image(rgba), rgb)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_16_bit_images_are_scaled_to_8_bits(tmp_path, channels):
    values = np.array([[0, 257 * 10, 65535, 32896]], dtype=np.uint16)
    write_png16(tmp_path / "deep.png", np.repeat(values[..., None], channels, axis=2))
    decoded = decode_image(tmp_path / "deep.png")
    assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape == (1, 4, 3)
    assert decoded.pixels[0, :, 0].tolist() == [0, 10, 255, 128]
    assert "16-bit, scaled to 8 bits" in decoded.conversions


def test_32_bit_images_are_refused(tmp_path):
    path = save(tmp_path / "float.png", np.ones((4, 4), np.float32), format="TIFF")
    with pytest.raises(DataError, match=r"float\.png: a F image of 32-bit values"):
        read_image(path)


def test_labels_are_single_channel_8_bit_pngs(tmp_path):
    ids = np.array([[0, 18, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(read_label(save(tmp_path / "grey.png", ids)), ids)
    palette = Image.fromarray(ids).convert("P")
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_label(tmp_path / "palette.png"), ids)
    refused = {
        "rgb.png": (np.dstack([ids] * 3), "an 8-bit RGB PNG"),
        "deep.png": (ids.astype(np.uint16), "a 16-bit grey PNG"),
    }
    for name, (array, what) in refused.items():
        with pytest.raises(DataError, match=rf"{name}: {what}, but a trainId label is a single"):
            read_label(save(tmp_path / name, array))
    write_png16(tmp_path / "deep_rgb.png", np.dstack([ids.astype(np.uint16)] * 3))
    with pytest.raises(DataError, match=r"deep_rgb\.png: a 16-bit RGB PNG, but"):
        read_label(tmp_path / "deep_rgb.png")
    save(tmp_path / "lossy.png", np.zeros((8, 8), np.uint8), format="JPEG")
    for read in (read_label, read_ids):
        with pytest.raises(DataError, match=r"lossy\.png: a JPEG file"):
            read(tmp_path / "lossy.png")


def test_label_ids_outside_the_class_set_name_the_file_and_the_id(tmp_path):
    path = save(tmp_path / "label.png", np.array([[0, 19, 33, 255]], dtype=np.uint8))
    with pytest.raises(DataError, match=r"label\.png: label values \[19, 33\] are not trainIds"):
        read_label(path)


@pytest.mark.parametrize("read", [read_image, read_label])
def test_empty_truncated_and_dangling_files_name_the_file(tmp_path, read):
    path = save(tmp_path / "cut.png", np.random.default_rng(0).integers(0, 19, (64, 64), np.uint8))
    truncate(path)
    with pytest.raises(DataError, match=r"cut\.png: cannot be read as an image"):
        read(path)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file \(0 bytes\)"):
        read(tmp_path / "empty.png")
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(DataError, match=r"link\.png: a symbolic link to .*gone\.png, which does"):
        read(tmp_path / "link.png")


def test_npy_depth_must_be_a_finite_2_d_array(tmp_path):
    good = np.arange(8, dtype=np.float64).reshape(2, 4)
    np.save(tmp_path / "good.npy", good)
    np.testing.assert_array_equal(read_depth(tmp_path / "good.npy", "float_npy"), good)
    cases = {
        "nan": (np.array([[1.0, np.nan]]), r"depth holds 1 NaN or infinite values"),
        "inf": (np.array([[np.inf, -np.inf]]), r"depth holds 2 NaN or infinite values"),
        "cube": (np.zeros((2, 4, 1)), r"holds a 2x4x1 array, but a depth map is H x W"),
        "text": (np.array([["a", "b"]]), r"holds <U1 values, not numbers"),
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / f"{name}.npy", array)
        with pytest.raises(DataError, match=rf"{name}\.npy: {message}"):
            read_depth(tmp_path / f"{name}.npy", "float_npy")
    np.save(tmp_path / "objects.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    for name in ("objects", "corrupt"):
        with pytest.raises(DataError, match=rf"{name}\.npy: cannot be read as a \.npy array"):
            read_depth(tmp_path / f"{name}.npy", "float_npy")


def test_depth_pngs_are_single_channel(tmp_path):
    grey = np.array([[0, 100, 255]], dtype=np.uint8)
    as_rgb = save(tmp_path / "rgb_grey.png", np.dstack([grey] * 3))
    as_grey = save(tmp_path / "grey.png", grey)
    np.testing.assert_array_equal(
        read_depth(as_rgb, "depth_anything_png"), read_depth(as_grey, "depth_anything_png")
    )
    colours = np.dstack([grey, grey[:, ::-1], grey])
    with pytest.raises(DataError, match=r"colours\.png: an 8-bit RGB PNG of colours"):
        read_depth(save(tmp_path / "colours.png", colours), "depth_anything_png")


def test_data_errors_keep_their_message_and_kind_through_pickling():
    error = pickle.loads(pickle.dumps(DataError("x.png: broken", "values")))
    assert (str(error), error.problem) == ("x.png: broken", "values")


def test_an_error_in_a_loader_worker_reaches_the_caller_as_its_one_line(synthetic_root, tmp_path):
    root = shutil.copytree(synthetic_root / "target", tmp_path / "target")
    image = sorted((root / "leftImg8bit" / "val").rglob("*.png"))[2]
    truncate(image)
    loader = torch.utils.data.DataLoader(
        EvalSet(cityscapes_folder(root, "val")), batch_size=None, num_workers=1
    )
    with pytest.raises(DataError) as raised:
        list(loader)
    message = str(raised.value)
    assert message.startswith(f"{image}: cannot be read as an image") and "\n" not in message
