"""The README's "With Trainer / Lightning" snippets run as written (in a temporary folder)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("lightning")
pytestmark = pytest.mark.slow  # two real trainer runs in subprocesses (~30 s)

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    text = README.read_text()
    section = text.split("## With Trainer / Lightning", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.parametrize("which", ["transformers", "lightning"])
def test_readme_trainer_snippet_runs(tmp_path, which):
    code = next(s for s in _snippets() if f"from {which}" in s or f"import {which}" in s)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"^\[.*\]", out.stdout, flags=re.M), out.stdout[-500:]  # the findings' codes
