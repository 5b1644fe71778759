"""`uda predict`: pictures of a trained model's predictions on arbitrary images."""

import dataclasses
import hashlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.published.fixture import image_of, manifest, needs_fixture
from uda_cli import predict
from uda_cli.main import app
from uda_core.evaluation import predict_logits
from uda_core.model import SegOutput
from uda_data.classes import colorize
from uda_data.transforms import Sample, resize, to_tensors
from uda_methods.published_files import load_segmentation_model
from uda_methods.published_models import scaled_input_size
from uda_methods.run import load_trained_model

runner = CliRunner()


def uda(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "pictures"
    (folder / "street").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)).save(
        folder / "street" / "b.jpg"
    )
    Image.fromarray(rng.integers(0, 256, (64, 128), dtype=np.uint8)).save(folder / "grey.png")
    return folder


def test_predict_writes_pictures_at_each_images_size(checkpoint, pictures, tmp_path):
    out = tmp_path / "out"
    result = uda("predict", checkpoint, pictures, pictures / "a.png", "--out", out)
    assert result.exit_code == 2 and "would both be written as a_*.png" in result.output
    result = uda("predict", checkpoint, pictures, "--out", out)
    assert result.exit_code == 0, result.output
    assert "predicted 3 image(s)" in result.output
    for stem, size in [("a", (50, 37)), ("street/b", (200, 90)), ("grey", (128, 64))]:
        for kind in ("pred", "overlay"):
            written = Image.open(out / f"{stem}_{kind}.png")
            assert written.size == size and written.mode == "RGB"
    assert not list(out.rglob("*_disp.png"))


