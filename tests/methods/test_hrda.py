"""HRDA: aligned detail crops, attention fusion, slide inference, loader margins, plugins."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from tests.methods.example_plugin import DepthHeadPlugin
from uda_cli.main import app
from uda_core.config import EvalConfig
from uda_core.evaluation import predict_logits, slide_average
from uda_core.method import UDABatch
from uda_data.datasets import TrainPipeline, margin_mask
from uda_data.transforms import Sample
from uda_methods.config import MethodConfig, ModelConfig
from uda_methods.models.hrda import Box, HRDAOutput, random_detail_box
from uda_methods.models.segmenter import Segmenter as PlainSegmenter
from uda_methods.registry import build_method_model, method_class

runner = CliRunner()
HRDA_TINY = ["--set", "method.hrda_detail_crop=[32,32]", "--set", "method.mic_mask_block=8"]


def tiny_model(method: MethodConfig, plugin=None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_method_model(ModelConfig(encoder="resnet10t", channels=16), method, 19)
    if plugin is not None:
        model.heads[plugin.name] = plugin.build_head(16, 19)
    return model


@settings(max_examples=200, deadline=None)
@given(
    st.integers(8, 300),
    st.integers(8, 300),
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from([1, 4, 8, 16]),
    st.integers(0, 2**31),
)
def test_detail_boxes_are_aligned_and_inside_the_image(h, w, ch, cw, divisible, seed):
    box = random_detail_box(h, w, (cw, ch), divisible, torch.Generator().manual_seed(seed))
    assert box.top % divisible == 0 and box.left % divisible == 0
    assert (box.height, box.width) == (min(ch, h), min(cw, w))
    assert box.top >= 0 and box.top + box.height <= h and box.left >= 0
    assert box.left + box.width <= w


def test_fused_output_is_the_attention_weighted_combination():
    model = tiny_model(MethodConfig(name="hrda", hrda_detail_crop=(32, 32))).eval()
    image = torch.randn(2, 3, 64, 96)
    box = Box(top=16, left=40, height=32, width=32)
    with torch.no_grad():
        out = model(image, detail_box=box)
        context = PlainSegmenter.forward(
            model, F.interpolate(image, scale_factor=0.5, mode="bilinear")
        )
        detail = PlainSegmenter.forward(model, image[..., 16:48, 40:72])
        attention = model.scale_attention(context.encoder_features)
    assert isinstance(out, HRDAOutput) and out.logits.shape == (2, 19, 16, 24)
    up = F.interpolate(context.logits, (16, 24), mode="bilinear")
    att = F.interpolate(attention, (16, 24), mode="bilinear")
    expected = up.clone()
    for y in range(16):
        for x in range(24):
            if 4 <= y < 12 and 10 <= x < 18:
                a = att[..., y, x]
                expected[..., y, x] = (
                    a * detail.logits[..., y - 4, x - 10] + (1 - a) * up[..., y, x]
                )
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert (
        out.attention[..., :4, :].abs().max() == 0 and out.attention[..., :, 18:].abs().max() == 0
    )
    assert out.attention.min().item() > 0 or out.attention[..., 4:12, 10:18].min() > 0


def test_slide_equals_whole_image_inference_when_one_window_covers_it():
    model = tiny_model(MethodConfig(name="source-only")).eval()
    image = torch.randn(2, 3, 64, 96)
    whole = predict_logits(model, image, EvalConfig(mode="whole"))
    slide = predict_logits(
        model, image, EvalConfig(mode="slide", crop_size=(96, 64), stride=(8, 8))
    )
    torch.testing.assert_close(slide, whole)


@pytest.mark.parametrize("batched", [True, False])
def test_overlapping_windows_are_averaged(batched):
    image = torch.zeros(2, 3, 12, 20)

    def predict(crops):  # each window predicts its own column index, at half resolution
        b, _, h, w = crops.shape
        x = torch.arange(w // 2, dtype=torch.float32).expand(b, 1, h // 2, w // 2)
        return {"logits": x, "flat": x[:, 0]}

    out = slide_average(predict, image, window=(8, 12), stride=(4, 4), batched=batched)
    total, count = torch.zeros(10), torch.zeros(10)
    for left in (0, 4, 8, 12):  # windows of width 8 at stride 4 over 20 px
        total[left // 2 : left // 2 + 4] += torch.arange(4.0)
        count[left // 2 : left // 2 + 4] += 1
    assert out["logits"].shape == (2, 1, 6, 10) and out["flat"].shape == (2, 6, 10)
    torch.testing.assert_close(out["logits"][0, 0, 0], total / count)
    torch.testing.assert_close(out["flat"][1, 5], total / count)


def test_batched_and_unbatched_slide_inference_agree():
    model = tiny_model(MethodConfig(name="hrda", hrda_detail_crop=(32, 32))).eval()
    image = torch.randn(1, 3, 64, 96)
    cfg = EvalConfig(mode="slide", crop_size=(64, 64), stride=(32, 32))
    batched = predict_logits(model, image, cfg)
    model.batched_slide = False
    unbatched = predict_logits(model, image, cfg.model_copy(update={"batched": False}))
    torch.testing.assert_close(batched, unbatched, atol=1e-4, rtol=1e-4)


def _count_encoder_calls(model) -> list[int]:
    sizes: list[int] = []
    model.encoder.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    return sizes


def test_shared_encoder_pass_gives_the_two_passes_result_with_one_encoder_call():
    """The reference runs the encoder twice at inference (``hrda_encoder_decoder.py``: the
    context, then the batched detail windows). With ``hrda_shared_encoder_pass`` the context
    image and the 9 windows of a 64 x 64 image (32 px windows, stride 16) go through it as one
    batch of 2 + 18, and the fused logits and aux maps are those of two passes."""
    plugin = DepthHeadPlugin({})
    shared = tiny_model(MethodConfig(name="hrda", hrda_detail_crop=(32, 32)), plugin).eval()
    two = tiny_model(
        MethodConfig(name="hrda", hrda_detail_crop=(32, 32), hrda_shared_encoder_pass=False),
        plugin,
    ).eval()
    two.load_state_dict(shared.state_dict())
    calls_shared, calls_two = _count_encoder_calls(shared), _count_encoder_calls(two)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = shared(image), two(image)
    assert calls_shared == [20] and calls_two == [2, 18]
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.detail.logits, b.detail.logits, atol=1e-5, rtol=1e-5)
    assert a.aux.keys() == b.aux.keys() and a.aux
    for key in a.aux:
        torch.testing.assert_close(a.aux[key], b.aux[key], atol=1e-5, rtol=1e-5)


def test_shared_encoder_pass_only_where_each_image_is_encoded_on_its_own():
    """Two passes, as the reference, wherever batching would change the features: BatchNorm
    in training mode (the resnet encoder of a student, or of a teacher in training mode),
    active stochastic depth, context and windows of different sizes (a 64 x 96 image: context
    32 x 48, 15 windows of 32 x 32)."""
    model = tiny_model(MethodConfig(name="hrda", hrda_detail_crop=(32, 32)))
    calls = _count_encoder_calls(model)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 64, 64))
        model.eval()(torch.randn(2, 3, 64, 96))
    assert calls == [2, 18, 2, 30]


def test_the_ema_teacher_of_mit_shares_its_encoder_pass():
    """MiT has no batch statistics; the EMA teacher silences its stochastic depth, so the
    teacher's pseudo-labels take one encoder pass, while the student in training (drop path
    0.1) takes two."""
    from uda_core.ema import EMATeacher
    from uda_methods.models.segmenter import encodes_per_image

    method = MethodConfig(name="hrda", hrda_detail_crop=(32, 32))
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="mit_b0", decoder="daformer", channels=16)
    student = build_method_model(cfg, method, 19).train()
    teacher = EMATeacher(student)
    teacher.train(True)
    assert not encodes_per_image(student.encoder)
    assert encodes_per_image(teacher.model.encoder)
    calls = _count_encoder_calls(teacher.model)
    teacher(torch.randn(1, 3, 64, 64))
    assert calls == [10]


def test_encodes_per_image_rules():
    from torch import nn

    from uda_methods.models.segmenter import encodes_per_image
    from uda_methods.models.shade import StyleHallucination

    assert not encodes_per_image(nn.BatchNorm2d(3).train())
    assert encodes_per_image(nn.BatchNorm2d(3).eval())
    assert not encodes_per_image(nn.BatchNorm2d(3, track_running_stats=False).eval())
    assert not encodes_per_image(nn.Dropout(0.1).eval())  # timm's attention reads its p
    assert encodes_per_image(nn.Sequential(nn.Dropout(0.0), nn.LayerNorm(3)).train())
    assert not encodes_per_image(StyleHallucination(4).train())
    assert encodes_per_image(StyleHallucination(4).eval())


def test_target_margins_are_masked_before_cropping():
    rng = np.random.default_rng(0)
    sample = Sample(np.zeros((100, 200, 3), np.uint8), {}, "x")
    pipeline = TrainPipeline((64, 64), flip_prob=0.0, valid_margins=(10, 30, 5, 7))
    full = margin_mask((200, 100), (10, 30, 5, 7))
    assert full.sum() == (100 - 40) * (200 - 12)
    seen = 0
    for _ in range(30):
        valid = pipeline(sample, rng)["valid"].numpy()
        hits = [
            (t, left)
            for t in range(37)
            for left in range(137)
            if np.array_equal(full[t : t + 64, left : left + 64], valid)
        ]
        assert hits
        seen += valid.size - valid.sum()
    assert seen > 0


class RecordingPlugin(DepthHeadPlugin):
    """The example depth-head plugin, recording what each loss call sees; halves weights."""

    def __init__(self):
        super().__init__({})
        self.calls = []

    def adjust_weights(self, target, pseudo_label, weight):
        return weight * 0.5

    def losses(self, output, targets, pixel_weight):
        self.calls.append((output, dict(targets), pixel_weight))
        return super().losses(output, targets, pixel_weight)


def uda_batch(valid: bool = True) -> UDABatch:
    g = torch.Generator().manual_seed(1)
    source = {
        "image": torch.randn(2, 3, 64, 64, generator=g),
        "label": torch.randint(0, 19, (2, 64, 64), generator=g),
        "depth": 255 * torch.rand(2, 64, 64, generator=g),
    }
    target = {
        "image": torch.randn(2, 3, 64, 64, generator=g),
        "depth": 255 * torch.rand(2, 64, 64, generator=g),
    }
    if valid:
        target["valid"] = torch.ones(2, 64, 64)
        target["valid"][:, :8] = 0
    return UDABatch(source, target)


def run_step(name: str, **settings) -> tuple[RecordingPlugin, UDABatch, dict]:
    cfg = MethodConfig(name=name, hrda_detail_crop=(32, 32), mic_mask_block=8, **settings)
    plugin = RecordingPlugin()
    model = tiny_model(cfg, plugin)
    method = method_class(name)(model, Accelerator(cpu=True), cfg, {plugin.name: plugin})
    batch = uda_batch()
    logs = {k: float(v) for k, v in method.train_step(batch, 0).items()}
    return plugin, batch, logs


def test_plugins_see_both_scales_and_detail_targets_follow_the_crop():
    plugin, batch, logs = run_step("hrda")
    assert {
        "src.seg",
        "src.detail.seg",
        "src.depth-head.depth",
        "src.detail.depth-head.depth",
    } <= logs.keys()
    assert {"mix.seg", "mix.detail.seg", "mix.detail.depth-head.depth"} <= logs.keys()
    assert len(plugin.calls) == 4  # source and mixed, each fused then detail
    for (fused, targets, weight), (detail, cropped, detail_weight) in zip(
        plugin.calls[::2], plugin.calls[1::2], strict=True
    ):
        box = fused.box
        assert fused.aux["depth"].shape == fused.logits[:, 0].shape == (2, 16, 16)
        assert fused.context.aux["depth"].shape == (2, 8, 8)
        assert detail.aux["depth"].shape == detail.logits[:, 0].shape == (2, 8, 8)
        for key in ("depth_norm", "label", "image"):
            torch.testing.assert_close(cropped[key], box.crop(targets[key]))
        if weight is not None:
            torch.testing.assert_close(detail_weight, box.crop(weight))
    torch.testing.assert_close(plugin.calls[0][1]["depth_norm"], batch.source["depth"] / 255)


@pytest.fixture(scope="module")
def hrda_run(tmp_path_factory, synthetic_root):
    work = tmp_path_factory.mktemp("hrda")
    result = runner.invoke(
        app, ["train", "--method", "hrda", "--name", "h", *tiny_overrides(work, 3), *HRDA_TINY]
    )
    assert result.exit_code == 0, result.output
    return work / "h"


def test_uda_train_hrda_runs_and_uda_eval_reads_its_checkpoint(hrda_run, tmp_path):
    config = json.loads((hrda_run / "config.json").read_text())
    assert config["method"]["name"] == "hrda" and config["method"]["hrda_detail_crop"] == [32, 32]
    state = torch.load(hrda_run / "checkpoints" / "iter_000003.pt", weights_only=False)
    assert any(k.startswith("scale_attention.") for k in state["model"])
    records = [json.loads(line) for line in (hrda_run / "metrics.jsonl").read_text().splitlines()]
    assert "mix.detail.seg" in records[0]
    out = tmp_path / "eval.json"
    args = ["eval", str(hrda_run / "checkpoints" / "iter_000003.pt"), "--output", str(out)]
    result = runner.invoke(
        app,
        [
            *args,
            "--mode",
            "slide",
            "--set",
            "eval.crop_size=[64,64]",
            "--set",
            "eval.stride=[32,32]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert 0 <= json.loads(out.read_text())["mIoU"] <= 1
