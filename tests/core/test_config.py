import json

import pytest

from uda_core.config import OptimConfig, apply_overrides, load_config_file, merge, validate
from uda_core.errors import UdaError
from uda_methods.config import RunConfig
from uda_methods.presets import quick
from uda_methods.run import resolve_config


def test_overrides_parse_values_and_nest():
    data = apply_overrides(
        {"optim": {"lr": 1.0}}, ["optim.lr=1e-4", "data.crop=[64, 32]", "runtime.name=abc"]
    )
    assert data["optim"]["lr"] == 1e-4
    assert data["data"]["crop"] == [64, 32]
    assert data["runtime"]["name"] == "abc"


def test_override_without_equals_is_rejected():
    with pytest.raises(UdaError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])


def test_unknown_key_names_the_field():
    with pytest.raises(UdaError, match=r"optim\.lrr: unknown key"):
        resolve_config("quick", None, {}, ["optim.lrr=0.1"])


def test_bad_value_names_the_field_and_value():
    with pytest.raises(UdaError, match=r"runtime\.iterations: .*greater than or equal to 1.*-5"):
        resolve_config("quick", None, {}, ["runtime.iterations=-5"])


def test_bad_precision_is_rejected():
    with pytest.raises(UdaError, match=r"runtime\.precision"):
        validate(
            RunConfig, apply_overrides(quick().model_dump(mode="json"), ["runtime.precision=fp8"])
        )


@pytest.mark.parametrize("suffix", [".yaml", ".toml", ".json"])
def test_config_files_in_each_format_merge_over_the_preset(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    text = {
        ".yaml": "optim:\n  lr: 0.002\nruntime:\n  iterations: 7\n",
        ".toml": "[optim]\nlr = 0.002\n[runtime]\niterations = 7\n",
        ".json": json.dumps({"optim": {"lr": 0.002}, "runtime": {"iterations": 7}}),
    }[suffix]
    path.write_text(text)
    cfg = resolve_config("quick", path, {}, [])
    assert cfg.optim.lr == 0.002 and cfg.runtime.iterations == 7
    assert cfg.data.crop == quick().data.crop


def test_precedence_is_file_then_flags_then_set(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("runtime:\n  iterations: 7\n  seed: 4\n")
    cfg = resolve_config("quick", path, {"runtime": {"iterations": 9}}, ["runtime.seed=5"])
    assert (cfg.runtime.iterations, cfg.runtime.seed) == (9, 5)


def test_unparseable_and_missing_files_are_clear(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed\n")
    with pytest.raises(UdaError, match="cannot be parsed"):
        load_config_file(bad)
    with pytest.raises(UdaError, match="does not exist"):
        load_config_file(tmp_path / "nope.yaml")
    with pytest.raises(UdaError, match="unknown format"):
        (tmp_path / "x.ini").write_text("a=1")
        load_config_file(tmp_path / "x.ini")


def test_resolved_config_round_trips_through_json():
    cfg = quick()
    again = validate(RunConfig, json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again == cfg


def test_merge_is_recursive():
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_fields_carry_descriptions():
    assert all(f.description for f in OptimConfig.model_fields.values())
