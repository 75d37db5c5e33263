"""Check that a flow keeps the ``Transform`` contract: ``flowzoo check-flow NAME``.

The checks build the flow at a small size in float64, move its parameters away
from their (often near-identity) initialisation, and compare what it reports with
what autograd measures on random inputs and contexts. The same function serves the
command line, flowzoo's own test suite (run over every registered flow) and a
plugin author's tests.
"""

from __future__ import annotations

__all__ = ["Check", "FlowCheck", "check_flow", "jacobians"]

import dataclasses
import io
from typing import Any, Callable, Mapping

import torch
from nflows.transforms import InverseNotAvailable
from rich.table import Table
from torch import nn
from torch.autograd.functional import jacobian

from flowzoo.registry import flows

PASS, FAIL, SKIP = "pass", "FAIL", "skip"


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of one check: ``status`` is pass, FAIL or skip; ``error`` the largest deviation."""

    name: str
    status: str
    detail: str
    error: float | None = None


@dataclasses.dataclass(frozen=True)
class FlowCheck:
    """All checks of one flow at one size."""

    flow: str
    spec: Mapping[str, Any]
    checks: tuple[Check, ...]
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == FAIL]

    def table(self) -> Table:
        """The checks as a rich table."""
        verdict = "[green]passed[/]" if self.passed else f"[red]{len(self.failures)} failed[/]"
        table = Table(title=f"check-flow {self.flow}: {verdict}", title_justify="left",
                      caption=f"float64, tolerance {self.tolerance:g}", caption_justify="left")
        for column in ("check", "result", "max error", "detail"):
            table.add_column(column, justify="right" if column == "max error" else "left")
        colours = {PASS: "green", FAIL: "bold red", SKIP: "yellow"}
        for check in self.checks:
            error = "" if check.error is None else f"{check.error:.2e}"
            table.add_row(check.name, f"[{colours[check.status]}]{check.status}[/]", error, check.detail)
        return table

    def assert_passed(self) -> None:
        """Raise ``AssertionError`` naming every failed check; for use in tests."""
        if not self.passed:
            lines = [f"  {c.name}: {c.detail}" for c in self.failures]
            raise AssertionError(f"flow '{self.flow}' failed {len(lines)} check(s):\n" + "\n".join(lines))


def jacobians(flow: nn.Module, z: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """Per-example Jacobians ``∂z'/∂z``, ``(batch, features, features)``, by autograd."""

    def one(i: int) -> torch.Tensor:
        c = None if context is None else context[i : i + 1]
        return jacobian(lambda u: flow(u[None], context=c)[0][0], z[i])

    return torch.stack([one(i) for i in range(z.shape[0])])


