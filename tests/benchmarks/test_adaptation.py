"""The adaptation benchmark's bookkeeping: which runs are finished, and the table it prints."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "adaptation.py"


@pytest.fixture(scope="module")
def adaptation():
    spec = importlib.util.spec_from_file_location("adaptation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path, iterations: int, records: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"runtime": {"iterations": iterations}}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def val(iteration: int, miou: float, road: float) -> dict:
    return {
        "split": "val",
        "iteration": iteration,
        "mIoU": miou,
        "IoU": {"road": road, "train": None},
    }


def test_only_runs_evaluated_at_their_last_iteration_count_and_enter_the_table(
    tmp_path, adaptation
):
    fake_run(tmp_path / "mic-s0", 10, [val(5, 0.30, 0.5), val(10, 0.20, 0.6)])
    fake_run(tmp_path / "mic-s1", 10, [val(5, 0.90, 0.9)])  # killed before its last evaluation
    fake_run(tmp_path / "mic-s2", 10, [val(10, 0.24, 0.8)])
    agreement = [{"iteration": i, "dispersion.agreement": a} for i, a in ((5, 0.5), (10, 0.7))]
    fake_run(tmp_path / "mic+dispersion-s0", 10, [*agreement, val(10, 0.25, 0.7)])
    assert adaptation.final_eval(tmp_path / "mic-s1") is None
    assert adaptation.final_eval(tmp_path / "mic-s0")["mIoU"] == 0.20

    rows = adaptation.summarize(tmp_path, [0, 1, 2])
    assert list(rows) == ["mic", "mic+dispersion"]
    mic = rows["mic"]
    assert mic["seeds"] == [0, 2] and mic["mean"] == pytest.approx(22.0)
    assert mic["std"] == pytest.approx(2.828, abs=1e-3)  # sample std of 20 and 24
    assert mic["IoU"]["road"] == pytest.approx(70.0) and mic["agreement"] is None
    assert rows["mic+dispersion"]["agreement"] == pytest.approx(60.0)
    table = adaptation.markdown(rows)
    assert "| mic | 2 | 22.00 ± 2.83 | 20.00, 24.00 | - |" in table
    assert "| mic+dispersion | 1 | 25.00 ± 0.00 | 25.00 | 60 % |" in table


def test_runs_limit_the_table_to_the_named_runs(tmp_path, adaptation):
    fake_run(tmp_path / "mic-s0", 10, [val(10, 0.20, 0.6)])
    fake_run(tmp_path / "mic+dispersion-s0", 10, [val(10, 0.25, 0.7)])
    assert list(adaptation.summarize(tmp_path, [0], ["mic+dispersion"])) == ["mic+dispersion"]
    assert list(adaptation.summarize(tmp_path, [0], ["hrda"])) == []
    assert list(adaptation.summarize(tmp_path, [0])) == ["mic", "mic+dispersion"]


def test_summary_only_prints_and_writes_the_named_runs(tmp_path):
    fake_run(tmp_path / "mic-s0", 10, [val(10, 0.20, 0.6)])
    fake_run(tmp_path / "mic+dispersion-s0", 10, [val(10, 0.25, 0.7)])
    command = [sys.executable, str(SCRIPT), "--summary-only", "--seeds", "0", "--work-dir"]
    command += [str(tmp_path), "--runs", "mic+dispersion"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "| mic+dispersion | 1 | 25.00 ± 0.00 | 25.00 | - |" in result.stdout
    assert "| mic |" not in result.stdout
    assert list(json.loads((tmp_path / "adaptation.json").read_text())) == ["mic+dispersion"]


def test_the_published_behaviour_table_in_results_is_what_the_committed_records_give(
    adaptation,
):
    """benchmarks/RESULTS.md's tables of the published-behaviour benchmark (sessions 15-16)
    are the script's summary of the 21 runs' records in benchmarks/records/: recomputed here
    from the committed ``metrics.jsonl`` and ``config.json`` files, line for line."""
    root = SCRIPT.parents[1]
    records = root / "benchmarks" / "records" / "adaptation-published"
    rows = adaptation.summarize(records, [0, 1, 2])
    assert all(len(row["seeds"]) == 3 for row in rows.values()) and len(rows) == 7
    results = (root / "benchmarks" / "RESULTS.md").read_text()
    section = results[results.index("## Adaptation with the published behaviour") :]
    for line in adaptation.markdown(rows).splitlines():
        assert line in section, line
