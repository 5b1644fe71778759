"""The published networks, exactly, and published checkpoints as our models.

Each test of a reference behaviour cites the reference line (MIC 2f932a9 ``seg/...``, whose
MiT, DAFormer and HRDA files are those of HRDA c370b5b; Dispersion 604e8ea). Each option that
keeps our earlier behaviour has a test that it does. The fixture (``../shared/published``,
``UDA_PUBLISHED_FIXTURE``) holds the reference code's outputs for rebuilt checkpoints: the
tests that run it are slow.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tests.methods.example_plugin import DepthHeadPlugin
from tests.methods.published_fixture import FIXTURE, ROOT, published_model
from tests.methods.test_hrda import run_step, tiny_model
from tests.published.fixture import needs_fixture
from uda_core.config import EvalConfig
from uda_core.errors import UdaError
from uda_core.evaluation import predict_logits, slide_average
from uda_core.model import SegOutput
from uda_core.plugin import load_plugins
from uda_methods.config import MethodConfig, ModelConfig
from uda_methods.models.daformer import DAFormerDecoder
from uda_methods.models.hrda import Box, random_detail_box
from uda_methods.models.mit import MiTEncoder
from uda_methods.models.segmenter import Decoder, Segmenter
from uda_methods.presets import PUBLISHED_HRDA, preset
from uda_methods.published_models import (
    published_run_config,
    published_state_to_ours,
    published_test_logits,
    scaled_input_size,
)
from uda_methods.registry import build_method_model
from uda_methods.run import build_full_model

PUBLISHED_PRESETS = [
    "gta2cs-daformer",
    "gta2cs-hrda",
    "gta2cs-mic",
    "synthia2cs-daformer",
    "synthia2cs-hrda",
    "synthia2cs-mic",
]


# --- MiT -------------------------------------------------------------------------------------


def test_mit_norms_patch_embeddings_and_attention_are_the_reference_mits():
    """mix_transformer.py: blocks and stage norms LayerNorm eps 1e-6 (``mit_b0`` ... ``mit_b5``,
    lines 458-550), the patch-embedding norm and the attention's spatial-reduction norm
    PyTorch's 1e-5 (lines 78, 177); patch embedding 1 a 7x7 stride-4 conv, 2-4 3x3 stride 2
    (lines 227-251); heads 1, 2, 5, 8 scaled by head_dim ** -0.5 (line 66); sr ratios 8, 4, 2,
    1 (a conv of kernel and stride r); exact GELU in the MLP."""
    with torch.device("meta"):
        body = MiTEncoder(5).body
    assert body.patch_embed.norm.eps == 1e-5
    assert (body.patch_embed.proj.kernel_size, body.patch_embed.proj.stride) == ((7, 7), (4, 4))
    for i, (heads, sr) in enumerate(zip((1, 2, 5, 8), (8, 4, 2, 1), strict=True)):
        stage = getattr(body, f"stages_{i}")
        assert stage.norm.eps == 1e-6
        if i:
            assert stage.downsample.norm.eps == 1e-5
            assert stage.downsample.proj.kernel_size == (3, 3)
            assert stage.downsample.proj.stride == (2, 2)
        for block in stage.blocks:
            assert block.norm1.eps == block.norm2.eps == 1e-6
            attn = block.attn
            assert attn.num_heads == heads
            assert attn.scale == pytest.approx((attn.dim // heads) ** -0.5)
            if sr > 1:
                assert attn.sr.kernel_size == attn.sr.stride == (sr, sr)
                assert attn.norm.eps == 1e-5
            else:
                assert attn.sr is None
            assert isinstance(block.mlp.act, nn.GELU) and block.mlp.act.approximate == "none"


# --- DAFormer decoder initialisation --------------------------------------------------------


def _convs(decoder: nn.Module, classifier: nn.Module) -> list[nn.Conv2d]:
    return [m for m in decoder.modules() if isinstance(m, nn.Conv2d) and m is not classifier]


def test_daformer_init_is_mmcv_kaiming_fan_out():
    """mmcv 1.3 ``ConvModule.init_weights``: ``kaiming_init`` (normal, fan_out, ReLU, bias 0)
    for every ConvModule conv, BatchNorm 1 / 0; ``decode_head.py:72-73``: ``conv_seg``
    N(0, 0.01), bias 0; the linear embeddings keep PyTorch's default (mmcv leaves them)."""
    torch.manual_seed(0)
    decoder = DAFormerDecoder([32, 64, 160, 256], 19, init="mmcv")
    for conv in _convs(decoder, decoder.classifier):
        fan_out = conv.weight.shape[0] * conv.weight[0, 0].numel()
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
        assert abs(conv.weight.mean().item()) < 0.1 * math.sqrt(2 / fan_out)
    assert decoder.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert decoder.classifier.bias.abs().max() == 0
    for bn in (m for m in decoder.modules() if isinstance(m, nn.BatchNorm2d)):
        assert bn.weight.eq(1).all() and bn.bias.eq(0).all()
    for embed in decoder.embed:
        assert embed.weight.abs().max() <= 1 / math.sqrt(embed.in_features)


