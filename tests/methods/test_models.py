"""The models: MiT encoders as timm PVTv2, the SegFormer converter, DAFormer and DeepLabV2."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uda_core.errors import UdaError
from uda_methods.config import ModelConfig
from uda_methods.models.daformer import DAFormerDecoder, SeparableConvBNReLU
from uda_methods.models.light import LightDecoder, TimmEncoder
from uda_methods.models.mit import MiTEncoder, segformer_to_timm
from uda_methods.registry import build_model

# SegFormer's MiT sizes: depths and widths per stage (Xie et al. 2021, Table 6).
MIT = {
    0: ((2, 2, 2, 2), (32, 64, 160, 256)),
    1: ((2, 2, 2, 2), (64, 128, 320, 512)),
    2: ((3, 4, 6, 3), (64, 128, 320, 512)),
    3: ((3, 4, 18, 3), (64, 128, 320, 512)),
    4: ((3, 8, 27, 3), (64, 128, 320, 512)),
    5: ((3, 6, 40, 3), (64, 128, 320, 512)),
}
SR_RATIOS = (8, 4, 2, 1)


def segformer_state(size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A synthetic ImageNet checkpoint of SegFormer's MiT-B``size``, in its own names."""
    depths, dims = MIT[size]
    gen = torch.Generator().manual_seed(seed)
    shapes: dict[str, tuple[int, ...]] = {}
    for k, (depth, dim, sr) in enumerate(zip(depths, dims, SR_RATIOS, strict=True), start=1):
        in_dim, kernel = (3, 7) if k == 1 else (dims[k - 2], 3)
        shapes[f"patch_embed{k}.proj.weight"] = (dim, in_dim, kernel, kernel)
        for name in ("proj.bias", "norm.weight", "norm.bias"):
            shapes[f"patch_embed{k}.{name}"] = (dim,)
        for j in range(depth):
            block = {
                "norm1": (dim,),
                "attn.q": (dim, dim),
                "attn.kv": (2 * dim, dim),
                "attn.proj": (dim, dim),
                "norm2": (dim,),
                "mlp.fc1": (4 * dim, dim),
                "mlp.dwconv.dwconv": (4 * dim, 1, 3, 3),
                "mlp.fc2": (dim, 4 * dim),
            }
            if sr > 1:
                block |= {"attn.sr": (dim, dim, sr, sr), "attn.norm": (dim,)}
            for name, shape in block.items():
                shapes[f"block{k}.{j}.{name}.weight"] = shape
                shapes[f"block{k}.{j}.{name}.bias"] = (shape[0],)
        shapes[f"norm{k}.weight"] = shapes[f"norm{k}.bias"] = (dim,)
    shapes["head.weight"], shapes["head.bias"] = (1000, dims[-1]), (1000,)
    return {key: torch.randn(shape, generator=gen) for key, shape in shapes.items()}


def meta_mit(size: int) -> MiTEncoder:
    """MiT without allocating or initialising weights: shapes only, in milliseconds."""
    with torch.device("meta"):
        return MiTEncoder(size)


@pytest.mark.parametrize("size", sorted(MIT))
def test_mit_features_have_segformer_channels_strides_and_depths(size):
    depths, dims = MIT[size]
    encoder = meta_mit(size)
    features = encoder(torch.empty(2, 3, 64, 96, device="meta"))

    assert [f.shape for f in features] == [
        (2, dim, 64 // s, 96 // s) for dim, s in zip(dims, (4, 8, 16, 32), strict=True)
    ]
    assert encoder.channels == list(dims) and encoder.strides == [4, 8, 16, 32]
    stages = [getattr(encoder.body, f"stages_{i}") for i in range(4)]
    assert tuple(len(stage.blocks) for stage in stages) == depths
    assert all(
        block.mlp.fc1.out_features == 4 * dim
        for stage, dim in zip(stages, dims, strict=True)
        for block in stage.blocks
    )


def test_mit_b0_runs_on_real_tensors_with_linear_stochastic_depth():
    encoder = MiTEncoder(0, drop_path_rate=0.1)
    features = encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (32, 16, 16),
        (64, 8, 8),
        (160, 4, 4),
        (256, 2, 2),
    ]
    assert encoder.body.stages_3.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)


