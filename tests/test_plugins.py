"""Components from outside flowzoo: entry-point plugins, local modules, and their failures."""

from __future__ import annotations

import os
import textwrap

import pytest

from conftest import run_cli
from flowzoo.registry import flows, list_flows

LOCAL_FLOW = '''
from flowzoo.flows import Planar
from flowzoo.registry import register_flow

@register_flow("local_planar")
class LocalPlanar(Planar):
    """A planar flow defined outside any package."""
'''


@pytest.fixture
def fake_plugins(tmp_path):
    """A site folder holding two installed distributions: one broken, one working."""
    site = tmp_path / "site"
    for dist, target in [("broken_plugin", "no_such_module_anywhere"), ("works_plugin", "works_plugin")]:
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[flowzoo.plugins]\n{dist} = {target}\n")
    (site / "works_plugin.py").write_text(LOCAL_FLOW)
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_the_example_plugin_is_discovered_with_its_origin():
    """plugins/flowzoo-example is installed by the README's test command."""
    assert "affine_coupling" in list_flows(), (
        "the example plugin is not installed: pip install -e plugins/flowzoo-example (the README's test command does)"
    )
    assert flows["affine_coupling"].origin == "plugin flowzoo-example 0.1.0"
    assert flows["iaf"].origin == "built-in"


def test_a_broken_plugin_is_a_warning_and_the_others_still_load(fake_plugins):
    result = run_cli("list", "flows", env=fake_plugins)
    assert result.returncode == 0, result.stderr
    assert "flowzoo plugin 'broken_plugin' (no_such_module_anywhere, from broken-plugin 0.1) failed to load" \
        in result.stderr
    assert "ModuleNotFoundError" in result.stderr and "Traceback" not in result.stderr
    for name in ("local_planar", "affine_coupling", "iaf"):
        assert name in result.stdout
    assert "plugin works-plugin 0.1" in result.stdout


def test_an_environment_variable_turns_plugin_loading_off(fake_plugins):
    result = run_cli("list", "flows", env={**fake_plugins, "FLOWZOO_DISABLE_PLUGINS": "1"})
    assert result.returncode == 0 and result.stderr == ""
    assert "iaf" in result.stdout and "affine_coupling" not in result.stdout and "local_planar" not in result.stdout


def test_a_config_imports_local_modules_listed_under_plugins(tmp_path):
    (tmp_path / "my_flows.py").write_text(LOCAL_FLOW)
    config = tmp_path / "local.yaml"
    config.write_text(textwrap.dedent("""
        name: local
        plugins: [my_flows]
        model:
          latent_size: 8
          context_size: 8
          encoder: {name: mlp, hidden_sizes: [64]}
          decoder: {name: mlp, hidden_sizes: [64]}
          flows: [{name: local_planar, repeat: 2}]
        trainer: {epochs: 1, batch_size: 1000}
        eval: {iw_samples: 2}
    """))
    result = run_cli("train", str(config), f"output_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "IWAE" in result.stdout
    listing = run_cli("list", "flows", "local*", "--import", "my_flows", cwd=tmp_path)
    assert "module my_flows" in listing.stdout


def test_a_missing_local_module_is_a_config_error_and_nothing_runs(tmp_path):
    result = run_cli("train", "configs/mnist_vae.yaml", "plugins=[my_flowz]", f"output_dir={tmp_path}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "plugins[0]: cannot import module 'my_flowz': ModuleNotFoundError" in result.stderr
    assert not any(tmp_path.iterdir())
