"""Recurrent cells (``LSTMCell``, ``GRUCell``) and ``RNN``, which scans a cell over time.

A cell maps ``(carry, x_t) -> (new_carry, y_t)`` for one time step; ``initialize_carry``
builds the first carry. To run a cell over a sequence inside your own module, use
``RNN``::

    carry, ys = nn.RNN(xs, cell=nn.LSTMCell, hidden_size=32)   # xs: (batch, time, F)

or scan a ``Model`` of the cell yourself: ``jax.lax.scan(nn.Model(nn.LSTMCell, params),
carry, xs_time_major)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from flaxen.errors import LayerArgumentError, ShapeError
from flaxen.nn import initializers
from flaxen.nn.activation import sigmoid, tanh
from flaxen.nn.base import Module
from flaxen.nn.initializers import InitFn, call_init
from flaxen.nn.linear import Dense, default_kernel_init

Activation = Callable[[jax.Array], jax.Array]


def _check_step(module: Module, h: jax.Array, x: jax.Array) -> None:
    if x.ndim < 1 or h.shape[:-1] != x.shape[:-1]:
        raise ShapeError(module.label, "cell input shape", f"batch dims {h.shape[:-1]} of "
                         f"the carry (shape {h.shape}) followed by features",
                         f"input shape {x.shape}")


class LSTMCell(Module):
    """A long short-term memory cell; carry ``(c, h)``."""

    def apply(self, carry: tuple[jax.Array, jax.Array], inputs: jax.Array,
              gate_fn: Activation = sigmoid, activation_fn: Activation = tanh,
              kernel_init: InitFn = default_kernel_init,
              recurrent_kernel_init: InitFn = initializers.orthogonal(),
              bias_init: InitFn = initializers.zeros, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """One LSTM step.

        ``i = gate(W_ii x + W_hi h + b_i)``, ``f``, ``o`` alike, ``g = act(W_ig x + W_hg h
        + b_g)``; ``c' = f * c + i * g``; ``h' = o * act(c')``.

        Args:
          carry: ``(c, h)``, each ``(batch..., hidden)``; hidden size is ``h.shape[-1]``.
          inputs: ``(batch..., features)``.
          gate_fn, activation_fn: the gate and cell activations.
          kernel_init, recurrent_kernel_init, bias_init: initializers.
          dtype, param_dtype: computation and parameter dtypes.

        Returns:
          ``((c', h'), h')``, each ``(batch..., hidden)`` in ``dtype``. Params: ``ii, if,
          ig, io`` ``{kernel (F, hidden)}`` (no bias) and ``hi, hf, hg, ho`` ``{kernel
          (hidden, hidden), bias (hidden,)}``.
        """
        c, h = (jnp.asarray(a).astype(dtype) for a in carry)
        inputs = jnp.asarray(inputs)
        _check_step(self, h, inputs)
        hidden = h.shape[-1]
        dense_i = Dense.partial(features=hidden, bias=False, kernel_init=kernel_init,
                                dtype=dtype, param_dtype=param_dtype)
        dense_h = Dense.partial(features=hidden, bias=True, kernel_init=recurrent_kernel_init,
                                bias_init=bias_init, dtype=dtype, param_dtype=param_dtype)
        i = gate_fn(dense_i(inputs, name="ii") + dense_h(h, name="hi"))
        f = gate_fn(dense_i(inputs, name="if") + dense_h(h, name="hf"))
        g = activation_fn(dense_i(inputs, name="ig") + dense_h(h, name="hg"))
        o = gate_fn(dense_i(inputs, name="io") + dense_h(h, name="ho"))
        new_c = f * c + i * g
        new_h = o * activation_fn(new_c)
        return (new_c, new_h), new_h

    @staticmethod
    def initialize_carry(rng: jax.Array, batch_dims: Sequence[int], size: int,
                         init_fn: InitFn = initializers.zeros) -> tuple[jax.Array, jax.Array]:
        """``(c, h)``, each ``init_fn(key, batch_dims + (size,), float32)`` (zeros by
        default; a two-argument ``init_fn(key, shape)`` works too)."""
        k1, k2 = jax.random.split(rng)
        shape = tuple(batch_dims) + (size,)
        return call_init(init_fn, k1, shape), call_init(init_fn, k2, shape)


class GRUCell(Module):
    """A gated recurrent unit cell; carry ``h``."""

    def apply(self, carry: jax.Array, inputs: jax.Array, gate_fn: Activation = sigmoid,
              activation_fn: Activation = tanh, kernel_init: InitFn = default_kernel_init,
              recurrent_kernel_init: InitFn = initializers.orthogonal(),
              bias_init: InitFn = initializers.zeros, dtype: Any = jnp.float32,
              param_dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
        """One GRU step.

        ``r = gate(W_ir x + b_ir + W_hr h)``, ``z`` alike, ``n = act(W_in x + b_in + r *
        (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.

        Args:
          carry: ``h`` of shape ``(batch..., hidden)``.
          inputs: ``(batch..., features)``.
          gate_fn, activation_fn: as in ``LSTMCell``.
          kernel_init, recurrent_kernel_init, bias_init, dtype, param_dtype: as in ``LSTMCell``.

        Returns:
          ``(h', h')`` in ``dtype``. Params: ``ir, iz, in`` ``{kernel (F, hidden), bias}``,
          ``hr, hz`` ``{kernel (hidden, hidden)}``, ``hn`` ``{kernel, bias}``.
        """
        h = jnp.asarray(carry).astype(dtype)
        inputs = jnp.asarray(inputs)
        _check_step(self, h, inputs)
        hidden = h.shape[-1]
        dense_i = Dense.partial(features=hidden, bias=True, kernel_init=kernel_init,
                                bias_init=bias_init, dtype=dtype, param_dtype=param_dtype)
        dense_h = Dense.partial(features=hidden, bias=False, kernel_init=recurrent_kernel_init,
                                bias_init=bias_init, dtype=dtype, param_dtype=param_dtype)
        r = gate_fn(dense_i(inputs, name="ir") + dense_h(h, name="hr"))
        z = gate_fn(dense_i(inputs, name="iz") + dense_h(h, name="hz"))
        n = activation_fn(dense_i(inputs, name="in") + r * dense_h(h, name="hn", bias=True))
        one = jnp.ones((), dtype)
        new_h = (one - z) * n + z * h
        return new_h, new_h

    @staticmethod
    def initialize_carry(rng: jax.Array, batch_dims: Sequence[int], size: int,
                         init_fn: InitFn = initializers.zeros) -> jax.Array:
        """``init_fn(rng, batch_dims + (size,), float32)`` (zeros by default; a two-argument
        ``init_fn(key, shape)`` works too)."""
        return call_init(init_fn, rng, tuple(batch_dims) + (size,))


class RNN(Module):
    """Runs a recurrent cell over the time axis with ``jax.lax.scan``; one set of params."""

    def apply(self, inputs: jax.Array, cell: Any = LSTMCell,
              hidden_size: int | None = None, initial_carry: Any = None, time_axis: int = 1,
              reverse: bool = False, **cell_kwargs: Any) -> tuple[Any, jax.Array]:
        """Scans ``cell`` over ``inputs``.

        The cell's params live under ``cell`` (e.g. ``RNN_0/cell/ii/kernel``) and are
        shared by all time steps. At init the first step runs once outside the scan to
        create them; every step inside ``lax.scan`` reads them.

        Args:
          inputs: ``(batch, time, features)`` (time on ``time_axis``).
          cell: a cell class with ``initialize_carry`` (``LSTMCell``, ``GRUCell``, ...).
          hidden_size: the carry size when ``initial_carry`` is None (zeros carry).
          initial_carry: the first carry (e.g. from ``cell.initialize_carry``).
          time_axis: the time axis of ``inputs`` and of the outputs.
          reverse: scan from the last step to the first (outputs keep input order).
          **cell_kwargs: passed to the cell (``dtype``, initializers, ...).

        Returns:
          ``(final_carry, outputs)``; outputs have the time axis at ``time_axis``.
        """
        inputs = jnp.asarray(inputs)
        path = self.label
        if inputs.ndim < 2 or not -inputs.ndim <= time_axis < inputs.ndim:
            raise ShapeError(path, "RNN input", f"rank >= 2 with a time axis {time_axis}",
                             f"shape {inputs.shape}")
        xs = jnp.moveaxis(inputs, time_axis, 0)
        if initial_carry is None:
            if hidden_size is None:
                raise LayerArgumentError(path, "RNN carry", "initial_carry or hidden_size",
                                         "neither")
            initial_carry = cell.initialize_carry(jax.random.PRNGKey(0), xs.shape[1:-1],
                                                  hidden_size)
        dtype = cell_kwargs.get("dtype", jnp.float32)
        carry = jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), initial_carry)
        shared_cell = cell.shared(name="cell", **cell_kwargs)
        if self.is_initializing():
            shared_cell(carry, xs[0])  # creates the params; the scan below reads them

        def step(c: Any, x: jax.Array) -> tuple[Any, jax.Array]:
            return shared_cell(c, x)

        carry, ys = lax.scan(step, carry, xs, reverse=reverse)
        return carry, jnp.moveaxis(ys, 0, time_axis)