def test_mit_without_its_zero_dropouts_computes_what_timm_computes():
    """SegFormer's MiT (and timm's PVTv2) calls ``Dropout(p=0)`` three times per block; ours
    replaces them by ``nn.Identity`` (fewer dispatches). In training mode, stochastic depth
    included, the features and the gradients equal those of timm's unmodified model, bit for
    bit."""
    import timm

    from uda_methods.models.mit import MLP_RATIOS

    ours = MiTEncoder(0)
    theirs = timm.create_model(
        "pvt_v2_b0", features_only=True, mlp_ratios=MLP_RATIOS, drop_path_rate=0.1
    )
    theirs.load_state_dict(ours.body.state_dict())
    assert sum(type(m) is nn.Dropout for m in theirs.modules()) == 3 * 8  # 2 + 2 + 2 + 2 blocks
    assert [m.p for m in ours.modules() if type(m) is nn.Dropout] == [0.0] * 8  # attn_drop
    image = torch.randn(2, 3, 64, 64)
    outputs = []
    for model in (ours.body, theirs):
        model.train()
        torch.manual_seed(3)
        features = model(image)
        sum(f.square().mean() for f in features).backward()
        outputs.append((features, [p.grad for p in model.parameters()]))
    for a, b in zip(outputs[0][0], outputs[1][0], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(outputs[0][1], outputs[1][1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("size", sorted(MIT))
def test_segformer_names_and_shapes_convert_to_timm_for_every_size(size):
    converted = segformer_to_timm(segformer_state(size))
    expected = meta_mit(size).body.state_dict()
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in expected.items()}


def test_segformer_checkpoint_round_trips_into_the_model(tmp_path):
    state = segformer_state(0, seed=1)
    path = tmp_path / "mit_b0.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 300}}, path)

    model = build_model(ModelConfig(encoder="mit_b0", decoder="daformer", pretrained=path), 19)

    loaded = model.encoder.body.state_dict()
    assert torch.equal(loaded["patch_embed.proj.weight"], state["patch_embed1.proj.weight"])
    assert torch.equal(loaded["stages_1.downsample.norm.bias"], state["patch_embed2.norm.bias"])
    assert torch.equal(loaded["stages_2.blocks.1.attn.q.weight"], state["block3.1.attn.q.weight"])
    assert torch.equal(
        loaded["stages_0.blocks.0.mlp.dwconv.weight"], state["block1.0.mlp.dwconv.dwconv.weight"]
    )
    assert torch.equal(loaded["stages_3.norm.weight"], state["norm4.weight"])
    for key, value in segformer_to_timm(state).items():
        assert torch.equal(loaded[key], value), key


def test_timm_named_checkpoint_loads_as_well(tmp_path):
    source = MiTEncoder(0)
    full_names = {k.replace("stages_", "stages."): v for k, v in source.body.state_dict().items()}
    path = tmp_path / "pvt.pth"
    torch.save(full_names, path)

    target = MiTEncoder(0)
    target.load_pretrained(path)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(source.eval()(x)[-1], target.eval()(x)[-1])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("block2.1.mlp.fc2.bias"), r"lacks 'stages_1\.blocks\.1\.mlp\.fc2\.bias'"),
        (
            lambda s: s.update({"block1.0.attn.q.weight": torch.zeros(32, 16)}),
            r"'stages_0\.blocks\.0\.attn\.q\.weight' has shape \[32, 16\], expected \[32, 32\]",
        ),
        (
            lambda s: s.update({"block1.2.norm1.weight": torch.zeros(32)}),
            r"has 'stages_0\.blocks\.2\.norm1\.weight', which FeatureListNet lacks",
        ),
    ],
    ids=["missing-key", "wrong-shape", "extra-block"],
)
def test_converter_mismatch_is_a_one_line_error_naming_file_and_key(tmp_path, change, message):
    state = segformer_state(0)
    change(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UdaError, match=message) as info:
        MiTEncoder(0).load_pretrained(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_checkpoint_of_another_size_is_refused(tmp_path):
    path = tmp_path / "mit_b1.pth"
    torch.save(segformer_state(1), path)
    with pytest.raises(UdaError, match=r"'patch_embed\.proj\.weight' has shape \[64, 3, 7, 7\]"):
        MiTEncoder(0).load_pretrained(path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    cfg = ModelConfig(encoder="mit_b0", decoder="daformer", pretrained=tmp_path / "nope.pth")
    with pytest.raises(UdaError, match=r"nope\.pth does not exist"):
        build_model(cfg, 19)


def test_daformer_decoder_follows_the_published_design():
    decoder = DAFormerDecoder([64, 128, 320, 512], num_classes=19)
    assert [(e.in_features, e.out_features) for e in decoder.embed] == [
        (64, 256),
        (128, 256),
        (320, 256),
        (512, 256),
    ]
    first, *separable = decoder.aspp.branches
    assert first[0].kernel_size == (1, 1) and first[0].in_channels == 1024
    assert all(isinstance(b, SeparableConvBNReLU) for b in separable)
    depthwise = [b[0][0] for b in separable]
    assert [c.dilation[0] for c in depthwise] == [6, 12, 18]
    assert all(c.groups == 1024 and c.kernel_size == (3, 3) for c in depthwise)
    assert all(b[1][0].out_channels == 256 for b in separable)
    bottleneck = decoder.aspp.bottleneck[0]
    assert (bottleneck.in_channels, bottleneck.out_channels) == (1024, 256)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in decoder.modules())
    assert decoder.dropout.p == 0.1 and decoder.channels == 256


def test_daformer_gives_quarter_resolution_logits_and_exposes_fused_features():
    model = build_model(ModelConfig(encoder="mit_b0", decoder="daformer"), 19).eval()
    out = model(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == (2, 19, 16, 24)
    assert out.features.shape == (2, 256, 16, 24) and model.decoder.channels == 256
    assert torch.equal(out.logits, model.decoder.classify(out.features))


def parameters_without_gradient(model: nn.Module) -> list[str]:
    out = model.train()(torch.randn(2, 3, 32, 32))
    out.logits.square().mean().backward()
    return [name for name, p in model.named_parameters() if p.grad is None]


def test_every_daformer_parameter_receives_a_gradient():
    model = build_model(ModelConfig(encoder="mit_b0", decoder="daformer", drop_path_rate=0), 19)
    assert parameters_without_gradient(model) == []


def test_every_deeplabv2_parameter_receives_a_gradient():
    model = build_model(ModelConfig(encoder="resnet101", decoder="deeplabv2"), 19)
    assert parameters_without_gradient(model) == []


def test_deeplabv2_sums_all_four_dilated_branches_on_the_stride_8_bottleneck():
    model = build_model(ModelConfig(encoder="resnet101", decoder="deeplabv2"), 19).eval()
    decoder = model.decoder
    assert [b.dilation[0] for b in decoder.branches] == [6, 12, 18, 24]
    features = model.encoder(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (256, 16, 16),
        (512, 8, 8),
        (1024, 8, 8),
        (2048, 8, 8),
    ]
    with torch.no_grad():
        out = decoder(features)
        assert torch.equal(out.features, features[-1]) and out.logits.shape == (1, 19, 8, 8)
        for branch in decoder.branches:
            alone = branch(out.features)
            nn.init.zeros_(branch.weight)
            nn.init.zeros_(branch.bias)
            without = decoder(features).logits
            assert torch.allclose(out.logits - without, alone, atol=1e-5)
            assert alone.abs().max() > 1e-3
            out.logits = without
        assert not out.logits.any()


def test_resnet101_loads_a_torchvision_state_dict(tmp_path):
    source = TimmEncoder("resnet101", output_stride=8)
    state = {
        k: v for k, v in source.body.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    state |= {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)

    target = TimmEncoder("resnet101", output_stride=8)
    target.load_pretrained(path)
    loaded = target.body.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items() if k in loaded)

    state["layer3.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(state, path)
    with pytest.raises(UdaError, match=r"resnet101\.pth: 'layer3\.0\.conv1\.weight' has shape"):
        target.load_pretrained(path)


def test_light_decoder_splits_into_fuse_and_classify():
    decoder = LightDecoder([16, 32], num_classes=5, channels=8).eval()
    features = [torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    out = decoder(features)
    assert torch.equal(out.features, decoder.fuse(features)) and decoder.channels == 8
    assert torch.equal(out.logits, decoder.classify(out.features))


def test_mit_b5_daformer_has_the_published_85m_parameters():
    with torch.device("meta"):
        model = build_model(ModelConfig(encoder="mit_b5", decoder="daformer"), 19)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(85.2, abs=0.1)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(encoder="mit_b9"), r"'mit_b9' is not a timm model nor one of mit_b0, .*resnet101"),
        (dict(decoder="segformer"), r"unknown decoder 'segformer'; available: daformer, "),
        (dict(encoder="mit_b0", timm_pretrained=True), "not SegFormer's MiT"),
        (dict(decoder="deeplabv2", channels=64), "deeplabv2 has no decoder width"),
        (dict(pretrained="w.pth", timm_pretrained=True), "set one source of weights"),
    ],
)
def test_bad_model_config_is_a_one_line_error(cfg, message):
    with pytest.raises(UdaError, match=message):
        build_model(ModelConfig(**cfg), 19)
