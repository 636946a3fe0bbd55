"""flaxen.metrics: metric writers that need no TensorFlow (TensorBoard event files, JSON lines)."""

from flaxen.metrics.jsonl import JsonlWriter as JsonlWriter
from flaxen.metrics.jsonl import read_jsonl as read_jsonl
from flaxen.metrics.tensorboard import SummaryWriter as SummaryWriter
from flaxen.metrics.tensorboard import read_events as read_events
from flaxen.metrics.tensorboard import read_scalars as read_scalars
from flaxen.metrics.truncate import truncate_events as truncate_events
from flaxen.metrics.truncate import truncate_jsonl as truncate_jsonl
