"""Models larger than one device in the LM example: the mesh, the sharding rules, scanned
layers and remat, from four flags (see docs/large_models.md).

    --mesh_model=4 --sharding=tensor_parallel   # 2 x 4 mesh on 8 devices: heads split 4 ways
    --sharding=fully_sharded                     # params and Adam state split over all devices
    --scan_layers --remat                        # one compiled block, activations recomputed

``train.py`` reads the flags into its ``TrainArgs`` (the fields below have the same names),
then calls ``config_options`` for the model, ``mesh`` for the device mesh and ``place`` for
the optimizer; batches are split with ``parallel.shard_batch(batch, mesh)``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from jax.sharding import Mesh

from flaxen import optim, parallel, sharding
from flaxen.errors import FlaxenError

RULE_SETS = ("replicated", "fully_sharded", "tensor_parallel")

DEFAULTS: dict[str, Any] = {"mesh_model": 1, "sharding": "replicated", "scan_layers": False,
                            "remat": False}

HELP = {
    "mesh_model": "Devices on the mesh's 'model' axis (tensor parallelism); the other "
                  "devices form the 'batch' axis. 1: a data-only mesh.",
    "sharding": "How parameters and optimizer state are laid out: replicated (a full copy "
                "per device), fully_sharded (every parameter split over the batch axis) or "
                "tensor_parallel (attention heads and MLP units over the model axis).",
    "scan_layers": "Run the Transformer blocks with nn.ScanLayers (parameters stacked under "
                   "blocks/; compile time independent of depth).",
    "remat": "With --scan_layers: recompute each block's activations in the backward pass "
             "(less memory, more compute).",
}


class LargeModelFlagError(FlaxenError):
    """Flags for the mesh, rules, scan or remat that cannot work together."""


def check(args: Any) -> None:
    """Raises ``LargeModelFlagError`` naming the flag when the combination cannot work."""
    n = jax.device_count()
    if args.sharding not in RULE_SETS:
        raise LargeModelFlagError(f"--sharding={args.sharding!r}: expected one of "
                                  f"{', '.join(RULE_SETS)}.")
    if args.mesh_model < 1 or n % args.mesh_model:
        raise LargeModelFlagError(f"--mesh_model={args.mesh_model}: expected a divisor of the "
                                  f"{n} devices.")
    if args.sharding == "tensor_parallel" and args.num_heads % args.mesh_model:
        raise LargeModelFlagError(f"--sharding=tensor_parallel splits the {args.num_heads} "
                                  f"heads over --mesh_model={args.mesh_model} devices; choose "
                                  "--num_heads divisible by --mesh_model.")
    if args.remat and not args.scan_layers:
        raise LargeModelFlagError("--remat needs --scan_layers (each scanned block is "
                                  "rematerialised).")
    if args.batch_size % (n // args.mesh_model):
        raise LargeModelFlagError(f"--batch_size={args.batch_size} must be a multiple of the "
                                  f"{n // args.mesh_model} devices on the batch axis.")


def config_options(args: Any) -> dict[str, bool]:
    """The ``LMConfig`` fields these flags set."""
    return {"scan_layers": bool(args.scan_layers), "remat": bool(args.remat)}


def mesh(args: Any) -> Mesh:
    """The ``('batch', 'model')`` mesh: all devices, ``--mesh_model`` of them per model row.

    A data-only run (``--mesh_model=1 --sharding=replicated``) uses
    ``parallel.default_mesh()``, as before these flags existed.
    """
    if args.mesh_model == 1 and args.sharding == "replicated":
        return parallel.default_mesh()
    return _mesh(args.mesh_model)


@functools.lru_cache(maxsize=4)
def _mesh(model: int) -> Mesh:
    return sharding.make_mesh(model=model)  # one object per shape: called every step


def rules(args: Any) -> sharding.Rules:
    """The rule set ``--sharding`` names (``[]``: everything replicated)."""
    if args.sharding == "fully_sharded":
        return sharding.fully_sharded()
    if args.sharding == "tensor_parallel":
        return sharding.tensor_parallel()
    return []


def place(optimizer: optim.Optimizer, args: Any, on: Mesh) -> optim.Optimizer:
    """The optimizer laid out on mesh ``on`` as ``--sharding`` says."""
    if args.sharding == "replicated":
        return optimizer.replicate(on)
    return optimizer.shard(on, rules(args))
