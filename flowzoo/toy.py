"""Two-dimensional tests of posterior flows: fit q to a known density by reverse KL (``flowzoo toy``).

The targets are the four energies of Rezende & Mohamed (2015, table 1) and two densities
where a diagonal Gaussian is provably wrong (a correlated Gaussian and two separated
modes). Each posterior is a diagonal Gaussian with a free mean and log-std, pushed
through K steps of a registered flow, and is fitted by minimising the variational
free energy with Adam. ``flowzoo toy`` fits every (target, flow) pair, prints and saves
the table, and draws the targets and the fitted densities side by side.
"""

from __future__ import annotations

__all__ = [
    "Target",
    "TARGETS",
    "BASELINE",
    "DEFAULT_FLOWS",
    "STEPS",
    "FLOW_STEPS",
    "BATCH_SIZE",
    "HIDDEN_FEATURES",
    "WINDOW",
    "PANEL",
    "u1",
    "u2",
    "u3",
    "u4",
    "ToyPosterior",
    "build_posterior",
    "fit_posterior",
    "free_energy",
    "log_normalizer",
    "density_figure",
    "run_toy",
]

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from nflows.transforms import CompositeTransform
from PIL import Image, ImageDraw, ImageFont
from rich.markup import escape
from rich.table import Table
from torch import Tensor, nn

from flowzoo.console import console
from flowzoo.errors import ConfigError, Problem, TrainingError, did_you_mean
from flowzoo.images import image_grid
from flowzoo.registry import flows
from flowzoo.vae import flow_specs

Energy = Callable[[Tensor], Tensor]


def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _gaussian_bumps(*terms: Tensor) -> Tensor:
    """``−log Σ exp(−½ t²)`` over the given standardised offsets, computed stably."""
    return -torch.logsumexp(torch.stack([-0.5 * t**2 for t in terms], dim=-1), dim=-1)


def u1(z: Tensor) -> Tensor:
    """Energy U1: a ring of radius 2 cut into two arcs.

    Example:
        >>> u1(torch.tensor([[0.0, 2.0]]))  # on the ring, between the arcs: 50/9 − log 2
        tensor([4.8624])
    """
    return 0.5 * ((z.norm(dim=-1) - 2) / 0.4) ** 2 + _gaussian_bumps((z[:, 0] - 2) / 0.6, (z[:, 0] + 2) / 0.6)


def u2(z: Tensor) -> Tensor:
    """Energy U2: a sine wave, ``½((z2 − w1(z))/0.4)²``.

    Example:
        >>> u2(torch.tensor([[1.0, 1.0], [0.0, 0.4]]))  # w1 = 1 at z1 = 1, 0 at z1 = 0
        tensor([0.0000, 0.5000])
    """
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def u3(z: Tensor) -> Tensor:
    """Energy U3: the sine wave and a copy shifted by the bump w2 around z1 = 1."""
    wave = z[:, 1] - _w1(z)
    return _gaussian_bumps(wave / 0.35, (wave + _w2(z)) / 0.35)


def u4(z: Tensor) -> Tensor:
    """Energy U4: the sine wave and a copy shifted by the step w3 past z1 = 1."""
    wave = z[:, 1] - _w1(z)
    return _gaussian_bumps(wave / 0.4, (wave + _w3(z)) / 0.35)


WINDOW = 4.0  # the figure shows [−4, 4]², as the paper's figure 3 does


def _in_window(energy: Energy, softness: float = 0.4) -> Energy:
    """``energy`` plus a soft wall ``½(max(|z1| − 4, 0)/0.4)²``: the same inside the plotted window.

    U2–U4 do not depend on z1 far from the origin, so exp(−U) has no normaliser and a
    posterior lowers the objective without end by spreading along z1 (a diagonal
    Gaussian does, to a standard deviation of hundreds within 2,000 steps).
    """

    def walled(z: Tensor) -> Tensor:
        return energy(z) + 0.5 * (torch.relu(z[:, 0].abs() - WINDOW) / softness) ** 2

    return walled


