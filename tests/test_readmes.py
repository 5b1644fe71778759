"""Every package README's Python example runs as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = sorted([*ROOT.glob("packages/*/README.md"), ROOT / "apps/cli/README.md"])


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.parent.name)
def test_readme_examples_run(readme, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block in python_blocks(readme):
        exec(compile(block, str(readme), "exec"), {"__name__": "readme"})
