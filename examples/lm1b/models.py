"""A decoder-only Transformer language model built from flaxen layers.

    tokens [b, l] --Embed--> + position embeddings --dropout-->
      num_layers x DecoderBlock:  x + Dropout(SelfAttention(LayerNorm(x)))  (causal)
                                  x + Dropout(Mlp(LayerNorm(x)))
    --LayerNorm--> logits [b, l, vocab] (via Embed.attend when tied, else Dense)

Parameter layout (``num_layers=2``, tied): ``embed/embedding``, ``pos_embed/pos_embedding``
(learned only), ``block_0/{ln_attn, attention/{query,key,value,out}, ln_mlp,
mlp/{Dense_0,Dense_1}}``, ``block_1/...``, ``ln_final``; untied adds ``logits``. With
``scan_layers``, one ``blocks/...`` entry replaces ``block_i``, each leaf stacked
``[num_layers, ...]``.

Autoregressive decoding runs one token per call with the attention layers' key/value
cache (``nn.SelfAttention(..., decode=True)``, whose keys and values live in a state
``nn.Collection``): ``init_cache``, then ``decode_step``. Positions are passed
explicitly, so the position embedding needs no state of its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flaxen import nn
from flaxen.errors import FlaxenError


class ContextLengthError(FlaxenError):
    """A sequence is longer than the model's position table."""


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """The model's hyper-parameters (hashable, so jit sees one static value).

    Attributes:
      vocab_size: number of token ids.
      emb_dim: the width of the residual stream.
      num_heads: attention heads (``emb_dim % num_heads == 0``).
      num_layers: decoder blocks.
      mlp_dim: hidden width of each MLP (usually ``4 * emb_dim``).
      max_len: the size of the position table: the longest sequence the model reads.
      position: ``'learned'`` (a trained table, initialised N(0, 0.02)) or
        ``'sinusoidal'`` (the fixed table of Vaswani et al.; no parameters).
      tied_embeddings: output logits via ``Embed.attend`` (the input embedding).
      dropout_rate: dropout on embeddings, attention output and MLP output.
      attention_dropout_rate: dropout on the attention weights.
      dtype: computation dtype (``jnp.bfloat16`` for bf16); params stay float32 and
        logits are returned in float32.
      scan_layers: run the blocks with ``nn.ScanLayers`` (params stacked under
        ``blocks/...`` with a leading ``[num_layers]`` axis; trace and compile time
        independent of depth) instead of a Python loop (``block_0``, ``block_1``, ...).
        ``models.stack_blocks`` / ``unstack_blocks`` convert between the two layouts.
      remat: with ``scan_layers``, recompute each block's activations in the backward pass
        (``jax.checkpoint``): less memory, about one more forward pass of compute.
    """

    vocab_size: int
    emb_dim: int = 128
    num_heads: int = 4
    num_layers: int = 4
    mlp_dim: int = 512
    max_len: int = 64
    position: str = "learned"
    tied_embeddings: bool = True
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    scan_layers: bool = False
    remat: bool = False

    def __post_init__(self) -> None:
        if self.emb_dim % self.num_heads:
            raise FlaxenError(f"LMConfig: emb_dim={self.emb_dim} must be divisible by "
                              f"num_heads={self.num_heads}.")
        if self.remat and not self.scan_layers:
            raise FlaxenError("LMConfig: remat=True needs scan_layers=True (each scanned "
                              "block is rematerialised).")
        if self.position not in ("learned", "sinusoidal"):
            raise FlaxenError(f"LMConfig: position must be 'learned' or 'sinusoidal'; got "
                              f"{self.position!r}.")
        for name in ("vocab_size", "emb_dim", "num_heads", "num_layers", "mlp_dim", "max_len"):
            if int(getattr(self, name)) < 1:
                raise FlaxenError(f"LMConfig: {name} must be >= 1; got {getattr(self, name)}.")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the dtype by name)."""
        d = dataclasses.asdict(self)
        d["dtype"] = jnp.dtype(self.dtype).name
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LMConfig:
        """The inverse of ``to_json``."""
        d = dict(d)
        d.setdefault("scan_layers", False)  # configs saved before these options existed
        d.setdefault("remat", False)
        d["dtype"] = jnp.dtype(d["dtype"]).type
        return cls(**d)


def sinusoidal_table(max_len: int, features: int) -> np.ndarray:
    """``[max_len, features]`` float32: sin on the first half of features, cos on the second.

    Frequencies ``1 / 10000^(k / (features/2 - 1))``, as in the original Transformer code.
    """
    half = features // 2
    k = np.arange(half, dtype=np.float64)
    freqs = np.exp(-math.log(10000.0) * k / max(half - 1, 1))
    angles = np.arange(max_len, dtype=np.float64)[:, None] * freqs[None, :]
    table = np.zeros((max_len, features), np.float64)
    table[:, :half] = np.sin(angles)
    table[:, half : 2 * half] = np.cos(angles)
    return table.astype(np.float32)


class AddPositionEmbs(nn.Module):
    """Adds the position embedding of ``positions`` to ``x``."""

    def apply(self, x: jax.Array, positions: jax.Array, max_len: int,
              position: str = "learned") -> jax.Array:
        """``x + table[positions]``.

        Args:
          x: ``[batch, length, features]``.
          positions: int32 ``[batch, length]`` (or broadcastable), each in ``[0, max_len)``.
          max_len: rows of the table.
          position: ``'learned'`` (param ``pos_embedding`` of shape ``[max_len, features]``)
            or ``'sinusoidal'`` (a constant).

        Returns:
          ``[batch, length, features]``, the dtype of ``x``.
        """
        features = x.shape[-1]
        if position == "learned":
            table = self.param("pos_embedding", (max_len, features),
                               nn.initializers.normal(stddev=0.02))
        else:
            table = jnp.asarray(sinusoidal_table(max_len, features))
        pe = jnp.take(jnp.asarray(table), positions, axis=0)
        return x + pe.astype(x.dtype)


class Mlp(nn.Module):
    """``Dense(mlp_dim) -> gelu -> Dense(features) -> dropout``."""

    def apply(self, x: jax.Array, mlp_dim: int, dropout_rate: float = 0.0,
              deterministic: bool = True, dtype: Any = jnp.float32,
              out_init: Any = None) -> jax.Array:
        features = x.shape[-1]
        init = nn.initializers.normal(stddev=0.02)
        h = nn.Dense(x, mlp_dim, dtype=dtype, kernel_init=init)
        h = nn.gelu(h)
        h = nn.Dense(h, features, dtype=dtype, kernel_init=out_init or init)
        return nn.dropout(h, dropout_rate, deterministic=deterministic)


class DecoderBlock(nn.Module):
    """One pre-LayerNorm Transformer block: causal self-attention, then an MLP."""

    def apply(self, x: jax.Array, config: LMConfig, deterministic: bool = True,
              decode: bool = False) -> jax.Array:
        """``[batch, length, emb_dim] -> [batch, length, emb_dim]`` (dtype ``config.dtype``).

        With ``decode``, attention reads and extends the key/value cache in the active
        state collection (see ``decode_step``).
        """
        c = config
        # GPT-2 style: residual projections start smaller, by 1/sqrt(2 * num_layers).
        out_init = nn.initializers.normal(stddev=0.02 / math.sqrt(2 * c.num_layers))
        h = nn.LayerNorm(x, dtype=c.dtype, name="ln_attn")
        h = nn.SelfAttention(
            h, num_heads=c.num_heads, qkv_features=c.emb_dim, causal_mask=True,
            dropout_rate=c.attention_dropout_rate, deterministic=deterministic,
            dtype=c.dtype, kernel_init=nn.initializers.normal(stddev=0.02), decode=decode,
            name="attention")
        x = x + nn.dropout(h, c.dropout_rate, deterministic=deterministic)
        h = nn.LayerNorm(x, dtype=c.dtype, name="ln_mlp")
        h = Mlp(h, c.mlp_dim, c.dropout_rate, deterministic, c.dtype, out_init, name="mlp")
        return x + h


class TransformerLM(nn.Module):
    """A decoder-only Transformer: token ids in, next-token logits out."""

    def apply(self, inputs: jax.Array, config: LMConfig, deterministic: bool = True,
              positions: jax.Array | None = None, decode: bool = False) -> jax.Array:
        """Logits for the next token at every position.

        Args:
          inputs: int32 ``[batch, length]`` token ids; ``length <= config.max_len``.
          config: the hyper-parameters.
          deterministic: no dropout (evaluation, sampling); else keys come from
            ``model(x, _rng=key)``.
          positions: int32 ``[batch, length]`` positions of the tokens; default
            ``0..length-1``. In cached decoding, the index of the token being fed.
          decode: use the attention key/value cache in the active state collection
            (see ``init_cache`` and ``decode_step``).

        Returns:
          float32 ``[batch, length, vocab_size]``.

        Raises:
          ContextLengthError: ``length`` (or a position) exceeds the position table.
          LayerArgumentError: ``inputs`` are not integers.
        """
        c = config
        inputs = jnp.asarray(inputs)
        if inputs.ndim != 2:
            raise ContextLengthError(
                f"TransformerLM: inputs must be token ids of shape [batch, length]; got shape "
                f"{inputs.shape}.")
        length = inputs.shape[1]
        if length > c.max_len:
            raise ContextLengthError(
                f"TransformerLM: a sequence of {length} tokens is longer than the position "
                f"table (max_len={c.max_len}). Use --context <= {c.max_len}, or train a model "
                "with a larger --max_len.")
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), inputs.shape)
        embed = nn.Embed.shared(num_embeddings=c.vocab_size, features=c.emb_dim,
                                embedding_init=nn.initializers.normal(stddev=0.02),
                                name="embed")
        x = embed(inputs).astype(c.dtype)
        x = AddPositionEmbs(x, positions, c.max_len, c.position, name="pos_embed")
        x = nn.dropout(x, c.dropout_rate, deterministic=deterministic)
        if c.scan_layers:
            # A decoding cache is module state, which a scan cannot write: loop instead.
            x = nn.ScanLayers(x, block=DecoderBlock.partial(config=c), num_layers=c.num_layers,
                              remat=c.remat, loop=decode, deterministic=deterministic,
                              decode=decode, name="blocks")
        else:
            for i in range(c.num_layers):
                x = DecoderBlock(x, c, deterministic, decode, name=f"block_{i}")
        x = nn.LayerNorm(x, dtype=c.dtype, name="ln_final")
        if c.tied_embeddings:
            logits = embed.attend(x, dtype=c.dtype)  # type: ignore[attr-defined]
        else:
            logits = nn.Dense(x, c.vocab_size, dtype=c.dtype, bias=False,
                              kernel_init=nn.initializers.normal(stddev=0.02), name="logits")
        return logits.astype(jnp.float32)


def init_cache(params: dict, config: LMConfig, batch_size: int) -> nn.Collection:
    """An empty decoding cache for ``batch_size`` sequences of up to ``max_len`` tokens.

    Each attention layer gets ``cached_key``/``cached_value`` of shape ``[batch_size,
    max_len, num_heads, emb_dim // num_heads]`` (dtype ``config.dtype``) and a
    ``cache_index`` of 0. It is made by one full-length pass with ``decode=True`` (the
    attention layers allocate their cache on a full-length input); its output is unused.
    """
    dummy = jnp.zeros((batch_size, config.max_len), jnp.int32)
    _, cache = TransformerLM.call_with_state(params, None, dummy, config=config, decode=True)
    return cache


def decode_step(params: dict, config: LMConfig, cache: nn.Collection, tokens: jax.Array,
                position: jax.Array) -> tuple[jax.Array, nn.Collection]:
    """Next-token logits for one new token per sequence, extending the cache.

    Args:
      params: the model's parameters.
      config: its ``LMConfig``.
      cache: from ``init_cache`` or the previous ``decode_step``.
      tokens: int32 ``[batch, 1]``: the token at ``position``.
      position: int32 scalar: how many tokens were fed before (``0`` first). Must be
        below ``max_len`` (the cache holds ``max_len`` positions).

    Returns:
      ``(logits, new_cache)``: float32 ``[batch, vocab_size]``, equal to the full pass's
      logits at ``position`` for the same tokens.
    """
    positions = jnp.broadcast_to(jnp.asarray(position, jnp.int32), tokens.shape)
    logits, cache = TransformerLM.call_with_state(params, cache, tokens, config=config,
                                                  positions=positions, decode=True)
    return logits[:, 0], cache


def stack_blocks(params: dict) -> dict:
    """Per-layer params (``block_0``, ``block_1``, ...) in the ``scan_layers`` layout."""
    return nn.stack_layers(params, prefix="block_", name="blocks")


def unstack_blocks(params: dict) -> dict:
    """``scan_layers`` params (``blocks/...``, stacked) in the per-layer layout."""
    return nn.unstack_layers(params, name="blocks", prefix="block_")
