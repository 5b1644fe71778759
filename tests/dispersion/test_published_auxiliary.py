"""The published auxiliary network (Dispersion ``auxiliary_network/AuxiliaryResNet50.py``), how
the reference calls it (``mmseg/models/uda/dacs.py``), loading its files, and our options."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.dispersion.published_fixture import (
    FIXTURE,
    assert_matches_debug,
    builder,
    key_list,
    needs_fixture,
    run_check,
)
from uda_dispersion import load_auxiliary, published_auxiliary_state
from uda_dispersion.auxiliary import (
    AuxiliaryNet,
    AuxiliaryResNet50,
    auxiliary_labels,
    geometric_input,
    read_auxiliary,
)
from uda_dispersion.plugin import DispersionPlugin
from uda_dispersion.pretrain import PretrainSettings, pretrain


@pytest.fixture(scope="module")
def published_state() -> dict[str, torch.Tensor]:
    """The fixture's ``aux_resnet50`` weights, as ``gta_auxiliary.pth`` holds them."""
    if not (FIXTURE / "check.py").is_file():
        pytest.skip(f"no published-checkpoint fixture at {FIXTURE}")
    return dict(builder().build("aux_resnet50", "aux-raw"))


@pytest.fixture(scope="module")
def random_net() -> AuxiliaryResNet50:
    torch.manual_seed(0)
    return AuxiliaryResNet50(19).eval()


def record(module: nn.Module, store: dict, name: str):
    """Keep ``module``'s output in ``store[name]`` (the hook returns None: output unchanged)."""

    def hook(m, inputs, output):
        store[name] = (inputs[0], output)

    return module.register_forward_hook(hook)


@needs_fixture
@pytest.mark.slow
def test_aux_resnet50_gives_the_reference_logits_from_both_published_layouts(tmp_path):
    """``AuxiliaryResNet50.py:60-83`` on the fixture's input, through ``check.py``: logits
    within 1e-4 at the sampled pixels, argmax on at least 99.9 % of the pixels."""
    callable_ = "tests.dispersion.published_fixture:auxiliary_logits"
    report = run_check(["aux_resnet50"], ["aux-raw", "aux-wrapped"], callable_, tmp_path)
    for result in report["results"]:
        assert result["status"] == "PASS", result
        assert result["max_abs_logit_diff"] <= 1e-4 and result["pixel_agreement"] >= 0.999


@needs_fixture
def test_aux_resnet50_intermediates_match_the_reference(published_state):
    """Every intermediate of ``AuxiliaryResNet50.forward`` (lines 67-82) that ``debug.npz``
    records (encoder.0, .1, .4-.6, decoder1-4, final_conv) matches at its 8 positions."""
    net = AuxiliaryResNet50(19)
    net.load_state_dict(published_state)
    net.eval()
    seen = {}
    modules = {f"encoder.{i}": net.encoder[i] for i in (0, 1, 4, 5, 6)}
    modules |= {f"decoder{i}": getattr(net, f"decoder{i}") for i in range(1, 5)}
    modules["final_conv"] = net.final_conv
    for name, module in modules.items():
        record(module, seen, name)
    x = torch.from_numpy(np.load(FIXTURE / "inputs" / "aux_depth_dispersion_1x2x128x192.npy"))
    with torch.no_grad():
        net(x)
    for name, (_, out) in seen.items():
        assert_matches_debug("aux_resnet50", name, out)


def test_aux_resnet50_has_torchvision_resnet50_keys_like_reference():
    """``AuxiliaryResNet50.py:34-45``: torchvision's ResNet-50 as ``encoder`` (conv1 replaced
    by a 2-channel one, pooling and fc dropped), decoder1-4 and final_conv; the state dict is
    the published one key for key, shape for shape, layer4 (``encoder.7``) included."""
    ours = {k: tuple(v.shape) for k, v in AuxiliaryResNet50(19).state_dict().items()}
    published = {k: tuple(shape) for k, shape, _ in key_list("aux_resnet50")["keys"]}
    assert ours == published
    assert list(ours) == list(published)  # in the published order too


