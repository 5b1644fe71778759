"""Recognising checkpoint files: the published layouts, families and encoder sizes, ours, the
auxiliary networks, and a clear line for every file that is none of them."""

from __future__ import annotations

import pytest
import torch

from tests.published.fixture import build, built_files, key_list, meta_state, needs_fixture
from uda_core.errors import UdaError
from uda_methods.published_files import (
    COPIES,
    PRESETS,
    default_preset,
    method_and_dataset,
    mit_encoder,
    published_config,
    read_checkpoint_file,
    segmentor_family,
)
from uda_methods.published_models import published_run_config

pytestmark = needs_fixture


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    return built_files(tmp_path_factory)


FULL_SIZE = {
    "daformer_b5": ("daformer", "daformer", "gta2cs-daformer"),
    "hrda_b5": ("hrda", "hrda", "gta2cs-hrda"),
    "mic_b5": ("hrda", "mic", "gta2cs-mic"),
    "dispersion_daformer_b5": ("dispersion_daformer", "daformer", "gta2cs-daformer"),
    "dispersion_hrda_b5": ("dispersion_hrda", "hrda", "gta2cs-hrda"),
    "dispersion_mic_b5": ("dispersion_hrda", "mic", "gta2cs-mic"),
}


def _student(model: str) -> dict[str, torch.Tensor]:
    return {
        k.removeprefix("model."): v for k, v in meta_state(model).items() if k.startswith("model.")
    }


@pytest.mark.parametrize("model", sorted(FULL_SIZE))
def test_full_size_key_lists_are_recognised_from_their_keys(model):
    """Every shape of these lists fitting our models is MODELS' test
    (``tests/methods/test_published_models.py``)."""
    family, method, preset = FULL_SIZE[model]
    state = _student(model)
    assert (segmentor_family(state), mit_encoder(state)) == (family, "mit_b5")
    config_text = key_list(model)["training"]["meta"]["config"]
    assert method_and_dataset(family, config_text) == (method, "gta")
    assert PRESETS[method, "gta"] == preset
    if method != "mic":
        assert published_run_config(family, "mit_b5").preset == preset


def test_every_mit_size_is_told_by_its_widths_and_depths():
    for size, (widths, depths) in {
        "mit_b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
        "mit_b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
        "mit_b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
        "mit_b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    }.items():
        state = {}
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True), start=1):
            state[f"backbone.patch_embed{stage}.proj.weight"] = torch.empty(width, 3, 3, 3)
            for j in range(depth):
                state[f"backbone.block{stage}.{j}.norm1.weight"] = torch.empty(width)
        assert mit_encoder(state) == size
    state[f"backbone.block4.{depth}.norm1.weight"] = torch.empty(512)
    with pytest.raises(UdaError, match=r"widths \[64, 128, 320, 512\] and depths \[3, 8, 27, 4\]"):
        mit_encoder(state)


@pytest.mark.parametrize(
    ("model", "layout", "prefixes"),
    [
        ("daformer_b0", "published", {"model.": 234}),
        ("daformer_b0", "training", {"model.": 234, "ema_model.": 234, "imnet_model.": 234}),
        ("hrda_b0", "published", {"model.": 250}),
    ],
)
def test_published_and_training_layouts_are_read(built, model, layout, prefixes):
    file = read_checkpoint_file(build(model, layout, built))
    assert (file.layout, file.family, file.encoder, file.copy) == (
        layout,
        model.removesuffix("_b0"),
        "mit_b0",
        "student",
    )
    assert file.prefixes == prefixes and file.tensors == sum(prefixes.values())
    assert (file.config_text is not None) == (layout == "training")
    assert file.method == model.removesuffix("_b0")
    assert file.dataset == ("gta" if layout == "training" else None)


def test_the_student_is_the_default_and_each_copy_has_its_own_weights(built):
    path = build("daformer_b0", "training", built)
    key = "decode_head.conv_seg.weight"
    weights = {copy: read_checkpoint_file(path, copy).state[key] for copy in COPIES}
    assert torch.equal(read_checkpoint_file(path).state[key], weights["student"])
    raw = torch.load(path, weights_only=True)["state_dict"]
    for copy, prefix in COPIES.items():
        assert torch.equal(weights[copy], raw[prefix + key])
    assert not torch.equal(weights["teacher"], weights["student"])
    published = build("daformer_b0", "published", built)
    match = r"has no teacher copy \(ema_model\.\*; it holds model\.\*\)"
    with pytest.raises(UdaError, match=match):
        read_checkpoint_file(published, "teacher")


