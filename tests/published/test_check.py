"""The fixture's checker on our loading and prediction: for every model and layout, the reference
code's logits within 1e-4 at the sampled pixels and its argmax on at least 99.9 % of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.published.fixture import (
    SEGMENTORS,
    build,
    built_files,
    expected,
    image_of,
    needs_fixture,
    predict_command,
    run_check,
    sampled,
    segmentor_input,
)
from uda_cli.main import app
from uda_methods.published_files import COPIES, load_segmentation_model

pytestmark = needs_fixture
runner = CliRunner()


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    return built_files(tmp_path_factory)


def _passed(report: dict) -> list[tuple[str, str]]:
    assert all(r["status"] == "PASS" for r in report["results"]), report["results"]
    for r in report["results"]:
        assert r["max_abs_logit_diff"] <= 1e-4 and r["pixel_agreement"] >= 0.999
    return [(r["model"], r["layout"]) for r in report["results"]]


@pytest.mark.slow
@pytest.mark.parametrize("model", SEGMENTORS)
def test_uda_predict_save_logits_gives_the_reference_logits(model, tmp_path):
    report = run_check([model], ["published", "training"], tmp_path, cmd=predict_command(tmp_path))
    assert _passed(report) == [(model, "published"), (model, "training")]


@pytest.mark.slow
def test_the_cli_path_gives_the_reference_logits_of_daformer_and_hrda(tmp_path):
    callable_ = "tests.published.fixture:cli_logits"
    report = run_check(["daformer_b0", "hrda_b0"], ["published"], tmp_path, callable_=callable_)
    assert _passed(report) == [("daformer_b0", "published"), ("hrda_b0", "published")]


@pytest.mark.slow
def test_load_auxiliary_gives_the_reference_logits_of_both_auxiliary_layouts(tmp_path):
    callable_ = "tests.published.fixture:auxiliary_logits"
    report = run_check(["aux_resnet50"], ["aux-raw", "aux-wrapped"], tmp_path, callable_=callable_)
    assert _passed(report) == [("aux_resnet50", "aux-raw"), ("aux_resnet50", "aux-wrapped")]


def test_the_default_copy_is_the_student_and_the_others_differ(built, tmp_path):
    """The reference test script evaluates ``model.*`` of a training file (quirk 1): ``uda
    predict`` gives its logits; the teacher (``ema_model.*``) and the ImageNet copy
    (``imnet_model.*``) compute others."""
    path = build("daformer_b0", "training", built)
    image, reference = image_of("daformer_b0"), expected("daformer_b0")
    result = runner.invoke(
        app, ["predict", str(path), str(image), "--out", str(tmp_path), "--save-logits"]
    )
    assert result.exit_code == 0 and "(reference pipeline)" in result.output, result.output
    student = sampled(np.load(tmp_path / f"{image.stem}_logits.npy"), reference["yx"])
    np.testing.assert_allclose(student, reference["logits"], atol=1e-4, rtol=0)

    crop = torch.from_numpy(segmentor_input("daformer_b0")[..., :64, :64])
    outputs = {}
    for copy in COPIES:
        loaded = load_segmentation_model(path, copy=copy)
        with torch.no_grad():
            outputs[copy] = loaded.model.eval()(crop).logits
    for copy in ("teacher", "imagenet"):
        assert (outputs[copy] - outputs["student"]).abs().max() > 0.1, copy
