"""Reading Orbax checkpoint directories (what today's ``flax.training.checkpoints`` writes).

``orbax-checkpoint`` is an optional dependency: it is imported only when such a
directory is restored, and its absence gives a ``CheckpointError`` saying how to install it.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np

from flaxen.errors import CheckpointError
from flaxen.training._checkpoint_files import shown


def restore(path: str) -> Any:
    """The state dict (numpy arrays and Python scalars) of the Orbax checkpoint ``path``.

    Raises:
      CheckpointError: orbax-checkpoint is not installed, or Orbax cannot read ``path``.
    """
    try:
        import orbax.checkpoint as ocp
    except ImportError as e:
        raise CheckpointError(
            f"{shown(path)} is an Orbax checkpoint directory (written by Flax's "
            "`flax.training.checkpoints.save_checkpoint` or by Orbax). flaxen reads it "
            "through the optional package orbax-checkpoint, which is not installed: "
            "`pip install orbax-checkpoint`, then restore again.") from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Orbax's notes about sharding files
            checkpointer = ocp.PyTreeCheckpointer()
            meta = checkpointer.metadata(path)
            tree = getattr(meta, "item_metadata", meta)
            tree = getattr(tree, "tree", tree)
            # Every leaf as a host numpy array: placement then follows the flaxen target.
            args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    except Exception as e:  # noqa: BLE001 - Orbax raises many kinds; all mean "unreadable"
        raise CheckpointError(
            f"Orbax could not read the checkpoint directory {shown(path)}: {type(e).__name__}: "
            f"{str(e)[:300]}") from e
