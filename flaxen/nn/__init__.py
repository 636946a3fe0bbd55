"""flaxen.nn: the Module system and the common layers."""

from flaxen.nn import initializers as initializers
from flaxen.nn.activation import celu as celu
from flaxen.nn.activation import elu as elu
from flaxen.nn.activation import gelu as gelu
from flaxen.nn.activation import glu as glu
from flaxen.nn.activation import hard_tanh as hard_tanh
from flaxen.nn.activation import leaky_relu as leaky_relu
from flaxen.nn.activation import log_sigmoid as log_sigmoid
from flaxen.nn.activation import log_softmax as log_softmax
from flaxen.nn.activation import relu as relu
from flaxen.nn.activation import relu6 as relu6
from flaxen.nn.activation import selu as selu
from flaxen.nn.activation import sigmoid as sigmoid
from flaxen.nn.activation import silu as silu
from flaxen.nn.activation import soft_sign as soft_sign
from flaxen.nn.activation import softmax as softmax
from flaxen.nn.activation import softplus as softplus
from flaxen.nn.activation import swish as swish
from flaxen.nn.activation import tanh as tanh
from flaxen.nn.base import Model as Model
from flaxen.nn.base import Module as Module
from flaxen.nn.base import module as module
from flaxen.nn.base import module_method as module_method
from flaxen.nn.collection import Collection as Collection
from flaxen.nn.collection import ModuleState as ModuleState
from flaxen.nn.collection import capture_module_outputs as capture_module_outputs
from flaxen.nn.collection import get_state as get_state
from flaxen.nn.collection import is_stateful as is_stateful
from flaxen.nn.collection import stateful as stateful
from flaxen.nn.stochastic import is_stochastic as is_stochastic
from flaxen.nn.stochastic import make_rng as make_rng
from flaxen.nn.stochastic import stochastic as stochastic
from flaxen.nn.summary import summary as summary

# Layers (one file per family) are re-exported below as they land.