def _correlated_gaussian(rho: float) -> Energy:
    """``−log N(z; 0, [[1, ρ], [ρ, 1]])``, normalised, so log Z = 0."""

    def energy(z: Tensor) -> Tensor:
        quadratic = (z[:, 0] ** 2 - 2 * rho * z[:, 0] * z[:, 1] + z[:, 1] ** 2) / (1 - rho**2)
        return 0.5 * quadratic + math.log(2 * math.pi) + 0.5 * math.log(1 - rho**2)

    return energy


def _two_modes(offset: float, scale: float) -> Energy:
    """``−log(½N(z; m, s²I) + ½N(z; −m, s²I))`` with ``m = (offset, offset)``, normalised."""

    def energy(z: Tensor) -> Tensor:
        bumps = _gaussian_bumps(((z - offset) / scale).norm(dim=-1), ((z + offset) / scale).norm(dim=-1))
        return bumps + math.log(2 * 2 * math.pi * scale**2)

    return energy


@dataclass(frozen=True)
class Target:
    """A 2-D density known up to its normaliser, ``p(z) ∝ exp(−energy(z))``.

    Args:
        energy: U, mapping ``(n, 2)`` points to ``(n,)`` energies.
        best_diagonal: the free energy of the best diagonal Gaussian, where known in
            closed form (a check on the fit).
    """

    energy: Energy
    best_diagonal: float | None = None


CORRELATION = 0.95
TARGETS: dict[str, Target] = {
    "U1": Target(u1),
    "U2": Target(_in_window(u2)),
    "U3": Target(_in_window(u3)),
    "U4": Target(_in_window(u4)),
    # Reverse KL fits each marginal variance to 1/(Σ⁻¹)_ii = 1 − ρ², leaving KL = −½ log(1 − ρ²).
    "correlated": Target(_correlated_gaussian(CORRELATION), -0.5 * math.log(1 - CORRELATION**2)),
    # Modes 11 standard deviations apart: a Gaussian on one of them misses half the mass, KL = log 2.
    "bimodal": Target(_two_modes(offset=2.0, scale=0.5), math.log(2)),
}

BASELINE = "diagonal_gaussian"
DEFAULT_FLOWS = (BASELINE, "planar", "radial", "iaf", "sylvester_orthogonal")
STEPS, FLOW_STEPS, BATCH_SIZE = 1500, 16, 256
HIDDEN_FEATURES = 32  # for flows with a network: the VAE defaults (320 units) are far more than 2-D needs


