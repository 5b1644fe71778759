"""`uda dispersion map`: writes the colourised map and the raw values; bad input gives one
line and a non-zero exit."""

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uda_dispersion import reference

APPS = Path(__file__).parents[2] / "apps" / "cli" / "src"
if not any(Path(p) == APPS for p in sys.path):
    sys.path.insert(0, str(APPS))
pytest.importorskip("uda_data")
dispersion_cli = pytest.importorskip("uda_cli.dispersion")
from typer.testing import CliRunner  # noqa: E402

from uda_data.depth import decode_depth_anything  # noqa: E402


@pytest.fixture
def pngs(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (12, 16)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    labels[:4] = 255
    depth = rng.integers(0, 256, labels.shape).astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "labels.png")
    Image.fromarray(depth).save(tmp_path / "depth.png")
    return tmp_path, labels, depth


def invoke(*args):
    return CliRunner().invoke(dispersion_cli.app, ["map", *map(str, args)])


def test_map_writes_png_and_raw_values_matching_the_reference(pngs):
    folder, labels, depth = pngs
    result = invoke(
        "--labels", folder / "labels.png", "--depth", folder / "depth.png",
        "--out", folder / "map.png", "--npy", folder / "map.npy", "--min-area", "4",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    raw = np.load(folder / "map.npy")
    expected = reference.dispersion_map(labels, decode_depth_anything(depth), min_area=4)[0, 0]
    np.testing.assert_allclose(raw, expected, atol=1e-5)
    image = np.asarray(Image.open(folder / "map.png"))
    assert image.shape == (*labels.shape, 3)
    assert (image[raw < 0] == 0).all() and (image[raw >= 0].sum(-1) > 0).all()


def test_colorize_runs_dark_to_bright_and_paints_fill_black():
    rgb = dispersion_cli.colorize(np.array([[-1.0, 0.0, 0.5, 1.0]], np.float32))
    assert rgb[0, 0].tolist() == [0, 0, 0]
    brightness = rgb[0, 1:].astype(int).sum(-1)
    assert brightness[0] < brightness[1] < brightness[2]


def test_compute_map_reads_raw_npy_depth(pngs):
    folder, labels, _ = pngs
    depth = np.random.default_rng(1).random(labels.shape).astype(np.float32)
    np.save(folder / "depth.npy", depth)
    values, count = dispersion_cli.compute_map(
        folder / "labels.png", folder / "depth.npy", depth_encoding="raw", min_area=4
    )
    np.testing.assert_allclose(
        values, reference.dispersion_map(labels, depth, min_area=4)[0, 0], atol=1e-5
    )
    assert count > 0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "not found"),
        ("size", "resize the depth map"),
        ("rgb_labels", "single-channel trainId PNG"),
        ("not_an_image", "cannot be read as an image"),  # training's reader and message
        ("depth_16bit", "depth maps are 8-bit single-channel PNGs"),
        ("depth_colour", "not a single-channel depth map"),
        ("depth_nan_npy", "NaN or infinite"),
        ("no_folder", "does not exist"),
        ("connectivity", "--connectivity must be 4 or 8"),
    ],
)
def test_bad_input_prints_one_line_and_exits_2(pngs, case, message):
    folder, labels, depth = pngs
    label_path, depth_path, out = folder / "labels.png", folder / "depth.png", folder / "m.png"
    if case == "missing":
        depth_path = folder / "nope.png"
    elif case == "size":
        Image.fromarray(depth[:-4]).save(depth_path)
    elif case == "rgb_labels":
        Image.fromarray(np.stack([labels] * 3, -1)).save(label_path)
    elif case == "not_an_image":
        depth_path.write_text("not a png")
    elif case == "no_folder":
        out = folder / "missing" / "m.png"
    elif case == "depth_16bit":
        Image.fromarray(depth.astype(np.uint16) * 200).save(depth_path)
    elif case == "depth_colour":
        colour = np.stack([depth, depth[::-1], depth], -1)
        Image.fromarray(colour).convert("P").save(depth_path)
    elif case == "depth_nan_npy":
        depth_path = folder / "depth.npy"
        np.save(depth_path, np.full(depth.shape, np.nan, np.float32))
    extra = ["--depth-encoding", "raw"] if case == "depth_nan_npy" else []
    extra += ["--connectivity", "6"] if case == "connectivity" else []
    result = invoke("--labels", label_path, "--depth", depth_path, "--out", out, *extra)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
