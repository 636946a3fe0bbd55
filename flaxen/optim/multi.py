"""Different optimizers for different parameters, selected by path; unselected ones frozen.

Example:
    >>> from flaxen import optim
    >>> kernels = optim.ModelParamTraversal(lambda path, _: "kernel" in path)
    >>> biases = optim.ModelParamTraversal(lambda path, _: "bias" in path)
    >>> opt_def = optim.MultiOptimizer((kernels, optim.Momentum(learning_rate=0.01)),
    ...                                (biases, optim.Adam(learning_rate=0.1)))
    >>> optimizer = opt_def.create(model)  # doctest: +SKIP

Each sub-optimizer runs on a dict ``{path: leaf}`` of the leaves its traversal selects, with
its own state and step counter (``optimizer.state.param_states[i].step``). Leaves selected
by no traversal are not touched at all, so they stay bit-for-bit unchanged. A leaf
selected by two traversals is an error (pre-release Flax silently applied both updates).

The classes live where the core needs them: ``MultiOptimizer`` in ``optim/base.py``
(``create(target, focus=...)`` builds one), ``ModelParamTraversal`` in
``flaxen/traverse_util.py`` (a ``Traversal``, as in later pre-release Flax); this module
keeps their pre-release import path.
"""

from flaxen.optim.base import MultiOptimizer as MultiOptimizer
from flaxen.traverse_util import ModelParamTraversal as ModelParamTraversal
from flaxen.traverse_util import param_paths as param_paths
from flaxen.traverse_util import set_leaves as set_leaves

__all__ = ["ModelParamTraversal", "MultiOptimizer", "param_paths", "set_leaves"]