def test_aux_resnet50_skips_the_stem_relu_and_max_pool_and_never_runs_layer4(random_net):
    """``AuxiliaryResNet50.py:68-72``: conv1, bn1, layer1-3 (``encoder[0, 1, 4, 5, 6]``), so
    layer3 runs at stride 8 and its input can be negative (no ReLU after bn1)."""
    ran = {}
    hooks = [record(module, ran, i) for i, module in enumerate(random_net.encoder)]
    with torch.no_grad():
        random_net(torch.randn(1, 2, 64, 96))
    for hook in hooks:
        hook.remove()
    assert list(ran) == [0, 1, 4, 5, 6]
    layer1_input = ran[4][0]
    assert (layer1_input < 0).any() and layer1_input.shape[-2:] == (32, 48)  # stride 2, no pool
    assert ran[6][1].shape == (1, 1024, 8, 12)  # layer3 at stride 8


def test_aux_resnet50_upsamples_x8_with_align_corners_like_reference(random_net):
    """``AuxiliaryResNet50.py:50, 81-82``: ``nn.Upsample(scale_factor=8, mode='bilinear',
    align_corners=True)`` on the 1x1 classifier's logits; decoder convs carry a bias (line 55)."""
    seen = {}
    hook = record(random_net.final_conv, seen, "logits")
    with torch.no_grad():
        out = random_net(torch.randn(2, 2, 64, 96))
    hook.remove()
    upsample = nn.Upsample(scale_factor=8, mode="bilinear", align_corners=True)
    expected = upsample(seen["logits"][1])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert out.shape == (2, 19, 64, 96)
    assert all(getattr(random_net, f"decoder{i}")[0].bias is not None for i in range(1, 5))


def test_aux_resnet50_output_is_resized_to_inputs_that_are_not_multiples_of_8(random_net):
    """The x8 output of a 60x90 input is 64x96; like ``dacs.py:451-452`` resizes it to the crop,
    we resize it (bilinear, align_corners=False) to the input."""
    seen = {}
    hook = record(random_net.final_conv, seen, "logits")
    with torch.no_grad():
        out = random_net(torch.randn(1, 2, 60, 90))
    hook.remove()
    up = F.interpolate(seen["logits"][1], scale_factor=8, mode="bilinear", align_corners=True)
    torch.testing.assert_close(out, F.interpolate(up, (60, 90), mode="bilinear"))


def test_auxiliary_reads_raw_depth_like_reference():
    """``dacs.py:442-449``: the network reads ``target_depth_img`` as loaded (0..255), not
    depth / 255, concatenated with the dispersion map."""
    depth, disp = 255 * torch.rand(2, 8, 12), torch.rand(2, 8, 12)
    torch.testing.assert_close(geometric_input(depth, disp), torch.stack([depth, disp], 1))


def test_timm_auxiliary_reads_depth_over_255_like_before():
    """Ours (``auxiliary.architecture=timm``): the network divides the depth by 255 itself,
    so its checkpoints (pre-trained on depth / 255) read the same loader input as before."""
    torch.manual_seed(0)
    net = AuxiliaryNet(3, "resnet10t").eval()
    x = torch.stack([255 * torch.rand(2, 32, 32), torch.rand(2, 32, 32)], 1)
    scaled = torch.stack([x[:, 0] / 255, x[:, 1]], 1)
    with torch.no_grad():
        before = net.classifier(net.decoder(net.encoder(scaled)[-1]))
        expected = F.interpolate(before, (32, 32), mode="bilinear")
        torch.testing.assert_close(net(x), expected)


