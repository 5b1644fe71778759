"""Fixtures shared by the CLI tests."""

from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from tests.dispersion.test_plugin_cli import TINY_AUX
from uda_cli.main import app


def train_on_fixture_trees(
    preset: str, plugin: list[str], data_root: Path, work: Path, settings: dict
) -> Result:
    """``uda train --preset PRESET`` (with ``plugin``'s flags and, for a plugin, its tiny
    auxiliary network) for 2 iterations on the fixture trees under ``data_root``, each of
    ``settings`` a ``--set``: its ``--dry-run`` first, which must pass, then the run
    ``work/run``, whose result this is."""
    args = ["train", "--preset", preset, *plugin, "--data-root", str(data_root)]
    args += ["--iters", "2", "--work-dir", str(work), "--name", "run"]
    args += [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]
    args += TINY_AUX if plugin else []
    dry = CliRunner().invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, synthetic_root):
    """A 2-iteration source-only run's checkpoint, trained once for every test that predicts."""
    work = tmp_path_factory.mktemp("work")
    result = CliRunner().invoke(
        app, ["train", "--method", "source-only", "--name", "p", *tiny_overrides(work, 2)]
    )
    assert result.exit_code == 0, result.output
    return work / "p" / "checkpoints" / "iter_000002.pt"
