"""An example flowzoo plugin.

Installing this package (``pip install -e plugins/flowzoo-example``) makes two
components available by name in any flowzoo config, through the ``flowzoo.plugins``
entry point declared in its ``pyproject.toml``:

- flow ``affine_coupling`` (:class:`~flowzoo_example.coupling.AffineCoupling`),
- encoder ``residual_mlp`` (:class:`~flowzoo_example.encoders.ResidualMLPEncoder`).
"""

from flowzoo_example.coupling import AffineCoupling
from flowzoo_example.encoders import ResidualMLPEncoder

__all__ = ["AffineCoupling", "ResidualMLPEncoder"]
