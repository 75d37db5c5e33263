"""The contract of every kind of component, as checks a test suite can run over a registry.

``check_encoder``, ``check_decoder``, ``check_likelihood``, ``check_posterior``,
``check_prior``, ``check_block``, ``check_dataset`` and ``check_model`` each build one
registered component small and report, check by check, whether it keeps what the
rest of flowzoo relies on (flows have :func:`flowzoo.flowcheck.check_flow`, built on
the same :class:`Report`). flowzoo's own suite runs them over every registered name,
plugins included (tests/test_contracts.py); a plugin's tests can call them on its own
components.

A component is built through :func:`build`, from its registration's
``test_parameters`` tag (``@register_encoder("big", test_parameters={"width": 8})``)
under whatever the given spec sets, with its defaults otherwise. Data are made for the
likelihood at hand: each sub-pixel takes :func:`data_values` values ``0, 1, ...``.

Example:
    >>> report = check_encoder("mlp")
    >>> report.passed, [check.name for check in report.checks]
    (True, ['output shape', 'finite gradients', 'save/load'])
    >>> check_likelihood("bernoulli").assert_passed()
"""

from __future__ import annotations

__all__ = [
    "PASS",
    "FAIL",
    "SKIP",
    "Check",
    "Report",
    "DATA_SHAPE",
    "build",
    "perturb",
    "data_values",
    "run_check",
    "gradient_check",
    "save_load_check",
    "check_encoder",
    "check_decoder",
    "check_likelihood",
    "check_posterior",
    "check_prior",
    "check_block",
    "check_dataset",
    "check_model",
]

import dataclasses
import io
import math
import tempfile
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from rich.table import Table
from torch import Tensor, nn

from flowzoo.errors import ConfigError, DataError, Problem
from flowzoo.registry import get_registry

PASS, FAIL, SKIP = "pass", "FAIL", "skip"
"""The statuses of a :class:`Check`."""

DATA_SHAPE = (3, 8, 8)
"""The ``(channels, height, width)`` of the images the checks use unless told otherwise."""

_MASS_CHECK_IMAGES = 1024  # the most images enumerated to sum a likelihood's mass over all of them
_DENSITY_SAMPLES, _NEIGHBOURS, _DENSITY_TOLERANCE = 50_000, 200, 0.05


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of one check: ``status`` is pass, FAIL or skip; ``error`` the largest deviation."""

    name: str
    status: str
    detail: str
    error: float | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    """All checks of one component: its kind ("flow", "encoder", ...), name and spec."""

    kind: str
    name: str
    spec: Mapping[str, Any]
    checks: tuple[Check, ...]
    caption: str = ""

    @property
    def passed(self) -> bool:
        return all(check.status != FAIL for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if check.status == FAIL]

    def table(self) -> Table:
        """The checks as a rich table."""
        verdict = "[green]passed[/]" if self.passed else f"[red]{len(self.failures)} failed[/]"
        table = Table(title=f"check-{self.kind} {self.name}: {verdict}", title_justify="left",
                      caption=self.caption or None, caption_justify="left")
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
            raise AssertionError(f"{self.kind} '{self.name}' failed {len(lines)} check(s):\n" + "\n".join(lines))


def run_check(name: str, check: Callable[[], tuple[str, str, float | None]]) -> Check:
    """Run one check, ``check() -> (status, detail, error)``; a check that raises has failed."""
    try:
        status, detail, error = check()
    except Exception as exception:  # a crashing component is a failed check, reported like the others
        return Check(name, FAIL, f"raised {type(exception).__name__}: {exception}")
    return Check(name, status, detail, error)


def _report(kind: str, spec: Mapping[str, Any], checks: Sequence[tuple[str, Callable[[], tuple]]]) -> Report:
    """Run ``checks`` in order; all but the first are left out when the first (the shapes) fails."""
    results = [run_check(*checks[0])]
    if results[0].status != FAIL:
        results += [run_check(name, check) for name, check in checks[1:]]
    return Report(kind, spec["name"], spec, tuple(results))


def build(kind: str, spec: str | Mapping[str, Any], seed: int | None = None, **injected: Any) -> Any:
    """Build a registered component small: its registration's ``test_parameters``, then what ``spec`` sets.

    The one place where the checks build components.

    Args:
        kind: the registry, by plural or singular name ("encoders", "encoder").
        spec: a registered name, or a spec ``{name: ..., **parameters}``.
        seed: seeds the initial weights, if given.
        injected: what the model would supply (``input_shape``, ``latent_size``, ...).

    Raises:
        ConfigError: the name is unknown or the parameters are invalid.

    Example:
        >>> build("encoders", {"name": "mlp", "hidden_sizes": [8]}, input_shape=(1, 4, 4)).out_features
        8
    """
    registry = get_registry(kind)
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.get("name", registry.default)
    small = registry[name].tags.get("test_parameters") if name in registry else None
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return registry.build({**(small or {}), **spec}, registry.kind, **injected)
    except ConfigError as error:
        if small is not None or not any(problem.message.startswith("missing") for problem in error.problems):
            raise
        hint = (f"the checks build a {registry.kind} from its registration's test_parameters, under the given spec: "
                f"@register_{registry.kind}({name!r}, test_parameters={{...}}) gives a small one")
        raise ConfigError([*error.problems, Problem(registry.kind, hint)]) from error


def _spec(kind: str, spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """The spec a report names: the given one with its name filled in."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    return {"name": spec.get("name", get_registry(kind).default), **spec}


