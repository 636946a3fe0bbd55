"""Checkpoints of sharded state, restored onto any mesh.

Saving needs nothing new: ``checkpoints.save_checkpoint`` gathers each sharded array to the
host (``jax.device_get``; across processes, ``process_allgather``) and writes one file, so
a checkpoint never depends on the mesh it was written from. Restoring places each value
where a *template* says: ``restore_sharded`` builds that template from sharding rules (or
takes explicit shardings), so a run saved on 8 devices restores onto 4, or onto 1.

The template can be abstract (``jax.eval_shape`` of the optimizer's creation): no array of
the model is allocated before the values are read.

Example:
    >>> import jax.numpy as jnp, tempfile
    >>> from flaxen import optim, sharding
    >>> from flaxen.training import checkpoints, sharded_checkpoints
    >>> opt = optim.Adam(1e-3).create({"w": jnp.ones((16, 4))})
    >>> ckpt = tempfile.mkdtemp()
    >>> _ = checkpoints.save_checkpoint(
    ...     ckpt, opt.shard(sharding.make_mesh(8), sharding.fully_sharded()), step=1)
    >>> back = sharded_checkpoints.restore_sharded(
    ...     ckpt, opt, mesh=sharding.make_mesh(4), rules=sharding.fully_sharded())
    >>> back.target["w"].sharding.spec
    P('batch', None)
"""

from __future__ import annotations

import os
from typing import Any

import jax
from jax.sharding import Mesh

from flaxen import sharding
from flaxen.errors import CheckpointError, CheckpointNotFoundError
from flaxen.optim.base import Optimizer
from flaxen.optim.sharded import optimizer_shardings
from flaxen.training import checkpoints


def target_shardings(target: Any, mesh: Mesh, rules: sharding.Rules) -> Any:
    """The ``NamedSharding`` of every array of ``target`` under ``rules``: an Optimizer's
    state follows its parameters (see ``flaxen.optim.sharded``); any other tree (a params
    dict, a Model) is treated as parameters."""
    if isinstance(target, Optimizer):
        return optimizer_shardings(target, mesh, rules)
    return sharding.param_shardings(target, mesh, rules)


def abstract_target(target: Any, shardings: Any) -> Any:
    """``target`` with every array replaced by a ``jax.ShapeDtypeStruct`` carrying its
    sharding from ``shardings`` (a tree like ``target``)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))


def restore_sharded(ckpt_dir: str | os.PathLike[str], target: Any, shardings: Any = None, *,
                    mesh: Mesh | None = None, rules: sharding.Rules | None = None,
                    step: int | None = None, prefix: str = "checkpoint_") -> Any:
    """Restores a checkpoint onto ``target``'s structure with each array sharded as asked.

    Args:
      ckpt_dir: the checkpoint directory (or one checkpoint file).
      target: the template: a concrete or abstract (``jax.eval_shape``) Optimizer, Model or
        params dict of the saved shapes and dtypes. Its own placement is ignored.
      shardings: a tree like ``target`` of ``NamedSharding`` (e.g. from
        ``optimizer_shardings``); or give ``mesh`` and ``rules`` instead.
      mesh, rules: lay the restored arrays out by these sharding rules.
      step: the step to restore (default: the latest).
      prefix: the checkpoint file prefix.

    Returns:
      ``target`` holding the checkpoint's values, each array a ``jax.Array`` with its
      sharding. Every path, shape and dtype is checked as by ``restore_checkpoint``.

    Raises:
      CheckpointError: neither ``shardings`` nor ``mesh`` and ``rules`` given (or both).
      CheckpointNotFoundError: no checkpoint in ``ckpt_dir``.
      CheckpointMismatchError: the checkpoint does not fit ``target``.
    """
    if (shardings is None) == (mesh is None or rules is None):
        raise CheckpointError("restore_sharded: give either `shardings=` (a tree of "
                              "NamedSharding like the target) or `mesh=` and `rules=`.")
    if shardings is None:
        assert mesh is not None and rules is not None
        shardings = target_shardings(target, mesh, rules)
    template = abstract_target(target, shardings)
    if checkpoints.latest_checkpoint(ckpt_dir, prefix) is None and step is None and not (
            os.path.isfile(ckpt_dir)):
        raise CheckpointNotFoundError(
            f"No checkpoint with prefix {prefix!r} in {os.fspath(ckpt_dir)!r} to restore "
            "sharded. Check the path (a fresh run creates its state instead).")
    return checkpoints.restore_checkpoint(ckpt_dir, template, step=step, prefix=prefix)