def test_published_hrda_scale_attention_is_initialised_like_a_daformer_head():
    """``hrda_head.py:49-78``: the scale attention is a ``DAFormerHead`` (1x1 ConvModule
    fusion), so mmcv's initialisation holds there too: Kaiming fan_out, ``conv_seg`` N(0, 0.01)."""
    torch.manual_seed(0)
    cfg = ModelConfig(encoder="resnet10t", decoder="daformer", decoder_init="mmcv")
    head = build_method_model(cfg, MethodConfig(name="hrda"), 19).scale_attention
    fuse = head.fuse[0].weight
    assert fuse.std().item() == pytest.approx(math.sqrt(2 / fuse.shape[0]), rel=0.05)
    assert head.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert head.classifier.bias.abs().max() == 0


def test_dispersion_decoder_init_draws_every_conv_from_normal_0_01():
    """Dispersion ``dispersion_daformer_head.py:314-320``: every Conv2d of the head, the host
    ASPP included, ``normal_(0, 0.01)``, BatchNorm 1 / 0; ``conv_seg``'s bias 0 (init_cfg)."""
    torch.manual_seed(0)
    decoder = DAFormerDecoder([32, 64, 160, 256], 19, init="normal")
    for conv in [*_convs(decoder, decoder.classifier), decoder.classifier]:
        assert conv.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert decoder.classifier.bias.abs().max() == 0


def test_decoder_init_pytorch_keeps_pytorchs_defaults_as_before():
    """Ours before: PyTorch's default (Kaiming uniform, a = sqrt(5): |w| <= 1 / sqrt(fan_in),
    random biases); it is the field's default, so saved run configs rebuild as they were."""
    assert ModelConfig().decoder_init == "pytorch"
    torch.manual_seed(0)
    decoder = DAFormerDecoder([32, 64, 160, 256], 19, init="pytorch")
    torch.manual_seed(0)
    before = DAFormerDecoder([32, 64, 160, 256], 19)
    old = before.state_dict()
    for key, value in decoder.state_dict().items():
        assert torch.equal(value, old[key]), key
    fan_in = decoder.classifier.in_channels
    assert decoder.classifier.weight.abs().max() <= 1 / math.sqrt(fan_in)
    assert decoder.classifier.bias.abs().max() > 0


# --- HRDA fusion -----------------------------------------------------------------------------

IMAGE = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
BOX = Box(top=16, left=40, height=32, width=32)


def _branches(model, image, box):
    context = Segmenter.forward(
        model, F.interpolate(image, scale_factor=0.5, mode="bilinear", align_corners=False)
    )
    return context, Segmenter.forward(model, box.crop(image))