def check_flow(
    flow: str | Mapping[str, Any],
    features: int = 5,
    context_features: int = 3,
    batch_size: int = 4,
    seed: int = 0,
    perturbation: float = 0.3,
    tolerance: float = 1e-6,
) -> FlowCheck:
    """Build a registered flow small, in float64, and check it against autograd.

    Checks: output shapes; log-det against ``log|det J|`` of the autograd Jacobian;
    finite gradients reaching every parameter and the input; the Jacobian's
    triangular structure for flows registered with ``triangular="lower"``/``"upper"``;
    the inverse, when the flow has one; and a state-dict round trip.

    Args:
        flow: a registered name, or a spec ``{name: ..., **parameters}``.
        features: size of z.
        context_features: size of the context h (0 for none).
        batch_size: number of random inputs.
        seed: seeds the flow's parameters and the inputs.
        perturbation: scale of the noise added to every parameter (divided by the
            square root of the fan-in for weight matrices), so the checks do not only
            see the near-identity start.
        tolerance: largest accepted absolute error.

    Raises:
        ConfigError: the name is unknown or the parameters are invalid.

    Example:
        >>> report = check_flow("planar")
        >>> report.passed, [check.name for check in report.checks]
        (True, ['output shapes', 'log-det = log|det J|', 'finite gradients', 'inverse', 'save/load'])
    """
    spec = {"name": flow} if isinstance(flow, str) else dict(flow)
    build = _builder(spec, features, context_features, perturbation)
    module = build(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(batch_size, features, generator=generator, dtype=torch.float64)
    context = torch.randn(batch_size, context_features, generator=generator, dtype=torch.float64)
    context = context if context_features else None
    triangular = flows[spec["name"]].tags.get("triangular")

    checks = [_run("output shapes", lambda: _shapes(module, z, context))]
    if checks[0].status == PASS:
        checks.append(_run("log-det = log|det J|", lambda: _logabsdet(module, z, context, tolerance)))
        checks.append(_run("finite gradients", lambda: _gradients(module, z, context)))
        if triangular:
            checks.append(_run(f"{triangular} triangular J", lambda: _triangular(module, z, context, triangular,
                                                                                 tolerance)))
        checks.append(_run("inverse", lambda: _inverse(module, z, context, tolerance)))
        checks.append(_run("save/load", lambda: _save_load(module, build(seed + 100), z, context)))
    return FlowCheck(spec["name"], spec, tuple(checks), tolerance)


def _builder(spec: dict, features: int, context_features: int, perturbation: float) -> Callable[[int], nn.Module]:
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        module = flows.build(spec, "flow", features=features, context_features=context_features).double()
        with torch.no_grad():
            for parameter in module.parameters():
                fan_in = parameter.shape[-1] if parameter.dim() > 1 else 1
                parameter.add_(perturbation / fan_in**0.5 * torch.randn_like(parameter))
        return module

    return build


def _run(name: str, check: Callable[[], tuple[str, str, float | None]]) -> Check:
    try:
        status, detail, error = check()
    except Exception as exception:  # a crashing flow is a failed check, reported like the others
        return Check(name, FAIL, f"raised {type(exception).__name__}: {exception}")
    return Check(name, status, detail, error)


def _shapes(flow, z, context):
    out, logabsdet = flow(z, context=context)
    if out.shape != z.shape or logabsdet.shape != z.shape[:1]:
        return FAIL, (f"z {tuple(z.shape)} gave z' {tuple(out.shape)} and logabsdet {tuple(logabsdet.shape)}; "
                      f"expected {tuple(z.shape)} and {tuple(z.shape[:1])}"), None
    return PASS, f"z' {tuple(out.shape)}, logabsdet {tuple(logabsdet.shape)}", None


def _logabsdet(flow, z, context, tolerance):
    _, logabsdet = flow(z, context=context)
    expected = torch.linalg.slogdet(jacobians(flow, z, context)).logabsdet
    error = (logabsdet - expected).abs().max().item()
    status = PASS if error <= tolerance else FAIL
    return status, f"reported {logabsdet[0].item():.6g}, autograd {expected[0].item():.6g} (first input)", error


def _gradients(flow, z, context):
    z = z.clone().requires_grad_()
    out, logabsdet = flow(z, context=context)
    (out.square().sum() + logabsdet.sum()).backward()
    missing = [name for name, p in flow.named_parameters() if p.requires_grad and p.grad is None]
    bad = [name for name, p in flow.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if not torch.isfinite(z.grad).all():
        bad.append("the input z")
    if missing or bad:
        return FAIL, "; ".join(filter(None, [missing and f"no gradient: {', '.join(missing)}",
                                             bad and f"non-finite: {', '.join(bad)}"])), None
    count = sum(1 for _ in flow.parameters())
    return PASS, f"{count} parameter tensors and the input", None


def _triangular(flow, z, context, which, tolerance):
    mask = torch.ones(z.shape[1], z.shape[1], dtype=torch.bool)
    outside = mask.triu(diagonal=1) if which == "lower" else mask.tril(diagonal=-1)
    error = jacobians(flow, z, context)[:, outside].abs().max().item()
    side = "above" if which == "lower" else "below"
    return (PASS if error <= tolerance else FAIL), f"largest |∂z'_i/∂z_j| {side} the diagonal", error


def _inverse(flow, z, context, tolerance):
    out, logabsdet = flow(z, context=context)
    try:
        back, inverse_logabsdet = flow.inverse(out, context=context)
    except InverseNotAvailable as reason:
        return SKIP, str(reason) or "no analytic inverse", None
    error = max((back - z).abs().max().item(), (inverse_logabsdet + logabsdet).abs().max().item())
    return (PASS if error <= tolerance else FAIL), "inverse(forward(z)) = z and its log-det = −log-det", error


def _save_load(flow, other, z, context):
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    error = max((a - b).abs().max().item() for a, b in zip(flow(z, context=context), other(z, context=context)))
    return (PASS if error == 0 else FAIL), "a fresh build loading the state dict gives the same outputs", error
