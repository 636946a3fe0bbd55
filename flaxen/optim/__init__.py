"""flaxen.optim: optimizers as thin, documented mappings onto optax.

``optim.Momentum(learning_rate=0.1, beta=0.9).create(model)`` gives an ``Optimizer``
pytree; ``optimizer.optimize(loss_fn) -> (new_optimizer, loss, aux)``. See docs/optim.md.
"""

from flaxen.optim import schedules as schedules
from flaxen.optim.adafactor import Adafactor as Adafactor
from flaxen.optim.adagrad import Adagrad as Adagrad
from flaxen.optim.adam import Adam as Adam
from flaxen.optim.dynamic_scale import DynamicScale as DynamicScale
from flaxen.optim.dynamic_scale import DynamicScaleResult as DynamicScaleResult
from flaxen.optim.finite import check_finite as check_finite
from flaxen.optim.base import Optimizer as Optimizer
from flaxen.optim.base import OptimizerDef as OptimizerDef
from flaxen.optim.base import OptimizerState as OptimizerState
from flaxen.optim.lamb import LAMB as LAMB
from flaxen.optim.lars import LARS as LARS
from flaxen.optim.momentum import Momentum as Momentum
from flaxen.optim.multi import ModelParamTraversal as ModelParamTraversal
from flaxen.optim.multi import MultiOptimizer as MultiOptimizer
from flaxen.optim.optax_adapter import Optax as Optax
from flaxen.optim.rmsprop import RMSProp as RMSProp
from flaxen.optim.sgd import SGD as SGD
from flaxen.optim.sgd import GradientDescent as GradientDescent
from flaxen.optim.weight_norm import WeightNorm as WeightNorm
