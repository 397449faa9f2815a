"""Mixed precision: the model computes in its dtype, the sampler keeps time and state wide.

The policy (used by :func:`deis_jax.sample`, :func:`deis_jax.adaptive.solve_ode`, the models
and the trainer):

* the solver state, the coefficients and the time live in the *state dtype*: float32, or
  float64 for a float64 ``x_T`` (with ``jax_enable_x64``) -- never bfloat16/float16, whose 8
  (11) significant bits cannot hold a time grid (bfloat16 rounds t = 0.10377 to 0.10400 and
  DDPM step 750 to 752) nor accumulate hundreds of small updates;
* the model receives ``x`` cast to its *compute dtype* (``as_model(..., dtype=...)``;
  default the dtype of ``x_T``) and ``t`` in the state dtype (a network that computes in
  bfloat16 embeds time in float32, see :mod:`deis_jax.models`); its output is cast back to the
  state dtype before the solver's arithmetic.

The bfloat16 rounding of the model's input and output (about ``2**-9`` relative) is then the
only error mixed precision adds; the solver adds none.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DTYPES", "check_dtype", "state_dtype"]

DTYPES = ("float32", "bfloat16", "float16", "float64")
_ALIASES = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16",
            "f16": "float16", "half": "float16", "fp64": "float64", "f64": "float64"}


def check_dtype(name: str, value) -> np.dtype:
    """The floating dtype named by ``value`` (a name from :data:`DTYPES`, an alias such as
    ``"bf16"``, or a dtype); raises naming ``name`` for anything else, and for float64 when
    ``jax_enable_x64`` is off (JAX would silently compute in float32).

    Example:
      >>> check_dtype("dtype", "bf16")
      dtype(bfloat16)
    """
    key = _ALIASES.get(value, value) if isinstance(value, str) else value
    try:
        dtype = jnp.dtype(key)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in DTYPES:
        raise ValueError(f"unsupported {name}={value!r}; valid choices: {list(DTYPES)} "
                         f"(or the aliases {sorted(_ALIASES)})")
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(f"{name}={value!r} needs float64, which is off: enable it with "
                         "jax.config.update('jax_enable_x64', True) before creating arrays")
    return dtype


def state_dtype(dtype) -> np.dtype:
    """The dtype the solver state and the time are kept in for a sample of ``dtype``: at least
    float32 (float32 for bfloat16/float16/float32, float64 for float64)."""
    return jnp.promote_types(dtype, jnp.float32)