def test_predictions_are_those_of_eval(checkpoint, tmp_path):
    picture = np.random.default_rng(1).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "val.png")
    result = uda("predict", checkpoint, tmp_path / "val.png", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    model, cfg, _ = load_trained_model(checkpoint, [])
    tensor = to_tensors(resize(Sample(picture), cfg.data.val_resize))["image"][None]
    expected = colorize(predict_logits(model.eval(), tensor, cfg.eval).argmax(1)[0].numpy())
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out" / "val_pred.png")), expected)
    overlay = np.array(Image.open(tmp_path / "out" / "val_overlay.png")).astype(int)
    assert np.abs(overlay - (picture.astype(int) + expected) / 2).max() <= 1


def test_sliding_window_mode(checkpoint, pictures, tmp_path):
    result = uda(
        "predict",
        checkpoint,
        pictures / "street" / "b.jpg",
        "--out",
        tmp_path / "out",
        "--mode",
        "slide",
        "--set",
        "eval.crop_size=[64,64]",
        "--set",
        "eval.stride=[32,32]",
    )
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out" / "b_pred.png").size == (200, 90)


class _WithDispersion(torch.nn.Module):
    """A trained model plus a dispersion output that is 0 on the left half, 1 on the right."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        output = self.model(image)
        disp = torch.zeros_like(output.logits[:, :1])
        disp[..., disp.shape[-1] // 2 :] = 1.0
        return SegOutput(output.logits, aux={"disp": disp})


def test_dispersion_models_get_a_dispersion_map(checkpoint, pictures, tmp_path, monkeypatch):
    def load(*args):
        loaded = load_segmentation_model(*args)
        return dataclasses.replace(loaded, model=_WithDispersion(loaded.model))

    monkeypatch.setattr(predict, "load_segmentation_model", load)
    result = uda("predict", checkpoint, pictures / "grey.png", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "1 with a dispersion map" in result.output
    disp = np.array(Image.open(tmp_path / "out" / "grey_disp.png"))
    assert disp.shape == (64, 128) and disp.dtype == np.uint8
    assert disp[:, :56].max() == 0 and disp[:, 72:].min() == 255


def test_missing_and_unreadable_images_are_named(checkpoint, pictures, tmp_path):
    result = uda("predict", checkpoint, tmp_path / "nope.png", "--out", tmp_path / "out")
    assert result.exit_code == 2 and "nope.png does not exist" in result.output
    (pictures / "broken.png").write_bytes(b"garbage")
    result = uda("predict", checkpoint, pictures, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.output.splitlines()[-1] == (
        f"error: {pictures / 'broken.png'}: cannot be read as an image (not an image format "
        f"Pillow reads); replace the file; the other 3 were predicted into {tmp_path / 'out'}"
    )
    assert (tmp_path / "out" / "a_pred.png").is_file()


@pytest.mark.parametrize("pipeline", ["ours", "reference"])
def test_a_folder_with_unreadable_images_predicts_the_others_and_names_each(
    checkpoint, pictures, tmp_path, pipeline
):
    """A truncated, an empty and a non-image file among good ones: the good ones are predicted,
    each bad one is named on its own line, and the command ends with one error line and exit
    status 2 (a user error, not 1), no traceback."""
    whole = (pictures / "a.png").read_bytes()
    (pictures / "cut.png").write_bytes(whole[: len(whole) // 2])
    (pictures / "empty.png").write_bytes(b"")
    (pictures / "notes.jpg").write_text("not a picture")
    out = tmp_path / "out"
    result = uda("predict", checkpoint, pictures, "--out", out, "--pipeline", pipeline)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    skipped = [line for line in result.output.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == [
        f"skipped {pictures / name}" for name in ("cut.png", "empty.png", "notes.jpg")
    ]
    assert result.output.splitlines()[-1] == (
        f"error: 3 of 6 images cannot be read (above); the other 3 were predicted into {out}"
    )
    assert {p.name for p in out.rglob("*_pred.png")} == {
        "a_pred.png",
        "b_pred.png",
        "grey_pred.png",
    }


def test_save_logits_writes_the_logits_of_the_pictures(checkpoint, pictures, tmp_path):
    result = uda("predict", checkpoint, pictures / "a.png", "--out", tmp_path, "--save-logits")
    assert result.exit_code == 0 and "(ours pipeline)" in result.output, result.output
    logits = np.load(tmp_path / "a_logits.npy")
    assert logits.shape == (1, 19, 37, 50) and logits.dtype == np.float32
    colours = np.array(Image.open(tmp_path / "a_pred.png"))
    np.testing.assert_array_equal(colours, colorize(logits[0].argmax(0).astype(np.uint8)))


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((1024, 2048), (1024, 512), (512, 1024)),  # Cityscapes at DAFormer's scale
        ((1052, 1914), (1024, 512), (512, 932)),  # GTA5
        ((4, 5), (4, 2), (2, 3)),  # 2.5 rounds up: int(x + 0.5), not round()
        ((37, 50), (1024, 512), (512, 692)),
        ((128, 2048), (2048, 1024), (128, 2048)),
    ],
)
def test_reference_sizes_are_mmcvs_keep_ratio_rescale(size, scale, expected):
    assert scaled_input_size(*size, scale) == expected


def test_reference_pipeline_resizes_8_bit_images_with_opencv():
    bgr = np.random.default_rng(2).integers(0, 256, (64, 100, 3), dtype=np.uint8)
    tensor = predict.reference_input(bgr, (64, 32))
    assert tuple(tensor.shape) == (1, 3, 32, 50)
    small = cv2.resize(bgr, (50, 32), interpolation=cv2.INTER_LINEAR)[..., ::-1]
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    expected = ((small - mean.astype(np.float32)) / std).astype(np.float32).transpose(2, 0, 1)
    np.testing.assert_allclose(tensor[0].numpy(), expected, atol=1e-6, rtol=0)


@needs_fixture
@pytest.mark.parametrize("model", ["daformer_b0", "hrda_b0"])
def test_reference_pipeline_makes_the_reference_networks_input(model):
    """Bit for bit the tensor the anchors' test pipeline made of the fixture's PNG."""
    spec = manifest()["models"][model]
    scale = tuple(spec["inference"]["test_pipeline"][1]["img_scale"])
    tensor = predict.reference_input(predict.read_bgr(image_of(model)), scale)
    info = manifest()["inputs"][spec["input"]]
    digest = hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
    assert digest == info["normalized_sha256"]
