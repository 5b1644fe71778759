"""Fixtures shared by the CLI tests."""

import pytest
from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.main import app


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, synthetic_root):
    """A 2-iteration source-only run's checkpoint, trained once for every test that predicts."""
    work = tmp_path_factory.mktemp("work")
    result = CliRunner().invoke(
        app, ["train", "--method", "source-only", "--name", "p", *tiny_overrides(work, 2)]
    )
    assert result.exit_code == 0, result.output
    return work / "p" / "checkpoints" / "iter_000002.pt"
