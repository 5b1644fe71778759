"""The dispersion head against the published ``DispDAFormerHead`` (Dispersion
``mmseg/models/decode_heads/dispersion_daformer_head.py``, cited by line), its published keys,
and our options reproducing the head as it was before."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.dispersion.published_fixture import (
    FIXTURE,
    assert_matches_debug,
    builder,
    formula_state,
    key_list,
    needs_fixture,
    run_check,
    segmentor_input,
)
from uda_dispersion.head import (
    DispersionHead,
    MultiDilationClassifier,
    SpatialGate,
)
from uda_dispersion.plugin import DispersionPlugin

OURS = {"summed": None, "final_segmentation": "host", "init": "pytorch"}
TASKS = ("initial_task_prediction_heads.", "multi_modal_distillation.", "heads.")


def reference_head(state: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``DispDAFormerHead.forward`` after the fusion (lines 352-363), in eval mode, written out
    from the reference on a state keyed like it: the oracle for ``DispersionHead``."""

    def conv(prefix, x, dilation=0):
        weight = state[prefix + "weight"]
        pad = dilation or weight.shape[-1] // 2
        return F.conv2d(x, weight, state.get(prefix + "bias"), padding=pad, dilation=dilation or 1)

    def bn(prefix, x):
        mean, var = state[prefix + "running_mean"], state[prefix + "running_var"]
        return F.batch_norm(x, mean, var, state[prefix + "weight"], state[prefix + "bias"])

    def bottleneck_pad(p, x):  # lines 83-103, no downsample at 256 -> 256
        out = F.relu(bn(p + "bn1.", conv(p + "conv1.", x)))
        out = F.relu(bn(p + "bn2.", conv(p + "conv2.", out)))
        return F.relu(bn(p + "bn3.", conv(p + "conv3.", out)) + x)

    def classifier_module(p, x):  # lines 157-161: returns inside the loop
        out = conv(p + "conv2d_list.0.", x, 6)
        out += conv(p + "conv2d_list.1.", x, 12)
        return out

    def sa_block(p, x):  # lines 114-117
        return conv(p + "conv.", x) * torch.sigmoid(conv(p + "attention.0.", x))

    layers = "initial_task_prediction_heads.layers."
    features = {
        t: bottleneck_pad(f"{layers}{t}.1.", bottleneck_pad(f"{layers}{t}.0.", x)) for t in "SD"
    }
    out = {  # lines 55-62: S from the fused features, D from its task features
        "S_init": classifier_module("initial_task_prediction_heads.conv_out.S.", x),
        "D_init": conv("initial_task_prediction_heads.conv_out.D.", features["D"]),
    }
    sa = "multi_modal_distillation.self_attention."
    distilled = {  # lines 137-142
        "S": features["S"] + sa_block(sa + "S.D.", features["D"]),
        "D": features["D"] + sa_block(sa + "D.S.", features["S"]),
    }
    out["S"] = classifier_module("heads.S.", distilled["S"])  # lines 360-361
    out["D"] = classifier_module("heads.D.", distilled["D"])
    return out


def published_head_state(model: str = "dispersion_daformer_b0") -> dict[str, torch.Tensor]:
    prefix = "model.decode_head." + ("head." if "hrda" in model else "")
    state = formula_state(model, prefix)
    return {k: v for k, v in state.items() if k.startswith(TASKS)}