def test_hrda_fusion_masks_attention_at_context_resolution_like_reference():
    """``hrda_head.py:170-191``: att = sigmoid(scale attention) on the context grid, masked to
    the detail box there (box / (4 / 0.5) with int()); lr = (1 - att) * context at that grid;
    both upsampled x2 (bilinear, align_corners False); the detail inserted at box / 4;
    fused = up(att) * detail + up(lr)."""
    method = MethodConfig(
        name="hrda", hrda_detail_crop=(32, 32), hrda_fusion="weight-then-upsample"
    )
    model = tiny_model(method).eval()
    with torch.no_grad():
        out = model(IMAGE, detail_box=BOX)
        context, detail = _branches(model, IMAGE, BOX)
        att = model.scale_attention(context.encoder_features)
    mask = torch.zeros(2, 1, 8, 12)
    mask[..., 2:6, 5:9] = 1  # rows 16 / 8 .. 48 / 8, columns 40 / 8 .. 72 / 8
    att = att * mask
    up_lr = F.interpolate((1 - att) * context.logits, scale_factor=2.0, mode="bilinear")
    up_att = F.interpolate(att, scale_factor=2.0, mode="bilinear")
    inserted = torch.zeros_like(up_lr)
    inserted[..., 4:12, 10:18] = detail.logits
    torch.testing.assert_close(out.logits, up_att * inserted + up_lr)
    torch.testing.assert_close(out.attention, up_att)


def test_hrda_fusion_upsample_then_weight_option_is_the_previous_fusion():
    """Ours before: attention and context upsampled to the output grid first, the attention
    masked there: fused = att * detail + (1 - att) * up(context) inside the box."""
    method = MethodConfig(
        name="hrda", hrda_detail_crop=(32, 32), hrda_fusion="upsample-then-weight"
    )
    assert MethodConfig().hrda_fusion == "upsample-then-weight"
    model = tiny_model(method).eval()
    with torch.no_grad():
        out = model(IMAGE, detail_box=BOX)
        context, detail = _branches(model, IMAGE, BOX)
        att = F.interpolate(
            model.scale_attention(context.encoder_features), (16, 24), mode="bilinear"
        )
    att = att * Box(4, 10, 8, 8).mask(att)
    up = F.interpolate(context.logits, (16, 24), mode="bilinear")
    inserted = torch.zeros_like(up)
    inserted[..., 4:12, 10:18] = detail.logits
    torch.testing.assert_close(out.logits, att * inserted + (1 - att) * up)


def test_hrda_inference_does_not_mask_the_attention_like_reference():
    """``hrda_head.py:166-176`` masks only with a training crop box; at test time
    (``hr_crop_box`` None) fused = up(att) * hr_seg + up((1 - att) * lr) everywhere."""
    method = MethodConfig(
        name="hrda", hrda_detail_crop=(32, 32), hrda_fusion="weight-then-upsample"
    )
    model = tiny_model(method).eval()
    with torch.no_grad():
        out = model(IMAGE)
        context = _branches(model, IMAGE, BOX)[0]
        att = model.scale_attention(context.encoder_features)
    up_lr = F.interpolate((1 - att) * context.logits, scale_factor=2.0, mode="bilinear")
    up_att = F.interpolate(att, scale_factor=2.0, mode="bilinear")
    torch.testing.assert_close(out.logits, up_att * out.detail.logits + up_lr)


def test_hrda_plugin_outputs_come_from_the_context_pass_like_reference():
    """Dispersion ``dispersion_head.py:176-182, 212``: D, S_init and D_init are the context's,
    upsampled x2 (bilinear) without attention; only the segmentation is fused."""
    plugin = DepthHeadPlugin({})
    method = MethodConfig(name="hrda", hrda_detail_crop=(32, 32), hrda_aux_fusion="context")
    model = tiny_model(method, plugin).eval()
    with torch.no_grad():
        out = model(IMAGE, detail_box=BOX)
    expected = F.interpolate(out.context.aux["depth"][:, None], scale_factor=2.0, mode="bilinear")
    torch.testing.assert_close(out.aux["depth"], expected[:, 0])


