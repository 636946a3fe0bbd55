"""``optimizer.replicate(devices=...)``: the January-2020 ``ReplicatedOptimizer`` for pmap.

The class lives in ``optim/base.py``, beside ``Optimizer.replicate`` which builds it; this
module keeps its import path.
"""

from flaxen.optim.base import ReplicatedOptimizer as ReplicatedOptimizer

__all__ = ["ReplicatedOptimizer"]
