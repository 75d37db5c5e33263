"""The Python examples in the README and in docs/ run as written."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


def python_blocks(document: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / document).read_text(), flags=re.S)


def run_blocks(blocks: list[str], cwd) -> subprocess.CompletedProcess:
    shutil.copytree(REPO / "configs", cwd / "configs")
    script = cwd / "examples.py"
    script.write_text("\n\n".join(blocks))
    return subprocess.run([sys.executable, str(script)], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_readme_python_examples_run(tmp_path):
    blocks = python_blocks("README.md")
    assert len(blocks) >= 3
    result = run_blocks(blocks, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test metrics" in result.stdout
    assert (tmp_path / "runs").is_dir()


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if d != "README.md" and python_blocks(d)])
def test_docs_python_examples_run(document, tmp_path):
    """Each page's blocks run in order in one script, as a reader would paste them."""
    result = run_blocks(python_blocks(document), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]


def test_training_page_documents_every_trainer_key():
    import dataclasses

    from flowzoo.config import TrainerConfig

    table = (REPO / "docs" / "training.md").read_text().split("## What you see")[0]
    documented = set(re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)?", table, flags=re.M))
    documented = {key for row in documented for key in row if key}
    assert documented == {field.name for field in dataclasses.fields(TrainerConfig)}


def test_the_manual_index_links_every_page():
    index = (REPO / "docs" / "index.md").read_text()
    linked = set(re.findall(r"\]\(([a-z_]+\.md)(?:#[a-z-]+)?\)", index))
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"index.md"}
    assert linked == pages


def test_the_readme_config_table_matches_the_configs():
    """Each row's base and flows are the config's; every config built on the two MNIST models has a row."""
    from flowzoo.config import base_file, load_config

    text = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(mnist_\w+\.yaml)` \| `(\w+\.yaml)` \| (.*) \|$", text, flags=re.M)
    assert len(rows) >= 10
    for config, base, flow in rows:
        path = REPO / "configs" / config
        assert base_file(path).name == base, config
        spec = load_config(path).model["flows"]
        assert [s["name"] for s in spec] == re.findall(r"`(\w+)`", flow), config
        count = re.match(r"(\d+) ", flow)
        assert count is None or [s.get("repeat") for s in spec] == [int(count.group(1))], config
    built_on_them = {p.name for p in (REPO / "configs").glob("mnist_*.yaml")
                     if base_file(p) is not None and base_file(p).name in ("mnist_vae.yaml", "mnist_iaf.yaml")}
    assert {config for config, _, _ in rows} == built_on_them