@torch.no_grad()
def perturb(module: nn.Module, scale: float) -> nn.Module:
    """Add noise from the random stream to every parameter (divided by the square root of
    the fan-in for weight matrices), so that checks do not only see a near-identity start."""
    for parameter in module.parameters():
        fan_in = parameter.shape[-1] if parameter.dim() > 1 else 1
        parameter.add_(scale / fan_in**0.5 * torch.randn_like(parameter))
    return module


def data_values(likelihood: nn.Module) -> int | None:
    """How many values ``0, 1, ..., n − 1`` each sub-pixel of the likelihood's data takes
    (None for continuous data): its ``data_values`` attribute where it has one, else 256
    for a likelihood of 8-bit images (it reports bits/dim), else 2 (binary data).

    Example:
        >>> from flowzoo.likelihoods import Bernoulli, DiscretizedLogistic
        >>> data_values(Bernoulli()), data_values(DiscretizedLogistic())
        (2, 256)
    """
    return getattr(likelihood, "data_values", 256 if getattr(likelihood, "reports_bits_per_dim", False) else 2)


def _data(likelihood: nn.Module, shape: Sequence[int], generator: torch.Generator) -> Tensor:
    """Random data the likelihood models, as floats (what the trainer gives a model)."""
    values = data_values(likelihood)
    if values is None:
        return torch.randn(tuple(shape), generator=generator)
    return torch.randint(0, values, tuple(shape), generator=generator).float()


def _tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor in a nest of tuples, lists and dicts."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _shape_problems(named: Mapping[str, tuple[Tensor | None, tuple[int, ...] | None]]) -> list[str]:
    """``name: got ..., expected ...`` for every tensor of the wrong shape (expected None: must be None)."""
    problems = []
    for name, (tensor, expected) in named.items():
        got = None if tensor is None else tuple(tensor.shape)
        if got != expected:
            problems.append(f"{name} {got}, expected {expected}")
        elif tensor is not None and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            problems.append(f"{name} is not finite")
    return problems


def _shapes_result(named: Mapping[str, tuple[Tensor | None, tuple[int, ...] | None]]) -> tuple[str, str, None]:
    problems = _shape_problems(named)
    if problems:
        return FAIL, "; ".join(problems), None
    return PASS, ", ".join(f"{name} {tuple(t.shape)}" for name, (t, _) in named.items() if t is not None), None


def gradient_check(module: nn.Module, loss: Tensor,
                   inputs: Mapping[str, Tensor] | None = None) -> tuple[str, str, None]:
    """Back-propagate ``loss``: every parameter of ``module`` (and every named input) gets a finite gradient."""
    inputs = inputs or {}
    loss.backward()
    parameters = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    missing = [name for name, p in parameters if p.grad is None]
    bad = [name for name, p in parameters if p.grad is not None and not torch.isfinite(p.grad).all()]
    bad += [name for name, x in inputs.items() if x.grad is None or not torch.isfinite(x.grad).all()]
    if missing or bad:
        return FAIL, "; ".join(filter(None, [missing and f"no gradient: {', '.join(missing)}",
                                             bad and f"none or non-finite: {', '.join(bad)}"])), None
    what = f"{len(parameters)} parameter tensors" + (f" and {', '.join(inputs)}" if inputs else "")
    return PASS, what, None