class ToyPosterior(nn.Module):
    """A diagonal Gaussian with a free mean and log-std, pushed through a chain of flows.

    Args:
        transforms: the flow steps (nflows transforms of 2-D points, without context), in order.

    Example:
        >>> q = ToyPosterior([])
        >>> z, log_q = q.sample(3)
        >>> z.shape, torch.allclose(log_q, -0.5 * z.square().sum(-1) - math.log(2 * math.pi))
        (torch.Size([3, 2]), True)
    """

    def __init__(self, transforms: Sequence[nn.Module]):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(2))
        self.log_std = nn.Parameter(torch.zeros(2))
        self.flows = CompositeTransform(list(transforms))

    def sample(self, n: int) -> tuple[Tensor, Tensor]:
        """``n`` samples ``z``, ``(n, 2)``, and their log-density ``log q(z)``, ``(n,)``."""
        noise = torch.randn(n, 2)
        log_q0 = (-0.5 * noise**2 - self.log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        z, logabsdet = self.flows(self.mean + self.log_std.exp() * noise)
        return z, log_q0 - logabsdet


def build_posterior(flow: str, flow_steps: int) -> ToyPosterior:
    """A posterior with ``flow_steps`` steps of a registered flow (none for :data:`BASELINE`).

    Flows with a network get :data:`HIDDEN_FEATURES` units; flows with a triangular
    Jacobian (IAF, MAF) get a ``reverse`` between steps so that each coordinate in turn
    depends on the other.

    Example:
        >>> [type(step).__name__ for step in build_posterior("iaf", 2).flows._transforms]
        ['GatedIAF', 'ReversePermutation', 'GatedIAF']
    """
    if flow == BASELINE:
        return ToyPosterior([])
    entry = flows[flow]
    spec = {"name": flow, "repeat": flow_steps, "between": "reverse" if entry.tags.get("triangular") else None}
    if "hidden_features" in entry.parameters:
        spec["hidden_features"] = HIDDEN_FEATURES
    return ToyPosterior(
        [flows.build(step, path, features=2, context_features=0) for path, step in flow_specs([spec], "toy.flows")]
    )


def free_energy(posterior: ToyPosterior, energy: Energy, samples: int = 10_000) -> float:
    """The variational free energy ``F = E_q[log q(z) + U(z)] = KL(q‖p) − log Z``, by Monte Carlo.

    It is the negative ELBO: lower is better, and an exact fit reaches ``−log Z``.

    Example:
        >>> _ = torch.manual_seed(0)  # N(0, I) against the correlated Gaussian: ½(2/(1 − ρ²) − 2 + log(1 − ρ²)) = 8.09
        >>> round(free_energy(ToyPosterior([]), TARGETS["correlated"].energy, samples=100_000), 1)
        8.1
    """
    with torch.no_grad():
        z, log_q = posterior.sample(samples)
        return (log_q + energy(z)).mean().item()


def fit_posterior(
    energy: Energy,
    flow: str,
    *,
    flow_steps: int = FLOW_STEPS,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    learning_rate: float = 1e-2,
    anneal: float = 0.5,
    seed: int = 0,
) -> ToyPosterior:
    """Fit a posterior to ``exp(−energy)`` by minimising ``E_q[log q(z) + β U(z)]`` with Adam.

    β grows linearly from 0.01 to 1 over the first ``anneal`` fraction of the steps, then
    stays at 1 (the paper's β_t = min(1, 0.01 + t/10⁴), scaled to the budget): a nearly
    flat target first spreads q over the whole density, so that a flow can then split
    it between modes instead of settling on the first mode it finds.

    Args:
        energy: the target's U.
        flow: a registered flow, or :data:`BASELINE` for the diagonal Gaussian alone.
        flow_steps: K, the number of flow steps.
        steps: Adam steps, each on ``batch_size`` samples from q.
        anneal: fraction of the steps over which β reaches 1 (0 for none).
        seed: seeds the flow's initial parameters and the samples.

    Raises:
        TrainingError: the loss became non-finite.

    References:
        Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015,
        section 6.1 and figure 3.

    Example:
        >>> q = fit_posterior(TARGETS["correlated"].energy, "diagonal_gaussian", steps=300, seed=0)
        >>> [round(v, 1) for v in q.log_std.exp().tolist()]  # the best diagonal: sqrt(1 − 0.95²) = 0.31
        [0.3, 0.3]
    """
    torch.manual_seed(seed)
    posterior = build_posterior(flow, flow_steps)
    optimizer = torch.optim.Adam(posterior.parameters(), lr=learning_rate)
    for step in range(steps):
        beta = min(1.0, 0.01 + step / (anneal * steps)) if anneal else 1.0
        z, log_q = posterior.sample(batch_size)
        loss = (log_q + beta * energy(z)).mean()
        if not torch.isfinite(loss):
            raise TrainingError(f"fitting {flow}: the loss became {loss.item()} at step {step}; try another --seed")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return posterior


def log_normalizer(energy: Energy, half_width: float = 8.0, points: int = 1601) -> float:
    """``log Z = log ∫ exp(−U(z)) dz`` by a Riemann sum on a grid over ``[−half_width, half_width]²``.

    Example:
        >>> abs(log_normalizer(TARGETS["bimodal"].energy)) < 1e-6  # a normalised density
        True
    """
    axis = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    return (torch.logsumexp(-energy(grid), 0) + 2 * math.log(axis[1] - axis[0])).item()


PANEL = 128  # pixels per side of each panel of the figure
_VIRIDIS = torch.tensor([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]) / 255


def _colormap(intensity: Tensor) -> Tensor:
    """``(H, W)`` values in [0, 1] to ``(3, H, W)`` colours on a viridis-like ramp."""
    position = intensity.clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = position.floor().long().clamp(max=len(_VIRIDIS) - 2)
    fraction = (position - low)[..., None]
    return ((1 - fraction) * _VIRIDIS[low] + fraction * _VIRIDIS[low + 1]).permute(2, 0, 1)


def _pixel_centres() -> Tensor:
    """The ``(PANEL², 2)`` points at the centres of a panel's pixels, row by row from the top (z2 up)."""
    centres = (torch.arange(PANEL) + 0.5) * (2 * WINDOW / PANEL) - WINDOW
    z2, z1 = torch.meshgrid(centres.flip(0), centres, indexing="ij")
    return torch.stack([z1, z2], dim=-1).reshape(-1, 2)


def _histogram(z: Tensor) -> Tensor:
    """Counts of ``z`` per pixel of a panel, in the layout of :func:`_pixel_centres`."""
    column = ((z[:, 0] + WINDOW) / (2 * WINDOW) * PANEL).floor().long()
    row = ((WINDOW - z[:, 1]) / (2 * WINDOW) * PANEL).floor().long()
    inside = (column >= 0) & (column < PANEL) & (row >= 0) & (row < PANEL)
    return torch.bincount(row[inside] * PANEL + column[inside], minlength=PANEL * PANEL).view(PANEL, PANEL).float()


def density_figure(
    targets: dict[str, Energy], posteriors: dict[str, dict[str, ToyPosterior]], samples: int = 200_000
) -> Image.Image:
    """The targets' ``exp(−U)`` in the first row, then one row per flow of its fitted q, over [−4, 4]².

    q is drawn as a histogram of ``samples`` samples (flows without an inverse have no
    density to evaluate on a grid). Each panel is scaled to its own maximum.

    Args:
        targets: name → energy, one column each.
        posteriors: flow → target name → fitted posterior.

    Example:
        >>> figure = density_figure({"U1": u1}, {"diagonal_gaussian": {"U1": ToyPosterior([])}}, samples=1000)
        >>> figure.size[1] > 2 * PANEL
        True
    """
    grid = _pixel_centres()
    energies = [energy(grid) for energy in targets.values()]
    panels = [torch.exp(u.min() - u).view(PANEL, PANEL) for u in energies]
    with torch.no_grad():
        for by_target in posteriors.values():
            for name in targets:
                counts = _histogram(by_target[name].sample(samples)[0])
                panels.append(counts / counts.max().clamp(min=1))
    padding = 2
    tiles = image_grid(torch.stack([_colormap(panel) for panel in panels]), columns=len(targets), padding=padding)
    labels = ["target exp(-U)", *posteriors]  # the default font has no U+2212 minus
    font = ImageFont.load_default()
    left, top = int(max(font.getlength(label) for label in labels)) + 8, 16
    figure = Image.new("RGB", (left + tiles.shape[2], top + tiles.shape[1]), "white")
    figure.paste(Image.fromarray(tiles.permute(1, 2, 0).numpy()), (left, top))
    draw = ImageDraw.Draw(figure)
    step = PANEL + padding
    for i, name in enumerate(targets):
        draw.text((left + padding + i * step + PANEL // 2, top // 2), name, fill="black", font=font, anchor="mm")
    for i, label in enumerate(labels):
        draw.text((4, top + padding + i * step + PANEL // 2), label, fill="black", font=font, anchor="lm")
    return figure.convert("P", palette=Image.Palette.ADAPTIVE)  # 256 colours are plenty, and halve the PNG


def _check_names(names: Sequence[str], known: Sequence[str], option: str, kind: str) -> list[Problem]:
    return [Problem(option, f"unknown {kind} '{name}'. {did_you_mean(name, known)}") for name in names
            if name not in known]


def _table_rows(
    values: dict[str, dict[str, float]], log_z: dict[str, float], emphasis: Callable[[str], str], changes: bool
) -> list[list[str]]:
    """One row per flow, then the exact fit and the closed-form references; ``emphasis`` marks the best per column.

    With ``changes``, each flow's cells also give the change from the baseline's.
    """
    targets = list(log_z)
    best = {t: min(by_target[t] for by_target in values.values()) for t in targets}
    rows = []
    for flow, by_target in values.items():
        cells = []
        for t in targets:
            text = f"{by_target[t]:.2f}"
            if changes and flow != BASELINE and BASELINE in values:
                text += f" ({by_target[t] - values[BASELINE][t]:+.2f})"
            cells.append(emphasis(text) if by_target[t] == best[t] else text)
        rows.append([flow, *cells])
    rows.append(["exact fit: −log Z", *(f"{-log_z[t]:.2f}" for t in targets)])
    references = [TARGETS[t].best_diagonal for t in targets]
    if any(r is not None for r in references):
        rows.append(["closed-form diagonal", *("—" if r is None else f"{r:.2f}" for r in references)])
    return rows


def run_toy(
    targets: Sequence[str] = tuple(TARGETS),
    flow_names: Sequence[str] = DEFAULT_FLOWS,
    *,
    steps: int = STEPS,
    flow_steps: int = FLOW_STEPS,
    batch_size: int = BATCH_SIZE,
    seed: int = 0,
    output: str | Path = "runs/toy",
) -> dict[str, dict[str, float]]:
    """Fit every (target, flow) pair, print the table, and write ``toy.png`` and ``toy.md`` to ``output``.

    Every pair is fitted from the same seed with the same budget; F is then estimated
    with 10,000 samples.

    Returns:
        flow → target → F, the final free energy ``E_q[log q + U]`` in nats.

    Raises:
        ConfigError: an unknown target or flow, or a count below 1.
    """
    targets, flow_names = list(dict.fromkeys(targets)), list(dict.fromkeys(flow_names))  # a repeated name counts once
    problems = _check_names(targets, list(TARGETS), "--targets", "target")
    problems += _check_names(flow_names, [BASELINE, *flows.list()], "--flows", "flow")
    problems += [Problem(f"--{name.replace('_', '-')}", "must be at least 1")
                 for name, value in (("steps", steps), ("flow_steps", flow_steps), ("batch_size", batch_size))
                 if value < 1]
    if problems:
        raise ConfigError(problems)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-D batches are too small to share; on busy cores extra threads run 10× slower
    start = time.perf_counter()
    try:
        posteriors = {flow: {} for flow in flow_names}
        values = {flow: {} for flow in flow_names}
        for target in targets:
            for flow in flow_names:
                fit_start = time.perf_counter()
                posteriors[flow][target] = posterior = fit_posterior(
                    TARGETS[target].energy, flow, flow_steps=flow_steps, steps=steps, batch_size=batch_size, seed=seed
                )
                values[flow][target] = free_energy(posterior, TARGETS[target].energy)
                console.print(f"{target} × {flow}: F = {values[flow][target]:.3f} "
                              f"({time.perf_counter() - fit_start:.1f} s)", highlight=False)
        figure = density_figure({t: TARGETS[t].energy for t in targets}, posteriors)
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - start
    log_z = {t: log_normalizer(TARGETS[t].energy) for t in targets}
    caption = (f"F = E_q[log q(z) + U(z)] = KL(q‖p) − log Z in nats, 10,000 samples: lower is better. K = "
               f"{flow_steps} flow steps, {steps} Adam steps of {batch_size} samples, seed {seed}; {elapsed:.0f} s.")
    table = Table(title="flowzoo toy: free energy F, best per target in bold", title_justify="left",
                  caption=escape(caption), caption_justify="left")
    for column in ["flow", *targets]:
        table.add_column(column, justify="left" if column == "flow" else "right", no_wrap=column == "flow")
    for row in _table_rows(values, log_z, lambda text: f"[bold green]{text}[/]", changes=False):
        table.add_row(*row)
    console.print(table)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    figure.save(output / "toy.png")
    rows = _table_rows(values, log_z, lambda text: f"**{text}**", changes=True)
    markdown = [f"| flow | {' | '.join(targets)} |", "|---" + "|---:" * len(targets) + "|"]
    markdown += [f"| {' | '.join(row)} |" for row in rows]
    notes = f"{caption} Best per target in bold; (±x): change from {BASELINE}."
    (output / "toy.md").write_text("\n".join(["# flowzoo toy", "", *markdown, "", notes, "", "![](toy.png)", ""]))
    console.print(f"wrote {output / 'toy.png'} and {output / 'toy.md'}", highlight=False)
    return values
