"""Every schedule family with its test parameters, shared by the schedule and driver tests."""

import numpy as np

from deis_jax import schedules

ALL_SCHEDULES = {
    "vp_linear": schedules.vp_linear,
    "vp_cosine": schedules.vp_cosine,
    "ve": schedules.ve,
    "sub_vp": schedules.sub_vp,
    "edm": schedules.edm,
    "flow": lambda: schedules.flow(3.0),
    "vp_discrete": lambda: schedules.vp_discrete(betas=np.linspace(1e-4, 0.02, 1000)),
}
