"""Training utilities: checkpoints and helpers for training loops."""

from flaxen.training import checkpoints as checkpoints
from flaxen.training import common_utils as common_utils
from flaxen.training import lr_schedule as lr_schedule
from flaxen.training import prefetch_iterator as prefetch_iterator
