"""A plugin installed through the entry-point group trains through the protocol."""

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.main import app
from uda_core.plugin import Plugin, available_plugins

runner = CliRunner()


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """Install tests/methods/example_plugin.py as the plugin 'depth-head' via a dist-info."""
    site = tmp_path_factory.mktemp("site")
    dist = site / "uda_example_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: uda-example-plugin\nVersion: 0.1\n"
    )
    (dist / "entry_points.txt").write_text(
        "[uda.plugins]\ndepth-head = tests.methods.example_plugin:create\n"
    )
    sys.path.insert(0, str(site))
    yield
    sys.path.remove(str(site))


def test_entry_point_is_discovered_and_satisfies_the_protocol(installed_plugin):
    found = available_plugins()
    assert "depth-head" in found
    assert isinstance(found["depth-head"].load()({}), Plugin)


def test_unknown_plugin_lists_installed_ones(installed_plugin, tmp_path):
    result = runner.invoke(
        app, ["train", "--dry-run", "--plugin", "nope", *tiny_overrides(tmp_path)]
    )
    assert result.exit_code == 2 and "unknown plugin 'nope'; available: depth-head" in result.output


def test_plugin_settings_are_validated_by_the_plugin(installed_plugin, tmp_path, synthetic_root):
    args = ["train", "--dry-run", "--plugin", "depth-head", *tiny_overrides(tmp_path)]
    result = runner.invoke(app, [*args, "--set", "plugins.depth-head.weight=-1"])
    assert (
        result.exit_code == 2
        and "plugins.depth-head.weight: Input should be greater than 0" in result.output
    )
    result = runner.invoke(app, [*args, "--set", "plugins.depth-head.wieght=1"])
    assert result.exit_code == 2 and "plugins.depth-head.wieght: unknown key" in result.output


def test_example_plugin_trains_through_the_protocol(installed_plugin, tmp_path, synthetic_root):
    sets = tiny_overrides(tmp_path, 30)
    sets += ["--set", "runtime.debug_interval=15", "--set", "runtime.checkpoint_interval=15"]
    sets += ["--set", "schedule.warmup_iters=0", "--set", "plugins.depth-head.weight=1.0"]
    sets += ["--set", "optim.lr=0.003"]
    result = runner.invoke(
        app, ["train", "--method", "daformer", "--plugin", "depth-head", "--name", "p", *sets]
    )
    assert result.exit_code == 0, result.output
    run = tmp_path / "p"
    config = json.loads((run / "config.json").read_text())
    assert config["plugins"] == {"depth-head": {"weight": 1.0}} and config["data"]["load_depth"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["src.depth-head.depth"] for r in records if "src.depth-head.depth" in r]
    assert len(losses) == 30 and "mix.depth-head.depth" in records[0]
    assert sum(losses[-6:]) / 6 < 0.8 * sum(losses[:6]) / 6  # the head learns
    state = torch.load(run / "checkpoints" / "iter_000030.pt", weights_only=False)
    assert any(k.startswith("heads.depth-head.") for k in state["model"])
    assert state["method"]["plugins"]["depth-head"]["batches_seen"] == 60
    assert (run / "debug" / "iter_000015.png").is_file()
    result = runner.invoke(app, ["eval", str(run / "checkpoints" / "iter_000030.pt")])
    assert result.exit_code == 0, result.output
