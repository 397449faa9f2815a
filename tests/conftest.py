"""Test configuration: strict rank promotion everywhere (as diffrax does) and an ``x64``
fixture for the tests that need float64. Float32 stays the default elsewhere, so float32
accuracy is tested as users get it."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    """Run the test body with float64 enabled."""
    with jax.enable_x64(True):
        yield
