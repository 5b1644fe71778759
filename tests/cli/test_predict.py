"""`uda predict`: pictures of a trained model's predictions on arbitrary images."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli import predict
from uda_cli.main import app
from uda_core.evaluation import predict_logits
from uda_core.model import SegOutput
from uda_data.classes import colorize
from uda_data.transforms import Sample, resize, to_tensors
from uda_methods.run import load_trained_model

runner = CliRunner()


def uda(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_root):
    work = tmp_path_factory.mktemp("work")
    result = runner.invoke(
        app, ["train", "--method", "source-only", "--name", "p", *tiny_overrides(work, 2)]
    )
    assert result.exit_code == 0, result.output
    return work / "p" / "checkpoints" / "iter_000002.pt"


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
    def load(path, overrides):
        model, cfg, state = load_trained_model(path, overrides)
        return _WithDispersion(model), cfg, state

    monkeypatch.setattr(predict, "load_trained_model", load)
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
    assert result.exit_code == 1
    assert "broken.png: cannot be read as an image" in result.output
    assert (tmp_path / "out" / "a_pred.png").is_file()