def test_weight_hook_runs_the_auxiliary_batchnorm_on_batch_statistics_like_reference():
    """``dacs.py:132`` sets the frozen network to eval mode once, but the runner's ``train()``
    on the DACS wrapper switches it back every iteration, so during adaptation (lines 447-449)
    its BatchNorm layers normalise with the batch's statistics. Ours leaves the stored running
    statistics untouched."""
    torch.manual_seed(0)
    net = AuxiliaryResNet50(19)
    for m in net.modules():  # stored statistics far from any batch's
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
    net.eval().requires_grad_(False)
    stored = {k: v.clone() for k, v in net.state_dict().items()}
    depth, disp = 255 * torch.rand(2, 32, 48), torch.rand(2, 32, 48)
    labels = auxiliary_labels(net, depth, disp, (32, 16), batch_stats=True)
    with torch.no_grad():
        x = F.interpolate(geometric_input(depth, disp), (16, 32), mode="bilinear")
        logits = F.interpolate(net.train()(x), (32, 48), mode="bilinear")
    net.load_state_dict(stored)  # undo what the training-mode pass above did to the statistics
    net.eval()
    torch.testing.assert_close(labels, logits.argmax(1))
    # nothing changed: the hook's pass left the network's state and mode as they were
    labels_again = auxiliary_labels(net, depth, disp, (32, 16), batch_stats=True)
    assert not net.training and torch.equal(labels_again, labels)
    for key, value in net.state_dict().items():
        assert torch.equal(value, stored[key]), key


def test_running_batchnorm_option_uses_the_stored_statistics_like_before():
    """Ours (``auxiliary.batchnorm=running``): the frozen network in eval mode."""
    torch.manual_seed(0)
    net = AuxiliaryNet(19, "resnet10t").eval().requires_grad_(False)
    depth, disp = 255 * torch.rand(2, 32, 32), torch.rand(2, 32, 32)
    with torch.no_grad():
        expected = net(geometric_input(depth, disp)).argmax(1)
    torch.testing.assert_close(auxiliary_labels(net, depth, disp), expected)
    plugin = DispersionPlugin({"auxiliary": {"batchnorm": "running", "input_size": [32, 32]}})
    plugin.auxiliary = net
    target = {"depth": depth, "dispersion": disp}
    pseudo = expected.clone()
    weight = plugin.adjust_weights(target, pseudo, torch.ones(2, 32, 32))
    assert torch.all(weight == 1.2)  # agrees everywhere: alpha


def _save_layouts(net: nn.Module, tmp_path):
    state = net.state_dict()
    files = {"aux-raw": state, "aux-wrapped": {"model": state}}
    files["segmentor"] = {
        "state_dict": {"model.decode_head.conv_seg.weight": torch.zeros(19, 256, 1, 1)}
        | {f"auxiliary_net.{k}": v for k, v in state.items()}
    }
    paths = {}
    for layout, content in files.items():
        paths[layout] = tmp_path / f"{layout}.pth"
        torch.save(content, paths[layout])
    return paths


def test_load_auxiliary_reads_bare_wrapped_and_segmentor_files_like_reference(random_net, tmp_path):
    """``dacs.py:128-130``: ``checkpoint.get("model", checkpoint)``, a bare state dict or
    ``{'model': ...}``; also the ``auxiliary_net.*`` of a published Dispersion model. The
    network comes back in eval mode, frozen, mapping B x 2 x H x W to logits at that size."""
    x = torch.stack([255 * torch.rand(1, 32, 48), torch.rand(1, 32, 48)], 1)
    with torch.no_grad():
        expected = random_net(x)
    for layout, path in _save_layouts(random_net, tmp_path).items():
        net = load_auxiliary(path)
        assert isinstance(net, AuxiliaryResNet50) and not net.training, layout
        assert not any(p.requires_grad for p in net.parameters())
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected, msg=layout)
        assert read_auxiliary(path)[1]["layout"] == layout


