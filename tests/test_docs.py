"""The README's Python examples run as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from conftest import REPO


def test_readme_python_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) >= 3
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    script = tmp_path / "readme_examples.py"
    script.write_text("\n\n".join(blocks))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test metrics" in result.stdout
    assert (tmp_path / "runs").is_dir()
