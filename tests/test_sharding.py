"""Data parallelism over 4 (forced host) devices matches one device: a training step (loss,
parameters, EMA) and a sampler call. Runs in a subprocess because the device count must be set
before jax is imported."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec
    import deis_jax
    from deis_jax import schedules
    from deis_jax.models import MLPScore
    from deis_jax.training import (TrainConfig, init_state, make_loss, make_mesh,
                                   make_optimizer, make_train_step, replicate, shard_batch)

    assert len(jax.devices()) == 4, jax.devices()
    mesh = make_mesh()
    assert mesh.shape == {"batch": 4}
    model = MLPScore(hidden=32, depth=2)
    sched = schedules.vp_linear()
    config = TrainConfig(steps=10, warmup_steps=0, lr=1e-2)
    opt = make_optimizer(config)
    step = make_train_step(model, make_loss("dsm", sched), opt, ema_decay=0.9)
    state0 = init_state(model, opt, jnp.zeros((1, 2)), jax.random.key(0))
    batches = [np.random.default_rng(i).standard_normal((64, 2)).astype(np.float32)
               for i in range(3)]

    single, sharded = state0, replicate(state0, mesh)
    for b in batches:
        single, m1 = step(single, jnp.asarray(b))
        sb = shard_batch(b, mesh)
        assert sb.sharding.spec == PartitionSpec("batch")
        assert len(sb.addressable_shards) == 4 and sb.addressable_shards[0].data.shape == (16, 2)
        sharded, m4 = step(sharded, sb)
        np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves((single.params, single.ema_params)),
                    jax.tree.leaves((sharded.params, sharded.ema_params))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert sharded.params["params"]["Dense_0"]["kernel"].sharding.is_fully_replicated

    gmm = deis_jax.testing.ring_mixture()
    x_T = sched.prior_sample(jax.random.key(1), (64, 2))
    for solver in ("tab3", "ddim"):
        model = deis_jax.as_model(gmm.eps_fn(sched), sched)
        want = deis_jax.sample(model, x_T, solver=solver, nfe=10)
        got = deis_jax.sample(model, shard_batch(x_T, mesh), solver=solver, nfe=10)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert got.sharding.spec == PartitionSpec("batch"), got.sharding  # never gathered
    try:
        shard_batch(np.zeros((6, 2)), mesh)
        raise AssertionError("expected a ValueError")
    except ValueError as err:
        assert "not divisible" in str(err)
    print("SHARDING-OK")
''')


@pytest.mark.slow
def test_four_devices_match_one():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0 and "SHARDING-OK" in proc.stdout, proc.stderr[-4000:]
