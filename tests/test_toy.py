"""``flowzoo toy``: the 2-D energies, the fits, the command's table and figure."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from flowzoo.cli import main
from flowzoo.toy import PANEL, TARGETS, fit_posterior, free_energy, log_normalizer, u1, u2, u3, u4


def bumps(*offsets: float) -> float:
    return -math.log(sum(math.exp(-0.5 * t**2) for t in offsets))


@pytest.mark.parametrize(
    ("energy", "z", "expected"),
    [
        (u1, (0.0, 2.0), 0.0 + bumps(2 / 0.6, -2 / 0.6)),
        (u1, (1.0, 1.0), 0.5 * ((math.sqrt(2) - 2) / 0.4) ** 2 + bumps(-1 / 0.6, 3 / 0.6)),
        (u2, (1.0, 0.5), 0.5 * ((0.5 - 1) / 0.4) ** 2),  # w1(1) = sin(π/2) = 1
        (u2, (-3.0, 0.0), 0.5 * ((0 - 1) / 0.4) ** 2),  # w1(−3) = sin(−3π/2) = 1
        (u3, (1.0, 0.0), bumps(-1 / 0.35, (-1 + 3) / 0.35)),  # w2(1) = 3
        (u4, (1.0, 0.0), bumps(-1 / 0.4, (-1 + 1.5) / 0.35)),  # w3(1) = 3 σ(0) = 1.5
    ],
)
def test_energies_match_hand_computed_values(energy, z, expected):
    assert energy(torch.tensor([z], dtype=torch.float64)).item() == pytest.approx(expected, rel=1e-9)


def test_wave_targets_equal_the_paper_inside_the_window_and_are_normalisable():
    inside = torch.tensor([[3.9, 0.3], [-3.9, -1.0], [0.5, 2.0]])
    assert torch.equal(TARGETS["U2"].energy(inside), u2(inside))
    assert TARGETS["U2"].energy(torch.tensor([[5.0, 1.0]])).item() == pytest.approx(0.5 * (1 / 0.4) ** 2)
    # ∫∫ exp(−U2) = 0.4√(2π) · (8 + 0.4√(2π)): the wave's width times the window plus the wall's two half-Gaussians.
    width = 0.4 * math.sqrt(2 * math.pi)
    assert log_normalizer(TARGETS["U2"].energy) == pytest.approx(math.log(width * (8 + width)), abs=1e-6)


def test_a_flow_beats_the_diagonal_gaussian_on_u1_with_the_same_budget():
    budget = dict(flow_steps=8, steps=400, seed=0)
    energy = TARGETS["U1"].energy
    gaussian = free_energy(fit_posterior(energy, "diagonal_gaussian", **budget), energy)
    planar = free_energy(fit_posterior(energy, "planar", **budget), energy)
    assert planar < gaussian - 1.0
    assert planar > -log_normalizer(energy) - 0.05  # F ≥ −log Z, up to Monte Carlo error


def test_fitted_diagonal_gaussian_reaches_the_closed_form_kl_on_the_correlated_target():
    target = TARGETS["correlated"]
    fitted = free_energy(fit_posterior(target.energy, "diagonal_gaussian", steps=500, seed=0), target.energy)
    assert target.best_diagonal == pytest.approx(-0.5 * math.log(1 - 0.95**2))
    assert fitted == pytest.approx(target.best_diagonal, abs=0.05)


def test_command_writes_the_figure_and_the_table(tmp_path, capsys):
    argv = ["toy", "--targets", "U1", "correlated", "--flows", "diagonal_gaussian", "planar",
            "--steps", "30", "--flow-steps", "2", "--output", str(tmp_path)]
    assert main(argv) == 0
    with Image.open(tmp_path / "toy.png") as figure:
        width, height = figure.size
    assert height == 16 + 3 * (PANEL + 2) + 2  # column labels, then targets, diagonal_gaussian and planar
    assert width > 2 * (PANEL + 2)
    table = (tmp_path / "toy.md").read_text()
    assert "| flow | U1 | correlated |" in table
    assert "| planar |" in table and "**" in table and "| closed-form diagonal | — | 1.16 |" in table
    assert "planar" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "name", "hint"), [("--flows", "planr", "Did you mean 'planar'?"), ("--targets", "U5", "U1")]
)
def test_unknown_names_are_user_errors(option, name, hint, tmp_path, capsys):
    assert main(["toy", option, name, "--output", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"{option}: unknown" in error and hint in error
    assert not (tmp_path / "toy.png").exists()