def test_dispersion_files_carry_the_auxiliary_network(built):
    file = read_checkpoint_file(build("dispersion_daformer_b0", "published", built))
    assert file.family == "dispersion_daformer" and file.prefixes["auxiliary_net."] == 348
    assert not any(k.startswith("auxiliary_net.") for k in file.state)
    cfg = published_config(file)
    assert cfg.plugins["dispersion"]["auxiliary"]["checkpoint"] == str(file.path.resolve())
    assert default_preset(file) == "gta2cs-daformer"


@pytest.mark.parametrize("layout", ["aux-raw", "aux-wrapped"])
def test_auxiliary_files_are_told_apart(built, layout):
    file = read_checkpoint_file(build("aux_resnet50", layout, built))
    assert (file.layout, file.family, file.encoder, file.tensors) == (
        layout,
        "auxiliary",
        "resnet50",
        348,
    )


def test_a_bare_segmentor_state_is_the_student(tmp_path):
    state = _student("hrda_b5")
    assert segmentor_family(state) == "hrda"
    small = {k: torch.zeros(v.shape) for k, v in _student("hrda_b0").items()}
    torch.save({"state_dict": small}, tmp_path / "bare.pth")
    file = read_checkpoint_file(tmp_path / "bare.pth")
    assert (file.layout, file.family, file.prefixes) == ("published", "hrda", {"model.": 250})


def test_a_key_of_no_family_is_named_with_what_was_expected(tmp_path):
    state = {k: torch.zeros(v.shape) for k, v in meta_state("daformer_b0").items()}
    state["model.decode_head.extra_head.weight"] = torch.zeros(3)
    torch.save({"state_dict": state}, tmp_path / "odd.pth")
    with pytest.raises(UdaError) as error:
        read_checkpoint_file(tmp_path / "odd.pth")
    message = str(error.value)
    assert "'decode_head.extra_head.weight' does not fit a published daformer model" in message
    assert "expected backbone.{patch_embed,block,norm}N.*" in message and "\n" not in message
    torch.save({"state_dict": {"model.encoder.conv1.weight": torch.zeros(1)}}, tmp_path / "e.pth")
    with pytest.raises(UdaError, match=r"'encoder.conv1.weight' fits no published family"):
        read_checkpoint_file(tmp_path / "e.pth")
    torch.save({"state_dict": {"teacher.x": torch.zeros(1)}}, tmp_path / "t.pth")
    with pytest.raises(UdaError, match=r"'teacher.x' fits no published layout \(expected model"):
        read_checkpoint_file(tmp_path / "t.pth")


class _Executable:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_missing_corrupt_and_foreign_files_fail_in_one_line(built, tmp_path):
    with pytest.raises(UdaError, match=r"nope.pth does not exist"):
        read_checkpoint_file(tmp_path / "nope.pth")
    whole = build("daformer_b0", "published", built).read_bytes()
    (tmp_path / "cut.pth").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UdaError, match=r"cut.pth cannot be read \(.*\); is it a complete"):
        read_checkpoint_file(tmp_path / "cut.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(UdaError, match=r"text.pth cannot be read"):
        read_checkpoint_file(tmp_path / "text.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(UdaError, match=r"list.pth is not a checkpoint: expected a dict"):
        read_checkpoint_file(tmp_path / "list.pth")
    torch.save({"state_dict": _Executable()}, tmp_path / "code.pth")
    with pytest.raises(UdaError, match=r"code.pth holds objects other than tensors"):
        read_checkpoint_file(tmp_path / "code.pth")
    torch.save({"optimizer": {}, "foo": 1}, tmp_path / "other.pth")
    with pytest.raises(UdaError, match=r"other.pth is of no known layout"):
        read_checkpoint_file(tmp_path / "other.pth")