@needs_fixture
def test_head_computes_what_the_published_head_computes_from_its_weights():
    """``DispDAFormerHead.forward`` (lines 350-363) on the fixture's weights: our head, loaded
    through ``published_head_state``, gives its S (``logits``), S_init, D and D_init."""
    state = published_head_state()
    plugin = DispersionPlugin({})
    head = plugin.build_head(256, 19)
    head.load_state_dict(plugin.published_head_state(state))
    head.eval()
    x = torch.randn(2, 256, 16, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features, outputs = head(x)
        expected = reference_head(state, x)
    assert features is x
    for ours, theirs in (
        ("logits", "S"),
        ("seg_init", "S_init"),
        ("disp", "D"),
        ("disp_init", "D_init"),
    ):
        torch.testing.assert_close(outputs[ours], expected[theirs], rtol=1e-4, atol=1e-5, msg=ours)


@needs_fixture
@pytest.mark.parametrize(
    "model", ["dispersion_daformer_b5", "dispersion_hrda_b5", "dispersion_mic_b5"]
)
def test_published_head_state_fits_every_full_size_key_list(model):
    """The MiT-B5 key lists' head keys all find their place, every shape checked."""
    prefix = "model.decode_head." + ("head." if "daformer" not in model else "")
    substate = {
        key[len(prefix) :]: torch.empty(shape)
        for key, shape, _ in key_list(model)["keys"]
        if key.startswith(prefix) and key[len(prefix) :].startswith(TASKS)
    }
    ours = DispersionPlugin({}).published_head_state(substate)
    assert len(ours) == len(substate) == len(DispersionPlugin({}).build_head(256, 19).state_dict())


def test_published_head_state_names_the_first_key_that_does_not_fit():
    plugin = DispersionPlugin({})
    with torch.device("meta"):
        head = plugin.build_head(256, 19)
    names = _published_names(head)
    state = {names[k]: torch.zeros(v.shape) for k, v in head.state_dict().items()}
    assert plugin.published_head_state(state).keys() == head.state_dict().keys()
    key = "heads.S.conv2d_list.1.weight"
    with pytest.raises(
        ValueError, match=r"heads\.S\.conv2d_list\.1\.weight' has shape \(19, 256, 1, 1\)"
    ):
        plugin.published_head_state(state | {key: torch.zeros(19, 256, 1, 1)})
    with pytest.raises(ValueError, match=r"'conv_seg\.weight' is not a key"):
        plugin.published_head_state(state | {"conv_seg.weight": torch.zeros(1)})
    missing = dict(state)
    del missing["multi_modal_distillation.self_attention.D.S.conv.weight"]
    with pytest.raises(
        ValueError, match=r"lacks 'multi_modal_distillation\.self_attention\.D\.S\.conv"
    ):
        plugin.published_head_state(missing)
    host = DispersionPlugin({"final_segmentation": "host"})
    with pytest.raises(ValueError, match=r"'heads\.S\.conv2d_list\.0\.weight' has no place"):
        host.published_head_state(state)


def _published_names(head: nn.Module) -> dict[str, str]:
    """Ours -> published for every key of ``head`` (the inverse of the head's table)."""
    from uda_dispersion.head import PUBLISHED_NAMES

    out = {}
    for key in head.state_dict():
        for old, new in PUBLISHED_NAMES.items():
            if key.startswith(new):
                out[key] = old + key[len(new) :]
    return out


def test_classifier_sums_only_first_two_dilations_like_reference():
    """``Classifier_Module.forward`` (lines 157-161) returns inside its loop: conv2d_list.0 and
    .1 (dilations 6, 12) are summed, .2 and .3 are stored and never run."""
    torch.manual_seed(0)
    classifier = MultiDilationClassifier(8, 3, (6, 12, 18, 24), summed=2)
    x = torch.randn(1, 8, 20, 20)
    with torch.no_grad():
        expected = classifier.branches[0](x) + classifier.branches[1](x)
        torch.testing.assert_close(classifier(x), expected)
        for branch in classifier.branches[2:]:
            branch.weight.fill_(1.0)
        torch.testing.assert_close(classifier(x), expected)
    assert len(classifier.state_dict()) == 8  # all four stored, as in the published files


def test_all_dilations_option_sums_every_branch_like_before():
    """Ours (``classifier_branches=all``): every convolution counts."""
    torch.manual_seed(0)
    classifier = MultiDilationClassifier(4, 3, (1, 2, 3, 4))
    x = torch.randn(1, 4, 10, 10)
    torch.testing.assert_close(classifier(x), sum(b(x) for b in classifier.branches))
    plugin = DispersionPlugin({"classifier_branches": "all"})
    assert plugin.build_head(16, 19).seg_init.summed == 4
    assert DispersionPlugin({}).build_head(16, 19).seg_init.summed == 2


def test_initial_segmentation_reads_the_fused_features_like_reference():
    """``InitialTaskPredictionModule.forward`` line 61: ``conv_out["S"](x)`` on the fused
    features, not on the S task features (line 60 reads the D features for D)."""
    torch.manual_seed(0)
    head = DispersionHead(16, 19).eval()
    x = torch.randn(1, 16, 12, 12)
    with torch.no_grad():
        before = head(x)[1]["seg_init"]
        for p in head.seg_features.parameters():
            p.add_(1.0)
        after, expected = head(x)[1]["seg_init"], head.seg_init(x)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(after, expected)


def test_final_segmentation_is_the_heads_classifier_on_distilled_features_like_reference():
    """Lines 137-142 and 360-361, 383: the test output is ``heads.S`` (a multi-dilation
    classifier) on S features + SABlock(D features); it goes out as ``outputs["logits"]``
    and the fused features come back unchanged (the host classifier does not run)."""
    torch.manual_seed(0)
    head = DispersionHead(16, 19).eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        features, outputs = head(x)
        seg, disp = head.seg_features(x), head.disp_features(x)
        expected = head.seg_final(seg + head.disp_to_seg(disp))
        disp_final = head.disp_final(disp + head.seg_to_disp(seg))
    assert features is x and set(outputs) == {"logits", "seg_init", "disp_init", "disp"}
    torch.testing.assert_close(outputs["logits"], expected)
    torch.testing.assert_close(outputs["disp"], disp_final)
    assert head.project is None


def test_spatial_gate_is_the_published_sa_block():
    """``SABlock`` (lines 106-117): conv 3x3 without bias times sigmoid(conv 3x3 without bias)."""
    torch.manual_seed(0)
    gate = SpatialGate(4)
    x = torch.randn(1, 4, 6, 6)
    assert gate.attention.bias is None and gate.features.bias is None
    expected = gate.features(x) * torch.sigmoid(gate.attention(x))
    torch.testing.assert_close(gate(x), expected)


def test_host_option_gives_the_refined_features_to_the_host_classifier_like_before():
    """Ours (``final_segmentation=host``): no ``logits``; the distilled segmentation features,
    projected back to the decoder's width, go to the host classifier."""
    torch.manual_seed(0)
    head = DispersionHead(16, 19, width=8, **OURS).eval()
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        features, outputs = head(x)
        seg, disp = head.seg_features(x), head.disp_features(x)
        expected = head.project(seg + head.disp_to_seg(disp))
    assert set(outputs) == {"seg_init", "disp_init", "disp"} and head.seg_final is None
    torch.testing.assert_close(features, expected)


def test_head_initialisation_like_reference():
    """Lines 315-321 (and 154-155): every convolution's weight N(0, 0.01), biases left at
    PyTorch's default (not zeroed), BatchNorm weight 1 and bias 0."""
    torch.manual_seed(0)
    head = DispersionHead(256, 19)
    weights = torch.cat([m.weight.flatten() for m in head.modules() if isinstance(m, nn.Conv2d)])
    assert weights.std().item() == pytest.approx(0.01, rel=0.02)
    assert abs(weights.mean().item()) < 1e-4
    bias = head.seg_final.branches[0].bias  # PyTorch's default: U(-1/sqrt(fan_in), +)
    bound = 1 / (256 * 9) ** 0.5
    assert bias.abs().max() <= bound and bias.abs().max() > bound / 2
    for m in head.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_pytorch_init_option_is_the_previous_initialisation():
    """Ours (``head_init=pytorch``): PyTorch's defaults, the classifiers N(0, 0.01) with zero
    bias, drawn in the same order as before (so a seed gives the same head)."""
    torch.manual_seed(0)
    head = DispersionHead(256, 19, **OURS)
    for classifier in (head.seg_init, head.disp_final):
        for conv in classifier.branches:
            assert torch.all(conv.bias == 0)
            assert conv.weight.std().item() == pytest.approx(0.01, rel=0.05)
    conv1 = head.seg_features[0].conv1.weight  # kaiming-uniform(a=sqrt(5)): std 1/sqrt(3 fan_in)
    assert conv1.std().item() == pytest.approx((3 * 256) ** -0.5, rel=0.05)


def test_published_presets_name_the_published_head_and_initialise_the_fusion_like_it():
    """The reference's loop (lines 315-321) runs over all of ``DispDAFormerHead``, which holds
    the DAFormer fusion (``fuse_layer``, line 300): the published dispersion presets set
    ``model.decoder_init="normal"`` and name every published head value; ``quick`` takes ours."""
    from uda_methods.run import resolve_config

    with_plugin = {"plugins": {"dispersion": {}}}
    for name in ("gta2cs-daformer", "gta2cs-hrda", "gta2cs-mic", "synthia2cs-mic", "mic"):
        cfg = resolve_config(name, None, with_plugin, [])
        disp = cfg.plugins["dispersion"]
        assert cfg.model.decoder_init == "normal" and cfg.runtime.find_unused_parameters, name
        assert disp["final_segmentation"] == "head" and disp["classifier_branches"] == "first_two"
        assert disp["head_init"] == "normal" and disp["head_width"] is None
        assert disp["auxiliary"]["architecture"] == "published"
        assert disp["auxiliary"]["batchnorm"] == "batch"
    quick = resolve_config("quick", None, with_plugin, []).plugins["dispersion"]
    assert (quick["final_segmentation"], quick["classifier_branches"]) == ("host", "all")
    assert (quick["head_init"], quick["head_width"]) == ("pytorch", 32)
    assert (quick["auxiliary"]["architecture"], quick["auxiliary"]["batchnorm"]) == (
        "timm",
        "running",
    )


def test_published_teacher_pass_computes_only_the_segmentation():
    """A training-mode head without gradients (the EMA teacher) returns the same ``logits`` and
    nothing else; in eval mode every output is computed."""
    torch.manual_seed(0)
    head = DispersionHead(16, 19)
    x = torch.randn(2, 16, 12, 20)
    with torch.no_grad():
        _, full = head.eval()(x)
        head.train()
        for m in head.modules():  # the same normalisation in both passes
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        features, teacher = head(x)
    assert set(teacher) == {"logits"} and features is x
    torch.testing.assert_close(teacher["logits"], full["logits"])


def test_published_head_trains_every_parameter_but_the_unused_classifier_branches():
    """With gradients every output is computed and every parameter learns, except the
    classifiers' branches 2 and 3, which the published forward never runs."""
    torch.manual_seed(0)
    head = DispersionHead(16, 19, width=8)
    _, outputs = head(torch.randn(2, 16, 12, 20))
    sum(o.square().mean() for o in outputs.values()).backward()
    unused = {n for n, p in head.named_parameters() if p.grad is None}
    expected = {
        f"{c}.branches.{i}.{w}"
        for c in ("seg_init", "disp_final", "seg_final")
        for i in (2, 3)
        for w in ("weight", "bias")
    }
    assert unused == expected


@needs_fixture
def test_exactly_the_tensors_the_reference_leaves_unused_do_not_change_the_logits():
    """README quirk 11 / ``manifest.json``: of the head's parameters, conv_out.*, heads.D,
    self_attention.D.S and heads.S's branches 2 and 3 do not affect the published test
    output; in ours the same ones, and only they, leave ``logits`` unchanged."""
    import json

    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    unused = manifest["models"]["dispersion_daformer_b0"]["unused"]["unused_parameters"]
    unused = {k.removeprefix("decode_head.") for k in unused} - {"conv_seg.weight", "conv_seg.bias"}
    torch.manual_seed(0)
    head = DispersionHead(16, 19).eval()
    x = torch.randn(1, 16, 10, 10)
    names = _published_names(head)
    with torch.no_grad():
        before = head(x)[1]["logits"]
        for name, parameter in head.named_parameters():
            saved = parameter.clone()
            parameter.add_(0.5)
            changed = not torch.equal(head(x)[1]["logits"], before)
            parameter.copy_(saved)
            assert changed == (names[name] not in unused), names[name]


@needs_fixture
@pytest.mark.slow
def test_dispersion_models_give_the_reference_logits_from_both_layouts(tmp_path):
    """Dispersion(DAFormer) and Dispersion(HRDA) (README quirks 11-12) through ``check.py``:
    logits within 1e-4 at the sampled pixels and argmax on at least 99.9 % of the pixels,
    from the published and the training layout (the student, ``model.*``)."""
    models = ["dispersion_daformer_b0", "dispersion_hrda_b0"]
    callable_ = "tests.methods.published_fixture:predict"
    report = run_check(models, ["published", "training"], callable_, tmp_path)
    assert len(report["results"]) == 4
    for result in report["results"]:
        assert result["status"] == "PASS", result
        assert result["max_abs_logit_diff"] <= 1e-4 and result["pixel_agreement"] >= 0.999


@needs_fixture
@pytest.mark.slow
def test_dispersion_daformer_head_outputs_match_the_reference_intermediates(tmp_path):
    """``debug.npz`` of ``dispersion_daformer_b0``: the fused features the head reads and its
    S, S_init, D, D_init (lines 350-363) at their 8 recorded positions."""
    from tests.methods.published_fixture import published_model

    path = tmp_path / "dispersion_daformer_b0.pth"
    torch.save(builder().build("dispersion_daformer_b0", "published"), path)
    model, _ = published_model(path, "dispersion_daformer")
    seen = {}
    head = model.heads["dispersion"]
    head.register_forward_hook(lambda m, i, o: seen.update(fused=i[0], **o[1]))
    with torch.no_grad():
        model(segmentor_input("dispersion_daformer_b0"))
    names = {"fuse_layer": "fused", "S": "logits", "S_init": "seg_init", "D": "disp"}
    for theirs, ours in (names | {"D_init": "disp_init"}).items():
        assert_matches_debug("dispersion_daformer_b0", f"head.{theirs}", seen[ours])
