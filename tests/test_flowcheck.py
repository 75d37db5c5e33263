"""The flow checker catches broken flows, from Python and from ``flowzoo check-flow``."""

from __future__ import annotations

import runpy
import textwrap

import pytest
import torch
from nflows.transforms import Transform

from flowzoo.flowcheck import check_flow
from flowzoo.flows import Planar
from flowzoo.registry import flows, register_flow
from conftest import FIXTURES, run_cli


@pytest.fixture
def scratch_flows(monkeypatch):
    """Registrations made in a test disappear after it."""
    monkeypatch.setattr(flows, "_entries", dict(flows.entries))


def failed(report) -> dict[str, str]:
    return {check.name: check.detail for check in report.failures}


def test_a_wrong_logdet_fails_with_the_size_of_the_error(scratch_flows):
    @register_flow("planar_forgets_slope")
    class PlanarForgetsSlope(Planar):
        """Planar with log|1 + ûᵀw| instead of log|1 + ûᵀw tanh'(·)|: a classic slip."""

        def forward(self, z, context=None):
            out, _ = super().forward(z, context)
            p = self.params(context, z.shape[0])
            return out, torch.log((1 + (p["w"] * p["u"]).sum(-1)).abs())

    report = check_flow("planar_forgets_slope")
    assert not report.passed
    assert set(failed(report)) == {"log-det = log|det J|"}
    (check,) = report.failures
    assert check.error > 1e-3


def test_a_flow_breaking_its_declared_triangular_structure_fails(scratch_flows):
    @register_flow("mixes_all", triangular="lower")
    class MixesAll(Transform):
        """Claims to be autoregressive but adds the sum of z to every coordinate."""

        def __init__(self, features: int):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(0.5))

        def forward(self, z, context=None):
            matrix = torch.eye(z.shape[1], dtype=z.dtype) + self.scale
            return z @ matrix.T, torch.linalg.slogdet(matrix).logabsdet.expand(z.shape[0])

    report = check_flow("mixes_all")
    assert set(failed(report)) == {"lower triangular J"}


def test_missing_gradients_and_bad_shapes_are_named(scratch_flows):
    @register_flow("unused_parameter")
    class UnusedParameter(Transform):
        def __init__(self, features: int):
            super().__init__()
            self.forgotten = torch.nn.Parameter(torch.zeros(3))

        def forward(self, z, context=None):
            return 2 * z, z.new_full(z.shape[:1], z.shape[1] * torch.log(torch.tensor(2.0)).item())

    @register_flow("keeps_dims")
    class KeepsDims(Transform):
        def __init__(self, features: int):
            super().__init__()

        def forward(self, z, context=None):
            return z, z.new_zeros(z.shape[0], 1)

    assert "forgotten" in failed(check_flow("unused_parameter"))["finite gradients"]
    report = check_flow("keeps_dims")
    assert [c.name for c in report.checks] == ["output shapes"] and not report.passed


def test_a_flow_that_explodes_in_a_vae_fails_the_training_check(scratch_flows):
    """The example flow docs/plugins.md used to show: exact log-det, NaN from the first batch in a VAE."""
    runpy.run_path(str(FIXTURES / "sinh_flows.py"))
    for context_features in (3, 0):
        report = check_flow({"name": "sinh_shift", "c": 2.0}, context_features=context_features)
        assert set(failed(report)) == {"trains in a VAE"}
        assert "loss nan at Adam step 1" in failed(report)["trains in a VAE"]
        stable = check_flow({"name": "asinh_shift", "c": 2.0}, context_features=context_features)
        stable.assert_passed()
        assert "validation −ELBO" in stable.checks[-1].detail
    assert [check.name for check in check_flow("sinh_shift", train_steps=0).checks][-1] == "save/load"


BAD_PLUGIN = '''
import torch
from flowzoo.flows import Radial
from flowzoo.registry import register_flow

@register_flow("radial_off_by_one")
class RadialOffByOne(Radial):
    """Radial with (D − 2) instead of (D − 1) in its log-det."""

    def forward(self, z, context=None):
        out, logabsdet = super().forward(z, context)
        z_ref, alpha, beta = self._center_alpha_beta(context, z.shape[0])
        return out, logabsdet - torch.log1p(beta / (alpha + (z - z_ref).norm(dim=-1)))
'''


def test_check_flow_command_passes_builtins_and_fails_a_planted_flow(tmp_path):
    good = run_cli("check-flow", "sylvester_orthogonal", "num_ortho_vecs=3", "--features", "6")
    assert good.returncode == 0, good.stderr
    assert "check-flow sylvester_orthogonal: passed" in good.stdout and "log-det" in good.stdout

    (tmp_path / "bad_radial.py").write_text(textwrap.dedent(BAD_PLUGIN))
    bad = run_cli("check-flow", "radial_off_by_one", "--import", "bad_radial", cwd=tmp_path)
    assert bad.returncode == 1
    # The forward log-det is wrong, so it disagrees with both autograd and the inverse's log-det.
    assert "check-flow radial_off_by_one: 2 failed" in bad.stdout and "FAIL" in bad.stdout
    assert "error: radial_off_by_one failed: log-det = log|det J| (max error 9.91e-02), inverse" in bad.stderr


def test_check_flow_command_reports_user_errors_without_traceback():
    result = run_cli("check-flow", "sylvestr_orthogonal")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown flow 'sylvestr_orthogonal'. Did you mean 'sylvester_orthogonal'?" in result.stderr
    result = run_cli("check-flow", "planar", "hidden_features=8")
    assert result.returncode == 2 and "flow.hidden_features: unknown parameter" in result.stderr
