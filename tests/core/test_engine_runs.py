"""What the engine keeps in a run folder across runs."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from tests.conftest import tiny_overrides
from uda_cli.main import app

runner = CliRunner()


def test_a_new_run_in_a_folder_without_checkpoints_drops_the_killed_runs_records(
    tmp_path, synthetic_root
):
    """A run killed before its first checkpoint leaves ``metrics.jsonl`` behind; training
    again under that name starts from iteration 0 (there is nothing to resume), so its
    records must not follow the dead run's: the file holds the new run's records only."""
    stale = tmp_path / "again" / "metrics.jsonl"
    stale.parent.mkdir(parents=True)
    stale.write_text(
        "".join(json.dumps({"iteration": i, "src.seg": 9.0}) + "\n" for i in (1, 2, 3))
    )
    args = ["train", "--method", "source-only", "--name", "again", *tiny_overrides(tmp_path, 2)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in stale.read_text().splitlines()]
    train = [r["iteration"] for r in records if "split" not in r]
    assert train == [1, 2]
    assert all(r.get("src.seg") != 9.0 for r in records)
