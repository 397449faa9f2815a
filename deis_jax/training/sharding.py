"""Data-parallel training and sampling over a ``jax.sharding.Mesh`` with a named batch axis.

No ``pmap``: arrays carry a ``NamedSharding`` -- the batch split over the ``"batch"`` axis,
parameters replicated -- and ``jax.jit`` partitions the computation (gradients are
all-reduced by the compiler). The same jitted ``train_step`` and :func:`deis_jax.sample` run
unchanged on one device or many.

Example::

    mesh = make_mesh()                              # all devices on one "batch" axis
    state = replicate(state, mesh)
    state, metrics = train_step(state, shard_batch(batch, mesh))
    model = spec.as_model(state.ema_params)          # a deis_jax.Model
    x0 = deis_jax.sample(model, shard_batch(x_T, mesh), solver="tab3", nfe=10)
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deis_jax._checks import check_int

__all__ = ["BATCH_AXIS", "make_mesh", "replicate", "shard_batch"]

BATCH_AXIS = "batch"


def make_mesh(n_devices: int | None = None, *, axis: str = BATCH_AXIS) -> Mesh:
    """A 1-d mesh over the first ``n_devices`` devices (all by default) named ``axis``."""
    devices = jax.devices()
    n = len(devices) if n_devices is None else check_int("n_devices", n_devices, minimum=1)
    if n > len(devices):
        raise ValueError(f"n_devices={n} but only {len(devices)} devices are available")
    return Mesh(np.asarray(devices[:n]), (axis,))


def shard_batch(tree, mesh: Mesh, *, axis: str = BATCH_AXIS):
    """Place every array of ``tree`` with its leading axis split over ``axis`` of ``mesh``."""
    size = mesh.shape[axis]

    def put(x):
        if x.shape[0] % size:
            raise ValueError(
                f"batch size {x.shape[0]} is not divisible by the {size} devices of mesh "
                f"axis {axis!r}"
            )
        return jax.device_put(x, NamedSharding(mesh, PartitionSpec(axis)))

    return jax.tree.map(put, tree)


def replicate(tree, mesh: Mesh):
    """Place every array of ``tree`` fully replicated on ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
