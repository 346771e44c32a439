"""Dense layers with PyTorch's default initialisation, for the ports of DOP and COMA.

PyTorch's ``nn.Linear(fan_in, out)`` initialises its weight with
``kaiming_uniform_(a=sqrt(5))``, i.e. ``U(-b, b)`` with
``b = gain * sqrt(3 / fan_in)``, ``gain = sqrt(2 / (1 + a^2)) = sqrt(1/3)``, so
``b = 1 / sqrt(fan_in)``; its bias is ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` as well.
The reference code (TonghanWang/DOP, oxwhirl/pymarl) never overrides it.

Using it also keeps QR (flax's ``orthogonal`` initialiser) out of seed-vmapped programs,
which can deadlock batched LAPACK on a 2-core CPU (``docs/jax-cpu.md``).

Note: :mod:`tram.learners.actor` has its own ``TorchDense`` (a wrapped ``nn.Dense``, so
its parameters sit one level deeper, under ``Dense_0``); the one here stores ``kernel``
and ``bias`` directly, as ``flax.linen.Dense`` does. Both draw from the same
distribution.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["torch_linear_init", "TorchDense"]


def torch_linear_init(fan_in: int) -> Callable[..., jax.Array]:
    """PyTorch ``nn.Linear`` default initialiser for weight AND bias.

    ``w, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.

    Args:
      fan_in: number of input features of the layer (``> 0``).

    Returns:
      A flax initialiser ``init(key, shape, dtype=float32) -> Array``.
    """
    if fan_in <= 0:
        raise ValueError(f"fan_in must be > 0, got {fan_in}")
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class TorchDense(nn.Module):
    """``y = x @ kernel + bias`` with PyTorch's default ``nn.Linear`` initialisation.

    Parameters are ``kernel [F, features]`` and ``bias [features]`` (as in
    ``flax.linen.Dense``), both ``U(-1/sqrt(F), 1/sqrt(F))`` with ``F = x.shape[-1]``.

    Attributes:
      features: number of outputs.
      use_bias: add the bias (PyTorch default True).
    """

    features: int
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``x [..., F] -> [..., features]`` (float32 parameters; ``x`` is promoted)."""
        fan_in = x.shape[-1]
        init = torch_linear_init(fan_in)
        kernel = self.param("kernel", init, (fan_in, self.features), jnp.float32)
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        y = jnp.matmul(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", init, (self.features,), jnp.float32)
        return y