def _seeded(run: Callable[[], Any], seed: int) -> Any:
    """``run()`` with the random stream seeded, leaving the caller's stream as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return run()


def save_load_check(module: nn.Module, other: nn.Module, run: Callable[[nn.Module], Any]) -> tuple[str, str, float]:
    """``other`` loading ``module``'s saved state computes exactly what ``module`` does, noise included."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    ours, theirs = (list(_tensors(_seeded(lambda m=m: run(m), 7))) for m in (module, other))
    error = max((a.double() - b.double()).abs().max().item() for a, b in zip(ours, theirs))
    status = PASS if len(ours) == len(theirs) and error == 0 else FAIL
    return status, "a fresh build loading the state dict gives the same outputs (same seed)", error


def _density_check(samples: Tensor, log_density: Tensor) -> tuple[str, str, float]:
    """Whether ``log_density`` is the log-density of the 1-D ``samples`` it was reported for.

    The density at each sample is estimated from the distance between its
    ``k``-th neighbours on either side, ``2k / (n · (x_{i+k} − x_{i−k}))``; the mean
    log-ratio to the reported density must be about 0 in each quarter of the central
    80% of the samples (noise about 0.01 for 50,000 samples; a missing
    ``log σ`` or normalising constant is far larger).
    """
    order = samples.argsort()
    x, log_q = samples[order].double(), log_density[order].double()
    n, k = len(x), _NEIGHBOURS
    estimate = math.log(2 * k / n) - torch.log(x[2 * k :] - x[: -2 * k])
    ratio = log_q[k : n - k] - estimate
    tail = len(ratio) // 10
    error = max(abs(part.mean().item()) for part in ratio[tail : len(ratio) - tail].chunk(4))
    status = PASS if error <= _DENSITY_TOLERANCE else FAIL
    return status, f"reported log-density against a {k}-nearest-neighbour estimate from {n:,} samples", error


# -- encoders and decoders -----------------------------------------------------------------


def check_encoder(encoder: str | Mapping[str, Any], input_shape: Sequence[int] = DATA_SHAPE, batch_size: int = 4,
                  seed: int = 0) -> Report:
    """An encoder maps images ``(batch, *input_shape)`` in [0, 1] to ``(batch, out_features)``.

    Checks: the output shape and the ``out_features`` it exposes (the model sizes the
    posterior and the context by it); finite gradients reaching every parameter; a
    state-dict round trip.
    """
    spec = _spec("encoders", encoder)

    def make(seed: int) -> nn.Module:
        return build("encoders", spec, seed, input_shape=tuple(input_shape))

    module = make(seed)
    x = torch.rand(batch_size, *input_shape, generator=torch.Generator().manual_seed(seed + 1))

    def shapes():
        features = getattr(module, "out_features", None)
        if not isinstance(features, int) or isinstance(features, bool):
            return FAIL, f"out_features is {features!r}, expected the size of the features (an int)", None
        return _shapes_result({"features": (module(x), (batch_size, features))})

    return _report("encoder", spec, [
        ("output shape", shapes),
        ("finite gradients", lambda: gradient_check(module, module(x).square().sum())),
        ("save/load", lambda: save_load_check(module, make(seed + 100), lambda m: m(x))),
    ])


