"""``benchmarks/host_ops.py`` counts a step's host work by phase (issue 16)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow  # ~5 s on 2 idle cores, 18 s under load: model build + profile

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "host_ops.py"


@pytest.fixture(scope="module")
def host_ops():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("host_ops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def record(host_ops, tmp_path_factory):
    """DAFormer + dispersion on the quick preset at 64 x 32 px, fp32, counted."""
    aux = {"quick": host_ops.train_step.write_aux_checkpoint(tmp_path_factory.mktemp("a"), "quick")}
    options = SimpleNamespace(
        methods=["daformer"],
        profile="quick",
        precisions=["no"],
        overrides=[
            "data.crop=[64,32]",
            "model.encoder=resnet10t",
            "model.channels=16",
            "plugins.dispersion.auxiliary.input_size=[64,32]",
        ],
        warmup=1,
        steps=1,
        profile_trace=None,
    )
    spec = next(s for s in host_ops.train_step.specs(options, aux) if s["plugin"])
    return host_ops.measure(spec)


def test_counts_are_positive_and_the_phases_add_up_to_the_step(host_ops, record):
    total = record["total"]
    assert set(total) == set(host_ops.COUNTS)
    assert record["warmup_seconds"] > 0  # the warm-up step, timed (compile time if compiled)
    assert all(total[k] > 0 for k in ("dispatches", "aten", "copy_", "modules"))
    assert total["dispatches"] < total["aten"] and total["copy_"] < total["aten"]
    phases = record["phases"]
    expected = {"source_step", "pseudo_label", "mixed_step", "optimizer"}
    assert expected | {"ema", "adjust_weights", "losses"} <= set(phases)
    for key in host_ops.COUNTS:
        assert sum(p[key] for p in phases.values()) == total[key]
    for phase in expected:
        assert phases[phase]["dispatches"] > 0
    assert phases["source_step"]["modules"] > 0 and phases["optimizer"]["modules"] == 0


def test_markdown_has_a_row_per_configuration_and_a_column_per_phase(host_ops, record):
    lines = host_ops.markdown([record]).splitlines()
    assert len(lines) == 3 and lines[2].startswith("| daformer + dispersion | fp32 |")
    assert "source_step disp." in lines[0]
    assert lines[0].count("|") == lines[2].count("|")
