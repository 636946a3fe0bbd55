"""flaxen.optim: optimizers as thin, documented mappings onto optax.

``optim.Momentum(learning_rate=0.1, beta=0.9).create(model)`` gives an ``Optimizer``
pytree; ``optimizer.optimize(loss_fn) -> (new_optimizer, loss, aux)``. See docs/optim.md.
"""

from flaxen.optim.adam import Adam as Adam
from flaxen.optim.base import Optimizer as Optimizer
from flaxen.optim.base import OptimizerDef as OptimizerDef
from flaxen.optim.base import OptimizerState as OptimizerState
from flaxen.optim.momentum import Momentum as Momentum
from flaxen.optim.sgd import SGD as SGD
from flaxen.optim.sgd import GradientDescent as GradientDescent
