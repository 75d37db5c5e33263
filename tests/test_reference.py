"""docs/reference.md is what scripts/config_reference.py generates from the code, and covers all of it."""

from __future__ import annotations

import dataclasses
import importlib.util
import re

import pytest

from conftest import REPO
from flowzoo.config import EvalConfig, TrainerConfig
from flowzoo.docstrings import docstring_args, markdown
from flowzoo.registry import REGISTRIES, flows, register_flow

_spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
config_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config_reference)


@pytest.fixture(scope="module")
def generated() -> str:
    return config_reference.generate()


def _section(text: str, heading: str) -> str:
    """The text under a heading, up to the next heading of the same or a higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    end = re.compile(rf"\n#{{1,{len(level)}}} ").search(text, start + 1)
    return text[start : end.start() if end else len(text)]


def test_committed_reference_is_up_to_date(generated):
    committed = (REPO / "docs" / "reference.md").read_text(encoding="utf-8")
    assert committed == generated, "docs/reference.md is out of date; run python scripts/config_reference.py"


def test_generation_is_deterministic(generated):
    assert config_reference.generate() == generated
    assert str(REPO) not in generated


def test_every_built_in_component_has_a_heading(generated):
    for plural, registry in REGISTRIES.items():
        section = _section(generated, f"### {plural}")
        for name in registry.list():
            entry = registry[name]
            if entry.origin == "built-in":
                assert f"\n#### `{name}`\n" in section, f"{plural}: {name}"
            else:  # an installed plugin's components stay out of the file
                assert f"\n#### `{name}`\n" not in section, f"{plural}: {name} ({entry.origin})"


def test_every_built_in_flow_and_its_parameters(generated):
    section = _section(generated, "### flows")
    built_in = [name for name in flows.list() if flows[name].origin == "built-in"]
    assert {"iaf", "planar", "sylvester_orthogonal", "reverse"} <= set(built_in)
    for name in built_in:
        entry_text = _section(section, f"#### `{name}`")
        for parameter in flows[name].parameters:
            assert f"| `{parameter}` |" in entry_text, f"{name}.{parameter}"


def test_every_trainer_and_eval_key(generated):
    for heading, section in (("### `trainer`", TrainerConfig), ("### `eval`", EvalConfig)):
        table = _section(generated, heading)
        documented = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
        assert documented == {field.name for field in dataclasses.fields(section)}


def test_types_defaults_and_meanings(generated):
    iaf = _section(_section(generated, "### flows"), "#### `iaf`")
    assert "| `hidden_features` | an integer ≥ 1 | `320` | units in each MADE hidden layer. |" in iaf
    assert "Set by the model: `features`, `context_features`." in iaf
    vae = _section(_section(generated, "### models"), "#### `vae`")
    assert "| `latent_size` | an integer ≥ 1 | required |" in vae
    assert "| `posterior` | [a posterior spec](#posteriors) | `{name: diagonal_gaussian}` |" in vae
    assert "q(z0\\|x)" in vae  # a | in a cell is escaped
    assert "`name` may be omitted: it defaults to `vae`." in _section(generated, "### models")
    conv = _section(_section(generated, "### encoders"), "#### `conv`")
    assert "| `channels` | a list of integers ≥ 1 | `[32, 64]` |" in conv  # tuples as YAML lists
    trainer = _section(generated, "### `trainer`")
    assert "| `optimizer` | one of 'adam', 'adamax' | `adam` |" in trainer
    assert "| `compile` | true or false | `false` |" in trainer
    for line in generated.splitlines():  # every table row stays on one line with the same number of cells
        if line.startswith("| ") and not line.startswith("| key") and not line.startswith("| parameter"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 5, line


def test_a_component_registered_outside_flowzoo_is_left_out(monkeypatch, generated):
    monkeypatch.setattr(flows, "_entries", dict(flows._entries))

    @register_flow("reference_test_only")
    def reference_test_only(features: int, width: int = 3):
        """A flow that only this test registers."""

    assert config_reference.generate() == generated


def test_docstring_args():
    doc = """Summary.

    Args:
        first: one line.
        second (int): two
            lines.

        third: after a blank line.

    Returns:
        something: not an argument.
    """
    assert docstring_args(doc) == {
        "first": "one line.",
        "second": "two lines.",
        "third": "after a blank line.",
    }
    assert docstring_args(None) == {}
    assert markdown("``x`` of :class:`~flowzoo.vae.VAE`, p(x|z)") == "`x` of `VAE`, p(x\\|z)"


def test_check_reports_an_out_of_date_file(monkeypatch, tmp_path, capsys, generated):
    stale = tmp_path / "reference.md"
    stale.write_text(generated.replace("Config reference", "Old reference"), encoding="utf-8")
    monkeypatch.setattr(config_reference, "OUTPUT", stale)
    assert config_reference.main(["--check"]) == 1
    assert "is out of date; run python scripts/config_reference.py" in capsys.readouterr().err
    assert config_reference.main([]) == 0
    assert stale.read_text(encoding="utf-8") == generated
    assert config_reference.main(["--check"]) == 0
