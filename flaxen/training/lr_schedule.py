"""Learning-rate schedules with the pre-release ``flax.training.lr_schedule`` names.

Each factory returns ``fn(step) -> lr``, a float32 jnp computation (``step`` may be traced,
so the schedule can live inside a jitted train step). Warm-up lengths are in epochs: with
``warmup_length > 0`` the rate is multiplied by ``min(1, step / warmup_length /
steps_per_epoch)``. The implementation is in ``flaxen.optim.schedules`` (with the
optax-style schedules for new code); this module keeps the pre-release import path.
"""

from flaxen.optim.schedules import Schedule as Schedule
from flaxen.optim.schedules import (
    create_constant_learning_rate_schedule as create_constant_learning_rate_schedule,
)
from flaxen.optim.schedules import (
    create_cosine_learning_rate_schedule as create_cosine_learning_rate_schedule,
)
from flaxen.optim.schedules import (
    create_stepped_learning_rate_schedule as create_stepped_learning_rate_schedule,
)

__all__ = ["Schedule", "create_constant_learning_rate_schedule",
           "create_cosine_learning_rate_schedule", "create_stepped_learning_rate_schedule"]