@pytest.mark.slow
def test_load_auxiliary_reads_our_checkpoints_of_both_architectures(tmp_path):
    """``uda dispersion pretrain`` trains the published architecture (the default) or ours,
    and ``load_auxiliary`` returns whichever the checkpoint holds."""
    assert DispersionPlugin({}).pretrain_settings().architecture == "published"
    batches = [
        {
            "label": torch.randint(0, 3, (2, 4, 4)).repeat_interleave(8, 1).repeat_interleave(8, 2),
            "depth": 255 * torch.rand(2, 32, 32),
        }
        for _ in range(2)
    ]
    for architecture, kind in (("published", AuxiliaryResNet50), ("timm", AuxiliaryNet)):
        settings = PretrainSettings(
            architecture=architecture,
            backbone="resnet10t",
            num_classes=3,
            input_size=(32, 32),
            iterations=2,
            batch_size=2,
            warmup_iters=1,
            extractor={"min_area": 4},
        )
        out = tmp_path / f"{architecture}.pt"
        pretrain(lambda start: iter(batches[start:]), out, settings, log=lambda m: None)
        net, meta = read_auxiliary(out)
        assert isinstance(net, kind) and not net.training
        assert meta["settings"]["architecture"] == architecture and meta["layout"] == "uda"
        assert load_auxiliary(out)(torch.rand(1, 2, 32, 32)).shape == (1, 3, 32, 32)


def test_published_auxiliary_state_names_the_first_key_that_does_not_fit(random_net, tmp_path):
    state = random_net.state_dict()
    assert published_auxiliary_state(state).keys() == state.keys()
    wrong = dict(state) | {"decoder2.0.weight": torch.zeros(256, 512, 1, 1)}
    with pytest.raises(ValueError, match=r"'decoder2.0.weight': expected shape \(256, 512, 3, 3\)"):
        published_auxiliary_state(wrong)
    with pytest.raises(ValueError, match=r"has no tensor 'decoder5\.0\.weight'"):
        published_auxiliary_state(dict(state) | {"decoder5.0.weight": torch.zeros(1)})
    without = {k: v for k, v in state.items() if k != "encoder.6.5.bn3.running_var"}
    with pytest.raises(ValueError, match=r"'encoder\.6\.5\.bn3\.running_var' is missing"):
        published_auxiliary_state(without)
    path = tmp_path / "wrong.pth"
    torch.save({"model": wrong}, path)
    with pytest.raises(ValueError) as error:
        load_auxiliary(path)
    assert str(error.value).startswith(f"{path}: ") and "\n" not in str(error.value)
    torch.save({"weights": [1, 2]}, path)
    with pytest.raises(ValueError, match="is not an auxiliary network") as error:
        load_auxiliary(path)
    assert "\n" not in str(error.value)


def test_published_scalar_counters_stored_as_vectors_are_accepted_like_load_state_dict():
    """``num_batches_tracked`` stored with shape (1,) (as the fixture's files do) loads, as
    ``torch.nn.Module.load_state_dict`` accepts it for a scalar."""
    state = AuxiliaryResNet50(19).state_dict()
    state["encoder.1.num_batches_tracked"] = torch.zeros(1, dtype=torch.long)
    assert published_auxiliary_state(state)["encoder.1.num_batches_tracked"].shape == ()


def test_plugin_prepare_loads_a_published_auxiliary_file(random_net, tmp_path):
    """``plugins.dispersion.auxiliary.checkpoint=gta_auxiliary.pth`` in training: ``prepare``
    loads the published network and the weight hook runs it."""
    path = _save_layouts(random_net, tmp_path)["aux-raw"]
    plugin = DispersionPlugin({"auxiliary": {"checkpoint": str(path), "input_size": [32, 32]}})
    logs = []
    plugin.prepare(SimpleNamespace(device=torch.device("cpu"), log=logs.append))
    assert isinstance(plugin.auxiliary, AuxiliaryResNet50) and not plugin.auxiliary.training
    pseudo = torch.randint(0, 19, (2, 32, 32))
    depth = 255 * torch.rand(2, 32, 32)
    target = {"depth": depth} | plugin.target_targets({"depth": depth}, pseudo)
    weight = plugin.adjust_weights(target, pseudo, torch.ones(2, 32, 32))
    assert torch.isclose(weight, torch.tensor(1.2)).logical_or(weight == 0.6).all()