def check_decoder(decoder: str | Mapping[str, Any], likelihood: str | Mapping[str, Any] = "bernoulli",
                  latent_size: int = 4, data_shape: Sequence[int] = DATA_SHAPE, batch_size: int = 4,
                  seed: int = 0) -> Report:
    """A decoder maps ``z`` to the likelihood's parameters: ``(batch, channels × params_per_channel, height, width)``.

    Checks: the output shape for the likelihood's ``params_per_channel``; that the
    likelihood scores data with it; finite gradients reaching every parameter; a
    state-dict round trip.
    """
    spec = _spec("decoders", decoder)
    built_likelihood = build("likelihoods", likelihood)
    per_channel = getattr(built_likelihood, "params_per_channel", 1)
    output_shape = (data_shape[0] * per_channel, *data_shape[1:])

    def make(seed: int) -> nn.Module:
        return build("decoders", spec, seed, latent_size=latent_size, output_shape=output_shape)

    module = make(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    z = torch.randn(batch_size, latent_size, generator=generator)
    x = _data(built_likelihood, (batch_size, *data_shape), generator)
    name = _spec("likelihoods", likelihood)["name"]

    def shapes():
        return _shapes_result({"params": (module(z), (batch_size, *output_shape))})

    def scored():
        return _shapes_result({"log p(x|z)": (built_likelihood.log_prob(x, module(z)), (batch_size,))})

    return _report("decoder", spec, [
        (f"output shape ({per_channel} per channel)", shapes),
        (f"{name} log-likelihood", scored),
        ("finite gradients", lambda: gradient_check(module, -built_likelihood.log_prob(x, module(z)).sum())),
        ("save/load", lambda: save_load_check(module, make(seed + 100), lambda m: m(z))),
    ])


# -- likelihoods ----------------------------------------------------------------------------------


def check_likelihood(likelihood: str | Mapping[str, Any], data_shape: Sequence[int] = DATA_SHAPE,
                     batch_size: int = 4, samples: int = 2, seed: int = 0) -> Report:
    """A likelihood scores data given the decoder's parameters, and turns both into images in [0, 1].

    Checks: ``log_prob`` of ``(samples, batch, channels × params_per_channel, ...)``
    parameters against ``(batch, *data_shape)`` data is ``(samples, batch)``; its
    probabilities sum to 1 over every image of a few sub-pixels (all of its
    :func:`data_values` values each, in float64); ``mean`` and ``unit`` are images in
    [0, 1]; finite gradients reach the parameters (and the likelihood's own, if any).
    """
    spec = _spec("likelihoods", likelihood)
    module = build("likelihoods", spec, seed)
    per_channel = getattr(module, "params_per_channel", 1)
    values = data_values(module)
    generator = torch.Generator().manual_seed(seed + 1)
    params = 2 * torch.randn(samples, batch_size, data_shape[0] * per_channel, *data_shape[1:], generator=generator)
    x = _data(module, (batch_size, *data_shape), generator)

    def mass():
        if values is None:
            return SKIP, "continuous data: a density, not a mass", None
        pixels = max(1, int(math.log(_MASS_CHECK_IMAGES) / math.log(values)))  # values ** pixels images
        every = torch.cartesian_prod(*[torch.arange(values, dtype=torch.float64)] * pixels)
        images = every.view(-1, 1, 1, pixels)  # one channel, one row of `pixels` sub-pixels
        sets = 2 * torch.randn(8, 1, per_channel, 1, pixels, generator=generator, dtype=torch.float64)
        sets = sets.expand(-1, len(images), -1, -1, -1)  # 8 parameter sets, as 8 samples of every image's
        total = module.log_prob(images, sets).logsumexp(-1)  # (8,): log of the mass over every image
        error = total.abs().max().item()
        status = PASS if error <= 1e-6 else FAIL
        return status, f"log Σ p(x) over all {len(images):,} images of {pixels} sub-pixels, 8 parameter sets", error

    def images():
        every_value = torch.arange(values, dtype=torch.float32).view(-1, 1, 1, 1) if values else x
        return _unit_images({"mean(params)": (module.mean(params), (samples, *x.shape)),
                             "unit(x)": (module.unit(x), tuple(x.shape)),
                             "unit of every value": (module.unit(every_value), tuple(every_value.shape))})

    def gradients():
        wanted = params.clone().requires_grad_()
        return gradient_check(module, module.log_prob(x, wanted).sum(), {"the decoder's output": wanted})

    return _report("likelihood", spec, [
        ("log-prob shape", lambda: _shapes_result({"log p(x|z)": (module.log_prob(x, params), (samples, batch_size)),
                                                   "without samples": (module.log_prob(x, params[0]),
                                                                       (batch_size,))})),
        ("probabilities sum to 1", mass),
        ("images in [0, 1]", images),
        ("finite gradients", gradients),
    ])


# -- posteriors, priors and the ResNet VAE's blocks: densities of their samples ---------------------


def check_posterior(posterior: str | Mapping[str, Any], in_features: int = 6, latent_size: int = 3,
                    batch_size: int = 4, samples: int = 2, perturbation: float = 0.3, seed: int = 0) -> Report:
    """A base posterior draws ``(samples, batch, latent_size)`` reparameterized samples with their log-density.

    Checks: shapes; finite gradients reaching every parameter through the samples and
    their log-density; that the log-density is that of the samples (one latent, a
    nearest-neighbour estimate, parameters perturbed); a state-dict round trip.
    """
    spec = _spec("posteriors", posterior)

    def make(seed: int, latents: int = latent_size) -> nn.Module:
        module = build("posteriors", spec, seed, in_features=in_features, latent_size=latents)
        return perturb(module, perturbation)

    module = make(seed)
    features = torch.randn(batch_size, in_features, generator=torch.Generator().manual_seed(seed + 1))

    def shapes():
        z0, log_q = module(features, samples)
        return _shapes_result({"z0": (z0, (samples, batch_size, latent_size)), "log q": (log_q, (samples, batch_size))})

    def density():
        one = make(seed, latents=1)
        z0, log_q = _seeded(lambda: one(features[:1], _DENSITY_SAMPLES), seed)
        return _density_check(z0.flatten().detach(), log_q.flatten().detach())

    def gradients():
        z0, log_q = module(features, samples)
        return gradient_check(module, z0.square().sum() + log_q.sum())

    return _report("posterior", spec, [
        ("output shapes", shapes),
        ("finite gradients", gradients),
        ("log q is the density of z0", density),
        ("save/load", lambda: save_load_check(module, make(seed + 100), lambda m: m(features, samples))),
    ])


def check_prior(prior: str | Mapping[str, Any], latent_size: int = 3, count: int = 8, seed: int = 0) -> Report:
    """A prior draws ``sample(count)`` of shape ``(count, latent_size)`` and scores ``log_prob(z)``, ``(count,)``.

    Checks: shapes; that ``log_prob`` is the log-density of the samples (one latent,
    a nearest-neighbour estimate); finite gradients for a prior with parameters; a
    state-dict round trip.
    """
    spec = _spec("priors", prior)
    module = build("priors", spec, seed, latent_size=latent_size)

    def shapes():
        z = module.sample(count)
        return _shapes_result({"sample": (z, (count, latent_size)), "log p": (module.log_prob(z), (count,))})

    def density():
        one = build("priors", spec, seed, latent_size=1)
        z = _seeded(lambda: one.sample(_DENSITY_SAMPLES), seed)
        return _density_check(z.flatten(), one.log_prob(z))

    def gradients():
        if not any(p.requires_grad for p in module.parameters()):
            return SKIP, "no parameters", None
        return gradient_check(module, module.log_prob(module.sample(count)).sum())

    return _report("prior", spec, [
        ("output shapes", shapes),
        ("log p is the density of its samples", density),
        ("finite gradients", gradients),
        ("save/load", lambda: save_load_check(module, build("priors", spec, seed + 100, latent_size=latent_size),
                                         lambda m: m.log_prob(m.sample(count)))),
    ])


def check_block(block: str | Mapping[str, Any], width: int = 4, latent_channels: int = 2, downsample: bool = False,
                top: bool = False, size: int = 4, batch_size: int = 3, perturbation: float = 0.3,
                seed: int = 0) -> Report:
    """A ResNet VAE block: a bottom-up step, and a top-down step drawing ``z`` with its
    log-densities under the posterior and the prior, per latent channel (the KL terms).

    Checks: the shapes of both steps (halving ``size`` when ``downsample``, no
    bottom-up output when ``top``), with and without the bottom-up statistics and with
    a given ``z``; finite gradients reaching every parameter; that ``log q`` is the
    density of the ``z`` it was reported for (one latent channel at one position, a
    nearest-neighbour estimate, parameters perturbed); a state-dict round trip.
    """
    spec = _spec("blocks", block)

    def make(seed: int, channels: int = latent_channels) -> nn.Module:
        module = build("blocks", spec, seed, width=width, latent_channels=channels, downsample=downsample, top=top)
        return perturb(module, perturbation)

    module = make(seed)
    inner = size // 2 if downsample else size
    generator = torch.Generator().manual_seed(seed + 1)
    d = torch.randn(batch_size, width, size, size, generator=generator)
    h = torch.randn(batch_size, width, inner, inner, generator=generator)

    def shapes():
        above, statistics = module.up(d)
        h_out, z, log_q, log_p = module.down(h, statistics)
        _, z_prior, log_q_prior, log_p_prior = module.down(h, None)
        _, z_given, _, _ = module.down(h, None, z)
        problems = _shape_problems({
            "up: output": (above, None if top else (batch_size, width, inner, inner)),
            "down: output": (h_out, (batch_size, width, size, size)),
            "down: z": (z, (batch_size, latent_channels, inner, inner)),
            "down: log q": (log_q, (batch_size, latent_channels)),
            "down: log p": (log_p, (batch_size, latent_channels)),
            "prior: z": (z_prior, (batch_size, latent_channels, inner, inner)),
            "prior: log q": (log_q_prior, None),
            "prior: log p": (log_p_prior, None),
        })
        if z_given is not z and not torch.equal(z_given, z):
            problems.append("down(h, None, z) does not keep the given z")
        if problems:
            return FAIL, "; ".join(problems), None
        return PASS, f"up {tuple(d.shape)} → {'none' if top else tuple(above.shape)}, z {tuple(z.shape)}", None

    def gradients():
        above, statistics = module.up(d)
        h_out, _, log_q, log_p = module.down(h, statistics)
        loss = h_out.square().sum() + (log_q - log_p).sum() + (0 if above is None else above.square().sum())
        return gradient_check(module, loss)

    def density():
        one = make(seed, channels=1)
        first = torch.Generator().manual_seed(seed + 2)
        d_one = torch.randn(1, width, 2 if downsample else 1, 2 if downsample else 1, generator=first)
        h_one = torch.randn(1, width, 1, 1, generator=first)
        statistics = tuple(t.expand(_DENSITY_SAMPLES, *t.shape[1:]) for t in one.up(d_one)[1])
        _, z, log_q, _ = _seeded(lambda: one.down(h_one.expand(_DENSITY_SAMPLES, -1, -1, -1), statistics), seed)
        return _density_check(z.flatten().detach(), log_q.flatten().detach())

    def both_steps(m: nn.Module) -> Any:
        above, statistics = m.up(d)
        return above, m.down(h, statistics)

    return _report("block", {**spec, "downsample": downsample, "top": top}, [
        ("shapes", shapes),
        ("finite gradients", gradients),
        ("log q is the density of z", density),
        ("save/load", lambda: save_load_check(module, make(seed + 100), both_steps)),
    ])


# -- data sets and models ---------------------------------------------------------------------------


def check_dataset(dataset: str | Mapping[str, Any]) -> Report:
    """A data set knows its example ``shape`` and ``splits`` before reading anything.

    Checks: for a data set with a ``root``, that it is built on an empty root (downloads
    off) without reading it; ``shape`` is ``(channels, height, width)`` and ``splits``
    holds the train, valid and test splits flowzoo trains and evaluates on; a split
    from the empty root is either ``uint8`` images of that shape or one
    :class:`~flowzoo.errors.DataError`.
    """
    spec = _spec("datasets", dataset)
    entry = get_registry("datasets").entries.get(spec["name"])
    parameters = entry.parameters if entry is not None else {}
    with tempfile.TemporaryDirectory() as empty:
        offline = {"root": empty, **({"download": False} if "download" in parameters else {})}
        try:
            module = build("datasets", {**spec, **offline} if "root" in parameters else spec)
        except ConfigError:
            raise
        except Exception as error:  # reading at construction, from a folder that has nothing
            return Report("dataset", spec["name"], spec, (Check("built on an empty root", FAIL,
                                                                f"raised {type(error).__name__}: {error}"),))

        def shape():
            shape = tuple(getattr(module, "shape", ()))
            if len(shape) != 3 or not all(isinstance(n, int) and n > 0 for n in shape):
                return FAIL, f"shape is {shape!r}, expected (channels, height, width)", None
            missing = {"train", "valid", "test"} - set(getattr(module, "splits", ()))
            if missing:
                return FAIL, f"splits {getattr(module, 'splits', None)!r} lack {', '.join(sorted(missing))}", None
            return PASS, f"shape {shape}, splits {', '.join(module.splits)}", None

        def offline_split():
            if "root" not in parameters:
                return SKIP, "no root parameter to point at an empty folder", None
            try:
                images = module.load("test")
            except DataError as error:
                return PASS, f"DataError: {str(error)[:80]}…", None
            if images.dtype != torch.uint8:
                return FAIL, f"the test split is {images.dtype}, expected uint8", None
            return _shapes_result({"test split": (images, (len(images), *module.shape))})

        return _report("dataset", spec, [("shape and splits", shape), ("a split from an empty root", offline_split)])


def check_model(model: str | Mapping[str, Any], data_shape: Sequence[int] = DATA_SHAPE, batch_size: int = 4,
                samples: int = 3, seed: int = 0) -> Report:
    """A model returns its losses, its importance weights and pictures, for data its likelihood models.

    Checks: ``model(x)`` gives finite ``loss``, ``neg_elbo`` = ``recon`` + ``kl``;
    ``log_weights(x, samples)`` gives ``(samples, batch)`` terms and ``kl_groups``
    ``(samples, batch, layers, groups)`` summing to ``log_qz − log_pz``; the loss's
    gradients reach every parameter, finite; a state-dict round trip gives identical
    losses under the same seed; ``sample`` and ``reconstruct`` give images in [0, 1].
    """
    spec = _spec("models", model)

    def make(seed: int) -> nn.Module:
        return build("models", spec, seed, data_shape=tuple(data_shape))

    module = make(seed)
    x = _data(module.likelihood, (batch_size, *data_shape), torch.Generator().manual_seed(seed + 1))

    def losses():
        found = module(x)
        missing = {"loss", "neg_elbo", "recon", "kl"} - set(found)
        if missing:
            return FAIL, f"no {', '.join(sorted(missing))} among the losses {sorted(found)}", None
        problems = _shape_problems({name: (value, ()) for name, value in found.items()})
        error = (found["neg_elbo"] - found["recon"] - found["kl"]).abs().item()
        if error > 1e-4 * found["neg_elbo"].abs().item():
            problems.append(f"neg_elbo − recon − kl = {error:.3g}")
        return (FAIL, "; ".join(problems), error) if problems else (PASS, ", ".join(sorted(found)), error)

    def weights():
        terms = module.log_weights(x, samples)
        groups = terms.get("kl_groups")
        layers = len(getattr(module, "layer_names", ()))
        problems = _shape_problems({name: (terms.get(name), (samples, batch_size))
                                    for name in ("log_px_given_z", "log_pz", "log_qz")})
        if groups is None or groups.shape[:3] != (samples, batch_size, layers):
            problems.append(f"kl_groups {None if groups is None else tuple(groups.shape)}, expected "
                            f"({samples}, {batch_size}, {layers} layers, groups)")
        if problems:
            return FAIL, "; ".join(problems), None
        kl = terms["log_qz"] - terms["log_pz"]
        error = (groups.sum((2, 3)) - kl).abs().max().item()
        scale = terms["log_qz"].abs().max().item() + terms["log_pz"].abs().max().item()
        status = PASS if error <= 1e-5 * scale else FAIL  # float32 sums of large terms
        return status, f"kl_groups {tuple(groups.shape)} sum to log_qz − log_pz", error

    def pictures():
        count = 2
        return _unit_images({"sample": (module.sample(count), (count, *data_shape)),
                             "reconstruct": (module.reconstruct(x), tuple(x.shape))})

    return _report("model", spec, [
        ("losses", losses),
        ("log weights", weights),
        ("finite gradients", lambda: gradient_check(module, module(x)["loss"])),
        ("save/load", lambda: save_load_check(module, make(seed + 100), lambda m: m(x))),
        ("pictures in [0, 1]", pictures),
    ])


def _unit_images(named: Mapping[str, tuple[Tensor, tuple[int, ...]]]) -> tuple[str, str, None]:
    problems = _shape_problems(named)
    for name, (image, _) in named.items():
        if not problems and not (image.min() >= 0 and image.max() <= 1):
            problems.append(f"{name} spans [{image.min().item():.3g}, {image.max().item():.3g}]")
    return (FAIL, "; ".join(problems), None) if problems else (PASS, ", ".join(named), None)