def test_hrda_aux_fusion_fused_option_fuses_plugin_outputs_as_before():
    """Ours before: plugin outputs fused like the logits, with the attention's mean over
    classes for maps of another channel count."""
    assert MethodConfig().hrda_aux_fusion == "fused"
    plugin = DepthHeadPlugin({})
    method = MethodConfig(name="hrda", hrda_detail_crop=(32, 32), hrda_aux_fusion="fused")
    model = tiny_model(method, plugin).eval()
    with torch.no_grad():
        out = model(IMAGE, detail_box=BOX)
    att = out.attention.mean(1)
    up = F.interpolate(out.context.aux["depth"][:, None], (16, 24), mode="bilinear")[:, 0]
    inserted = torch.zeros_like(up)
    inserted[:, 4:12, 10:18] = out.detail.aux["depth"]
    torch.testing.assert_close(out.aux["depth"], att * inserted + (1 - att) * up)


@given(st.integers(0, 400), st.integers(0, 400), st.integers(1, 300), st.integers(1, 300))
def test_detail_boxes_scale_to_feature_grids_with_int_like_reference(top, left, h, w):
    """``hrda_head.py:23-33`` (``scale_box``): each corner int(coordinate / scale)."""
    for scale in (4, 8, 4 / 0.5):
        box = Box(top, left, h, w).scaled(scale)
        assert (box.top, box.top + box.height) == (int(top / scale), int((top + h) / scale))
        assert (box.left, box.left + box.width) == (int(left / scale), int((left + w) / scale))


def _offsets(size: int, crop: int, divisible: int, last_offset: bool) -> set[int]:
    g = torch.Generator().manual_seed(0)
    return {
        random_detail_box(size, size, (crop, crop), divisible, g, last_offset).top
        for _ in range(1000)
    }


def test_detail_crops_are_drawn_like_get_crop_bbox():
    """``hrda_encoder_decoder.py:19-32``: offset = randint(0, (margin + 1) // divisible) *
    divisible: for a 512 detail in a 1024 crop (margin 512) 0, 8, ..., 504, never 512."""
    assert _offsets(1024, 512, 8, last_offset=False) == set(range(0, 505, 8))
    assert _offsets(64, 32, 8, last_offset=False) == {0, 8, 16, 24}
    assert _offsets(32, 32, 8, last_offset=False) == {0}


def test_detail_last_offset_option_draws_every_aligned_offset_as_before():
    """Ours before: every aligned offset, the last one (the crop's far edge) included."""
    assert MethodConfig().hrda_detail_last_offset is True
    assert _offsets(64, 32, 8, last_offset=True) == {0, 8, 16, 24, 32}


@pytest.mark.parametrize("name", ["hrda", "mic"])
def test_hrda_and_mic_train_with_the_published_options(name):
    """One training step with every published HRDA option on, a plugin head included."""
    plugin, _, logs = run_step(name, **PUBLISHED_HRDA)
    assert {"src.seg", "src.detail.seg", "mix.depth-head.depth"} <= logs.keys()
    assert all(math.isfinite(float(v)) for v in logs.values())
    fused = plugin.calls[0][0]
    assert fused.aux["depth"].shape == fused.logits[:, 0].shape


# --- windows: HRDA's detail crops and the test-time slide ----------------------------------


