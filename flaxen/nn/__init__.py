"""flaxen.nn: the Module system and the common layers."""

from flaxen.nn import initializers as initializers
from flaxen.nn import utils as utils
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
from flaxen.nn.conv import Conv as Conv
from flaxen.nn.conv import ConvTranspose as ConvTranspose
from flaxen.nn.dropout import dropout as dropout
from flaxen.nn.linear import Dense as Dense
from flaxen.nn.linear import DenseGeneral as DenseGeneral
from flaxen.nn.linear import Embed as Embed
from flaxen.nn.normalization import BatchNorm as BatchNorm
from flaxen.nn.normalization import GroupNorm as GroupNorm
from flaxen.nn.normalization import LayerNorm as LayerNorm
from flaxen.nn.normalization import RMSNorm as RMSNorm
from flaxen.nn.pooling import avg_pool as avg_pool
from flaxen.nn.pooling import max_pool as max_pool
from flaxen.nn.pooling import pool as pool
from flaxen.nn.attention import MultiHeadDotProductAttention as MultiHeadDotProductAttention
from flaxen.nn.attention import SelfAttention as SelfAttention
from flaxen.nn.attention import dot_product_attention as dot_product_attention
from flaxen.nn.attention import make_attention_mask as make_attention_mask
from flaxen.nn.attention import make_causal_mask as make_causal_mask
from flaxen.nn.attention import make_padding_mask as make_padding_mask
from flaxen.nn import attention as attention  # nn.attention.Cache, as in the pre-release
from flaxen.nn.recurrent import RNN as RNN
from flaxen.nn.recurrent import GRUCell as GRUCell
from flaxen.nn.recurrent import LSTMCell as LSTMCell
from flaxen.nn import export as export  # registers Model/Collection with jax.export
from flaxen.nn.scan import ScanLayers as ScanLayers
from flaxen.nn.scan import stack_layers as stack_layers
from flaxen.nn.scan import unstack_layers as unstack_layers
