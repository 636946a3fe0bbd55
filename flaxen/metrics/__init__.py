"""flaxen.metrics: metric writers that need no TensorFlow (TensorBoard event files, JSON lines).

Two spellings: the pre-release ``SummaryWriter.scalar(tag, value, step)`` and the
``MetricWriter`` API of today's JAX examples (``write_scalars(step, mapping)``, ...), with
``MultiWriter``, ``AsyncWriter`` and ``create_default_writer``.
"""

from flaxen.metrics.jsonl import JsonlWriter as JsonlWriter
from flaxen.metrics.jsonl import read_jsonl as read_jsonl
from flaxen.metrics.tensorboard import SummaryWriter as SummaryWriter
from flaxen.metrics.reading import read_events as read_events
from flaxen.metrics.reading import read_scalars as read_scalars
from flaxen.metrics.truncate import truncate_events as truncate_events
from flaxen.metrics.truncate import truncate_jsonl as truncate_jsonl

from flaxen.metrics.writers import MetricWriter as MetricWriter
from flaxen.metrics.writers import LoggingWriter as LoggingWriter
from flaxen.metrics.writers import MultiWriter as MultiWriter
from flaxen.metrics.writers import create_default_writer as create_default_writer
from flaxen.metrics.async_writer import AsyncWriter as AsyncWriter