def reference_windows(size: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """``encoder_decoder.py:294-305`` and ``hrda_encoder_decoder.py:106-119``."""
    grids = max(size - crop + stride - 1, 0) // stride + 1
    out = []
    for i in range(grids):
        end = min(i * stride + crop, size)
        out.append((max(end - crop, 0), end))
    return out


@settings(max_examples=40, deadline=None)
@given(st.integers(4, 80), st.integers(4, 80), st.integers(2, 40), st.integers(2, 40), st.data())
def test_windows_follow_the_reference_grid_crop_major(height, width, ch, cw, data):
    """Detail crops (``hrda_encoder_decoder.py:99-121``) and test-time windows
    (``encoder_decoder.py:282-312``): max(H - crop + stride - 1, 0) // stride + 1 windows per
    axis at i * stride, shifted inward at the border, cut to the image, all windows of all
    images in one batch, window-major over the image batch (crop i of image b at i * B + b)."""
    sh, sw = data.draw(st.integers(1, ch)), data.draw(st.integers(1, cw))
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([ys, xs, torch.zeros_like(ys)]).float()[None].repeat(2, 1, 1, 1)
    image[1, 2] = 1
    seen = []

    def predict(crops):
        seen.append(crops)
        return {"logits": crops}

    slide_average(predict, image, (cw, ch), (sw, sh), batched=True)
    expected = [
        (y, x) for y in reference_windows(height, ch, sh) for x in reference_windows(width, cw, sw)
    ]
    (crops,) = seen
    assert crops.shape[0] == 2 * len(expected)
    for i, ((y1, y2), (x1, x2)) in enumerate(expected):
        for b in (0, 1):
            crop = crops[2 * i + b]
            assert crop.shape[-2:] == (y2 - y1, x2 - x1)
            assert (crop[0, 0, 0], crop[1, 0, 0], crop[2, 0, 0]) == (y1, x1, b)


class StridedModel(nn.Module):
    """A fake segmenter: a fixed 1x1 conv of the image at stride 4."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x):
        return SegOutput(self.conv(F.avg_pool2d(x, 4)))


def test_slide_inference_resizes_each_window_sums_and_divides_like_reference():
    """``encoder_decoder.py:282-350``: each window's logits resized bilinearly to the window
    (``encode_decode``, lines 98-109), padded into the image, summed, divided by the count."""
    torch.manual_seed(0)
    model, image = StridedModel(), torch.randn(1, 3, 40, 72)
    out = predict_logits(model, image, EvalConfig(mode="slide", crop_size=(32, 24), stride=(16, 8)))
    preds, count = torch.zeros(1, 5, 40, 72), torch.zeros(1, 1, 40, 72)
    for y1, y2 in reference_windows(40, 24, 8):
        for x1, x2 in reference_windows(72, 32, 16):
            crop = image[..., y1:y2, x1:x2]
            logits = F.interpolate(model(crop).logits, crop.shape[-2:], mode="bilinear")
            preds += F.pad(logits, (x1, 72 - x2, y1, 40 - y2))
            count[..., y1:y2, x1:x2] += 1
    torch.testing.assert_close(out, preds / count)


def test_whole_inference_resizes_to_the_network_input_then_to_the_original_size():
    """``encoder_decoder.py:98-109, 353-370``: whole mode resizes the logits to the network
    input (``encode_decode``), then to the original image size (``rescale``)."""
    torch.manual_seed(0)
    model, image = StridedModel(), torch.randn(1, 3, 48, 96)
    cfg = published_run_config("daformer", "mit_b0")
    out = published_test_logits(model, image, cfg, original_size=(100, 200))
    step = F.interpolate(model(image).logits, (48, 96), mode="bilinear")
    torch.testing.assert_close(out, F.interpolate(step, (100, 200), mode="bilinear"))


def test_test_scale_keeps_the_ratio_like_mmcv_rescale():
    """mmcv ``rescale_size``: factor min(long scale / long side, short scale / short side),
    each side int(side * factor + 0.5); the pipelines' ``Resize(keep_ratio=True)``."""
    assert scaled_input_size(1024, 2048, (1024, 512)) == (512, 1024)
    assert scaled_input_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert scaled_input_size(256, 1024, (1024, 512)) == (256, 1024)
    assert scaled_input_size(128, 2048, (2048, 1024)) == (128, 2048)
    assert scaled_input_size(720, 1280, (1024, 512)) == (512, 910)


# --- the Segmenter's "logits" output ---------------------------------------------------------


class LogitsHead(nn.Module):
    def forward(self, fused):
        return fused, {"logits": fused[:, :3] * 2, "extra": fused[:, :1]}


class CountingDecoder(Decoder):
    channels = 4

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def fuse(self, features):
        return features[0]

    def classify(self, fused):
        self.calls += 1
        return fused[:, :3]


def test_a_head_returning_logits_replaces_the_decoders_classifier():
    """Interface 1: a head output named ``logits`` is the segmentation (the published
    dispersion head makes the final S itself); the decoder's classifier does not run."""
    decoder = CountingDecoder()
    model = Segmenter(nn.Identity(), decoder)
    features = [torch.randn(2, 4, 8, 8)]
    plain = model(features)
    model.heads["seg"] = LogitsHead()
    out = model(features)
    assert decoder.calls == 1
    torch.testing.assert_close(out.logits, 2 * features[0][:, :3])
    torch.testing.assert_close(plain.logits, features[0][:, :3])
    assert set(out.aux) == {"extra"}


# --- state conversion ------------------------------------------------------------------------


def key_list(name: str) -> list[tuple[str, list[int], str]]:
    return json.loads((FIXTURE / "keys" / f"{name}.json").read_text())["keys"]


def meta_state(name: str) -> dict[str, torch.Tensor]:
    """A published model's segmentor state as meta tensors (shapes only, nothing allocated)."""
    return {
        key.removeprefix("model."): torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
        for key, shape, dtype in key_list(name)
        if key.startswith("model.")
    }


@functools.cache
def meta_model(family: str, encoder: str):
    """The published model of ``family`` on the meta device (shapes only), and its plugins."""
    cfg = published_run_config(family, encoder)
    plugins = load_plugins(cfg.plugins)
    with torch.device("meta"):
        return build_full_model(cfg, plugins), plugins


def _family(name: str) -> str:
    family = name.rsplit("_", 1)[0]
    return family.replace("mic", "hrda")


@needs_fixture
@pytest.mark.parametrize(
    "name",
    [
        "daformer_b5",
        "hrda_b5",
        "mic_b5",
        "dispersion_daformer_b5",
        "dispersion_hrda_b5",
        "dispersion_mic_b5",
    ],
)
def test_full_size_b5_key_lists_convert_with_every_shape_checked(name):
    """Every tensor of the full-size published MiT-B5 models maps to one of ours of the same
    shape, and every one of ours is filled (``auxiliary_net.*`` aside, quirk 3)."""
    family = _family(name)
    model, plugins = meta_model(family, "mit_b5")
    if family.startswith("dispersion") and not hasattr(
        plugins.get("dispersion"), "published_head_state"
    ):
        pytest.skip("the dispersion plugin has no published_head_state yet")
    state = meta_state(name)
    out = published_state_to_ours(state, family, model, plugins)
    expected = model.state_dict()
    assert list(out) == list(expected)
    assert all(out[k].shape == v.shape for k, v in expected.items())


@needs_fixture
def test_conversion_names_the_first_key_that_does_not_fit():
    """Unknown, mis-shaped and missing keys fail with the published key and what was
    expected; the mmcv loader would only have warned (quirk 2)."""
    model, _ = meta_model("hrda", "mit_b0")
    state = meta_state("hrda_b0")
    with pytest.raises(UdaError, match=r"'decode_head\.head\.foo\.weight' is no tensor"):
        published_state_to_ours(
            {**state, "decode_head.head.foo.weight": torch.empty(1)}, "hrda", model
        )
    wrong = {**state, "backbone.block1.0.attn.q.weight": torch.empty(64, 64, device="meta")}
    with pytest.raises(UdaError, match=r"'backbone\.block1\.0\.attn\.q\.weight' has shape "):
        published_state_to_ours(wrong, "hrda", model)
    missing = {k: v for k, v in state.items() if k != "decode_head.scale_attention.conv_seg.bias"}
    with pytest.raises(UdaError, match=r"lacks 'decode_head\.scale_attention\.conv_seg\.bias'"):
        published_state_to_ours(missing, "hrda", model)
    extra = {**state, "backbone.block1.5.norm1.weight": torch.empty(32, device="meta")}
    with pytest.raises(UdaError, match=r"'backbone\.block1\.5\.norm1\.weight' would be our"):
        published_state_to_ours(extra, "hrda", model)
    with pytest.raises(UdaError, match=r"expected \[32, 3, 7, 7\]"):
        published_state_to_ours(meta_state("hrda_b5"), "hrda", model)
    with pytest.raises(UdaError, match=r"'decode_head\.head\.conv_seg\.weight' is no tensor"):
        published_state_to_ours(state, "daformer", meta_model("daformer", "mit_b0")[0])


@needs_fixture
def test_conversion_skips_the_auxiliary_network_and_fills_missing_batch_counters():
    """Quirks 3 and 14: ``auxiliary_net.*`` is never read at test time; a missing BatchNorm
    ``num_batches_tracked`` counts 0."""
    model, _ = meta_model("daformer", "mit_b0")
    state = {
        k: v
        for k, v in meta_state("daformer_b0").items()
        if not k.endswith("aspp_modules.0.bn.num_batches_tracked")
    }
    state["auxiliary_net.final_conv.weight"] = torch.empty(19, 64, 1, 1, device="meta")
    out = published_state_to_ours(state, "daformer", model)
    assert out["decoder.aspp.branches.0.1.num_batches_tracked"] == 0


# --- run configs and presets -----------------------------------------------------------------


def test_published_run_configs_hold_the_reference_test_settings():
    """DAFormer: whole image at the (1024, 512) scale (``uda_gta_to_cityscapes_512x512.py``,
    ``test_cfg=dict(mode='whole')``); HRDA/MIC: slide 1024x1024 at stride 512, batched, at
    the (2048, 1024) scale, detail windows 512 at stride 256 (``gtaHR2csHR_hrda.py:46-50``)."""
    daformer = published_run_config("daformer", "mit_b0")
    assert daformer.model.encoder == "mit_b0" and daformer.eval.mode == "whole"
    assert daformer.data.val_resize == (1024, 512) and not daformer.plugins
    hrda = published_run_config("hrda", "mit_b5", dataset="synthia")
    assert hrda.method.multi_resolution and hrda.data.val_resize == (2048, 1024)
    assert (hrda.eval.mode, hrda.eval.crop_size, hrda.eval.stride) == (
        "slide",
        (1024, 1024),
        (512, 512),
    )
    assert hrda.method.hrda_detail_crop == (512, 512)
    assert hrda.method.hrda_slide_stride == (256, 256)
    assert hrda.data.source.layout == "synthia"


@pytest.mark.parametrize("name", PUBLISHED_PRESETS)
def test_published_presets_name_each_published_behaviour(name):
    """Each published preset sets every reference-behaviour option explicitly."""
    cfg = preset(name)
    assert "decoder_init" in cfg.model.model_fields_set and cfg.model.decoder_init == "mmcv"
    assert {"hrda_fusion", "hrda_aux_fusion", "hrda_detail_last_offset"} <= (
        cfg.method.model_fields_set
    )
    assert cfg.method.hrda_fusion == "weight-then-upsample"
    assert cfg.method.hrda_aux_fusion == "context"
    assert cfg.method.hrda_detail_last_offset is False


# --- the fixture: the reference code's outputs -----------------------------------------------


def _fixture_input(name: str) -> torch.Tensor:
    """The model's input exactly as check.py makes it (its own PNG decoder and normalization)."""
    spec = importlib.util.spec_from_file_location("published_check", FIXTURE / "check.py")
    check = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode, before = True, sys.dont_write_bytecode
    try:
        spec.loader.exec_module(check)
    finally:
        sys.dont_write_bytecode = before
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    spec_in = manifest["inputs"][manifest["models"][name]["input"]]
    rgb = check.read_png(FIXTURE / spec_in["png"])
    return torch.from_numpy(check.normalize(rgb, spec_in["normalization"]))


def _build(name: str, layout: str, out) -> None:
    builder = FIXTURE / "build_checkpoint.py"
    subprocess.run(
        [sys.executable, str(builder), name, str(out), "--layout", layout],
        check=True,
        capture_output=True,
    )


def _intermediates(model, image: torch.Tensor, family: str) -> dict[str, torch.Tensor]:
    """Our tensors under the names of the fixture's ``debug.npz``."""
    calls: dict[str, list] = {}

    def record(name):
        return lambda module, inputs, output: calls.setdefault(name, []).append(output)

    model.encoder.register_forward_hook(record("backbone"))
    model.decoder.aspp.register_forward_hook(record("fuse"))
    model.decoder.classifier.register_forward_hook(record("out"))
    ours = {}
    if family == "daformer":
        with torch.no_grad():
            out = model(image)
        ours |= {f"backbone.{k}": calls["backbone"][0][k] for k in range(4)}
        return ours | {"head.fuse_layer": calls["fuse"][0], "head.out": out.logits}
    model.scale_attention.classifier.register_forward_hook(record("attention"))
    windows = torch.cat([image[..., x : x + 1024] for x in (0, 512, 1024)])  # manifest slide
    with torch.no_grad():
        out = model(windows)
    for k in range(4):
        ours[f"lr.backbone.{k}"], ours[f"hr.backbone.{k}"] = (c[k] for c in calls["backbone"])
    ours["lr.head.fuse_layer"], ours["hr.head.fuse_layer"] = calls["fuse"]
    ours["lr.head.out"], ours["hr.head.out"] = calls["out"]
    attention = calls["attention"][0]
    return ours | {
        "scale_attention.logits": attention,
        "lr_seg_weighted": (1 - torch.sigmoid(attention)) * out.context.logits,
        "hr_seg": out.detail.logits,
        "fused": out.logits,
    }


@pytest.mark.slow
@needs_fixture
@pytest.mark.parametrize("name,family", [("daformer_b0", "daformer"), ("hrda_b0", "hrda")])
def test_intermediates_match_the_reference_debug_values(name, family, tmp_path):
    """The fixture's ``debug.npz`` (backbone levels, head fusion and logits of each branch,
    scale-attention logits, weighted context, averaged detail, fused) at its sampled
    positions, within 1e-4: where a mismatch starts."""
    path = tmp_path / f"{name}.pth"
    _build(name, "published", path)
    model, _ = published_model(path, family)
    ours = _intermediates(model, _fixture_input(name), family)
    debug = np.load(FIXTURE / "expected" / name / "debug.npz")
    names = sorted(k.removesuffix(".shape") for k in debug.files if k.endswith(".shape"))
    assert set(names) == set(ours)
    for tensor in names:
        assert list(ours[tensor].shape) == list(debug[f"{tensor}.shape"]), tensor
        yx = debug[f"{tensor}.yx"]
        got = ours[tensor][:, :, yx[:, 0], yx[:, 1]].numpy()
        np.testing.assert_allclose(got, debug[f"{tensor}.values"], atol=1e-4, err_msg=tensor)


@pytest.mark.slow
@needs_fixture
@pytest.mark.parametrize("name", ["daformer_b0", "hrda_b0"])
def test_fixture_logits_match_the_reference_through_check_py(name, tmp_path):
    """check.py on the published and training layouts: logits at the 4096 sampled pixels
    within 1e-4, argmax agreement at least 99.9 % (the training layout's student, quirk 1).
    The dispersion models: ``tests/dispersion/test_published_head.py``."""
    report = tmp_path / "report.json"
    result = subprocess.run(
        [
            sys.executable,
            str(FIXTURE / "check.py"),
            "--models",
            name,
            "--layouts",
            "published",
            "training",
            "--callable",
            "tests.methods.published_fixture:predict",
            "--atol",
            "1e-4",
            "--json",
            str(report),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for case in json.loads(report.read_text())["results"]:
        assert case["status"] == "PASS", case
        assert case["max_abs_logit_diff"] <= 1e-4 and case["pixel_agreement"] >= 0.999
