"""One jitted momentum-SGD train step of a classifier, in every library, as ``run(n)``.

A benchmark (``mlp``, ``mnist_cnn``) supplies the same model written once per library in
a ``Models`` record; the functions here wrap each in the train step its documentation
recommends and return a ``run(n)`` closure for the harness:

- plain JAX: params dict, hand-written momentum update, ``jax.jit`` (the floor);
- plain JAX + optax: the same with ``optax.sgd(momentum=...)`` (what every optax user pays);
- flaxen: the ``Optimizer`` (holding the ``Model``) passed through ``jax.jit``, stepped with
  ``optimizer.optimize(loss_fn)`` as in the seed README, and with ``jax.grad`` +
  ``optimizer.apply_gradient``; and flaxen with the plain params dict passed to ``jax.jit``
  (same update as plain JAX), which isolates what the ``Optimizer``/``Model`` pytrees cost;
- Flax Linen: ``TrainState`` + optax, ``jax.jit``; Flax NNX: ``nnx.Optimizer`` with
  ``nnx.jit``, and split/merge around ``jax.jit`` (the NNX performance guide's advice);
  Equinox: ``eqx.filter_jit`` + optax; Haiku: ``hk.transform`` + optax, ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax

from benchmarks.common import (
    BETA,
    LEARNING_RATE,
    Skip,
    carry_loop,
    effect_loop,
    momentum_update,
    require,
    require_attr,
    xent,
)
from benchmarks.harness import RunFn


@dataclasses.dataclass
class Models:
    """The same classifier in each library. Every factory is called lazily, so a missing
    library only skips its own line.

    Attributes:
      plain_init: ``key -> params`` (nested dict of f32 arrays).
      plain_apply: ``(params, x) -> logits``.
      flaxen: ``() -> flaxen Module class`` taking ``x``.
      linen: ``() -> linen.Module instance``.
      nnx: ``(rngs) -> nnx.Module instance``.
      equinox: ``(key) -> (model, per_example)``; ``per_example`` True if it must be vmapped.
      haiku: ``() -> function of x`` to wrap in ``hk.transform``.
    """

    plain_init: Callable[[jax.Array], Any]
    plain_apply: Callable[[Any, jax.Array], jax.Array]
    flaxen: Callable[[], Any]
    linen: Callable[[], Any] | None = None
    nnx: Callable[[Any], Any] | None = None
    equinox: Callable[[jax.Array], tuple[Any, bool]] | None = None
    haiku: Callable[[], Callable[[jax.Array], jax.Array]] | None = None


def plain(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    params = m.plain_init(key)
    mom = jax.tree.map(lambda p: p * 0.0, params)

    @jax.jit
    def step(state, x, y):
        params, mom = state
        grads = jax.grad(lambda p: xent(m.plain_apply(p, x), y))(params)
        return momentum_update(params, mom, grads)

    return carry_loop(step, (params, mom), x, y)


def plain_optax(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    """Plain JAX with optax's momentum SGD: the floor every optax user pays."""
    optax = require("optax")
    params = m.plain_init(key)
    tx = _optax_sgd()

    @jax.jit
    def step(state, x, y):
        params, opt_state = state
        grads = jax.grad(lambda p: xent(m.plain_apply(p, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return carry_loop(step, (params, tx.init(params)), x, y)


def _flaxen_optimizer(m: Models, key: jax.Array, x: jax.Array) -> Any:
    try:
        from flaxen import optim
    except ImportError as e:
        raise Skip("flaxen.optim not available yet") from e
    module = m.flaxen()
    _, model = module.create(key, x)
    momentum = require_attr(optim, "Momentum", "flaxen.optim.Momentum")
    return momentum(learning_rate=LEARNING_RATE, beta=BETA).create(model)


def flaxen_optimizer(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    """The seed README's step: ``optimizer.optimize(loss_fn)`` inside ``jax.jit``."""
    optimizer = _flaxen_optimizer(m, key, x)

    @jax.jit
    def step(optimizer, x, y):
        optimizer, _ = optimizer.optimize(lambda model: xent(model(x), y))
        return optimizer

    return carry_loop(step, optimizer, x, y)


def flaxen_apply_gradient(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    """``jax.grad`` of the target, then ``optimizer.apply_gradient(grads)``."""
    optimizer = _flaxen_optimizer(m, key, x)

    @jax.jit
    def step(optimizer, x, y):
        grads = jax.grad(lambda model: xent(model(x), y))(optimizer.target)
        return optimizer.apply_gradient(grads)

    return carry_loop(step, optimizer, x, y)


def flaxen_params(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    module = m.flaxen()
    _, params = module.init(key, x)
    mom = jax.tree.map(lambda p: p * 0.0, params)

    @jax.jit
    def step(state, x, y):
        params, mom = state
        grads = jax.grad(lambda p: xent(module.call(p, x), y))(params)
        return momentum_update(params, mom, grads)

    return carry_loop(step, (params, mom), x, y)


def _optax_sgd() -> Any:
    optax = require("optax")
    return optax.sgd(LEARNING_RATE, momentum=BETA)


def linen(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    require("flax.linen")
    from flax.training import train_state

    if m.linen is None:
        raise Skip("no Linen model")
    model = m.linen()
    variables = model.init(key, x)
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                          tx=_optax_sgd())

    @jax.jit
    def step(state, x, y):
        grads = jax.grad(lambda p: xent(state.apply_fn({"params": p}, x), y))(state.params)
        return state.apply_gradients(grads=grads)

    return carry_loop(step, state, x, y)


def _nnx_parts(m: Models, key: jax.Array) -> tuple[Any, Any, Any]:
    nnx = require("flax.nnx")
    if m.nnx is None:
        raise Skip("no NNX model")
    model = m.nnx(nnx.Rngs(key))
    optimizer = nnx.Optimizer(model, _optax_sgd(), wrt=nnx.Param)
    return nnx, model, optimizer


def nnx_jit(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    nnx, model, optimizer = _nnx_parts(m, key)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda model: xent(model(x), y))(model)
        optimizer.update(model, grads)
        return loss

    return effect_loop(step, model, optimizer, x, y)


def nnx_split(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    nnx, model, optimizer = _nnx_parts(m, key)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        grads = nnx.grad(lambda model: xent(model(x), y))(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer))

    return carry_loop(step, state, x, y)


def equinox(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    eqx = require("equinox")
    if m.equinox is None:
        raise Skip("no Equinox model")
    model, per_example = m.equinox(key)
    tx = _optax_sgd()
    opt_state = tx.init(eqx.filter(model, eqx.is_array))

    def forward(model, x):
        return jax.vmap(model)(x) if per_example else model(x)

    @eqx.filter_jit
    def step(state, x, y):
        model, opt_state = state
        grads = eqx.filter_grad(lambda model: xent(forward(model, x), y))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state

    return carry_loop(step, (model, opt_state), x, y)


def haiku(m: Models, key: jax.Array, x: jax.Array, y: jax.Array) -> RunFn:
    hk = require("haiku")
    if m.haiku is None:
        raise Skip("no Haiku model")
    net = m.haiku()
    f = hk.without_apply_rng(hk.transform(lambda x: net(x)))
    params = f.init(key, x)
    tx = _optax_sgd()
    optax = require("optax")

    @jax.jit
    def step(state, x, y):
        params, opt_state = state
        grads = jax.grad(lambda p: xent(f.apply(p, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return carry_loop(step, (params, tx.init(params)), x, y)


BASELINE = "plain JAX"
ALL: dict[str, Callable[[Models, jax.Array, jax.Array, jax.Array], RunFn]] = {
    BASELINE: plain,
    "plain JAX + optax": plain_optax,
    "flaxen (Optimizer.optimize)": flaxen_optimizer,
    "flaxen (apply_gradient)": flaxen_apply_gradient,
    "flaxen (params dict)": flaxen_params,
    "Flax Linen": linen,
    "Flax NNX (nnx.jit)": nnx_jit,
    "Flax NNX (split/merge)": nnx_split,
    "Equinox": equinox,
    "Haiku": haiku,
}
PEERS = {"Flax Linen", "Flax NNX (nnx.jit)", "Flax NNX (split/merge)", "Equinox", "Haiku"}


def setup_all(m: Models, key: jax.Array, x: jax.Array, y: jax.Array,
              peers: bool) -> tuple[dict[str, RunFn], dict[str, str]]:
    """Every implementation that runs here, and a note for each one that was skipped.

    flaxen and plain JAX errors propagate (a crash must fail CI); a peer that fails to set
    up (an incompatible version, say) is skipped with its error in the note.
    """
    runs: dict[str, RunFn] = {}
    skipped: dict[str, str] = {}
    for name, make in ALL.items():
        if name in PEERS and not peers:
            continue
        try:
            run = make(m, key, x, y)
            run(1)  # compiles; a peer that cannot compile is skipped, not fatal
            runs[name] = run
        except Skip as e:
            skipped[name] = f"skipped: {e}"
        except Exception as e:
            if name not in PEERS:
                raise
            skipped[name] = f"skipped: {type(e).__name__}: {e}"[:200]
    return runs, skipped
