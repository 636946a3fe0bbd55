"""flaxen: a neural-network library for JAX designed for flexibility."""

__version__ = "0.1.0"

from flaxen import errors as errors  # noqa: E402
from flaxen import jax_utils as jax_utils  # noqa: E402
from flaxen import metrics as metrics  # noqa: E402
from flaxen import nn as nn  # noqa: E402
from flaxen import optim as optim  # noqa: E402
from flaxen import parallel as parallel  # noqa: E402
from flaxen import serialization as serialization  # noqa: E402
from flaxen import sharding as sharding  # noqa: E402
from flaxen import struct as struct  # noqa: E402
from flaxen import training as training  # noqa: E402
from flaxen import traverse_util as traverse_util  # noqa: E402
