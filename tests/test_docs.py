"""Docstring examples run, and the public API imports as documented."""

import doctest
import importlib

import pytest

import deis_jax

MODULES = ["deis_jax.schedules", "deis_jax.grids", "deis_jax.parameterization",
           "deis_jax.sampling", "deis_jax.evaluate",
           "deis_jax.training.presets", "deis_jax.solvers.dpm_solver", "deis_jax.solvers.unipc",
           "deis_jax.solvers.dpm_solver_pp", "deis_jax.solvers.base",
           "deis_jax.solvers.edm_sde", "deis_jax.solvers.stochastic_ddim",
           "deis_jax.solvers.noise", "deis_jax.models.mlp", "deis_jax.models.unet",
           "deis_jax.precision", "deis_jax.likelihood", "deis_jax.inversion",
           "deis_jax.guidance", "deis_jax.conditioning", "deis_jax.training.classifier",
           "deis_jax.learned_grids", "deis_jax.model", "deis_jax.plan", "deis_jax.adaptive",
           "deis_jax.thresholding"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_public_names_import():
    for name in deis_jax.__all__:
        assert getattr(deis_jax, name) is not None, name


def _python_blocks(path):
    import re
    text = open(path).read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_bring_your_model_page_runs():
    """Every python block of docs/bring_your_model.md, in order, in one namespace."""
    import pathlib
    page = pathlib.Path(__file__).parents[1] / "docs" / "bring_your_model.md"
    blocks = _python_blocks(page)
    assert len(blocks) >= 8
    namespace = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)  # noqa: S102
    assert namespace["sweep"].shape == (4, 16, 2)
