"""Shared fixtures: a small embedded dataset generated once per session, and tiny run configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SMALL_SPEC = {
    "seed": 3,
    "width": 128,
    "height": 64,
    "num_source": 16,
    "num_target_train": 8,
    "num_target_val": 6,
}


@pytest.fixture(autouse=True)
def no_child_left_behind():
    """A test that leaves a child process running (a DataLoader worker, a pool) fails: such a
    child ignores SIGTERM or waits on its queue, and the interpreter's exit waits for it."""
    yield
    import gc
    import multiprocessing

    if multiprocessing.active_children():
        gc.collect()  # a loader iterator held only by a reference cycle ends its workers now
    for child in multiprocessing.active_children():
        child.join(timeout=10)
    alive = multiprocessing.active_children()
    for child in alive:
        child.kill()
    if alive:
        pytest.fail(f"the test left child processes running: {alive}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """Every test generates into one session-wide cache, never the user's."""
    path = Path(os.environ.get("UDA_TEST_CACHE", tmp_path_factory.mktemp("cache")))
    os.environ["UDA_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def synthetic_root(cache_dir) -> Path:
    from uda_data.synthetic import SynthSpec, ensure_synthetic

    return ensure_synthetic(cache_dir / "small", SynthSpec(**SMALL_SPEC))


def tiny_overrides(work_dir: Path, iterations: int = 6) -> list[str]:
    """--set overrides that make the quick preset train in seconds."""
    sets = {f"data.synthetic.{k}": v for k, v in SMALL_SPEC.items()}
    sets.update(
        {
            "data.source_resize": "[128, 64]",
            "data.target_resize": "[128, 64]",
            "data.val_resize": "[128, 64]",
            "data.crop": "[64, 64]",
            "data.batch_size": 2,
            "data.workers": 0,
            "model.encoder": "resnet10t",
            "model.channels": 16,
            "runtime.iterations": iterations,
            "runtime.eval_interval": 3,
            "runtime.checkpoint_interval": 3,
            "runtime.log_interval": 1,
            "runtime.work_dir": str(work_dir),
            "eval.batch_size": 3,
        }
    )
    out = []
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    """A process that outlives its suite by five minutes prints every thread's stack and exits.

    Whatever keeps the interpreter from finishing (a worker thread, a child it joins) is then
    named in the log instead of holding CI until its time limit.
    """
    import faulthandler
    import sys

    faulthandler.dump_traceback_later(300, exit=True, file=sys.__stderr__)
