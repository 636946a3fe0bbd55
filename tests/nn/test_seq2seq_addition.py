"""An LSTM encoder-decoder, each a ``LSTMCell`` scanned with ``jax_utils.scan_in_dim``
(the pre-release seq2seq example's structure), learns to add two numbers given as digit
strings: ``"37+5"`` -> ``"42"``. About 35-90 s on a loaded 2-core CPU (mostly compiling),
so it is marked slow. Greedy decoding (the decoder feeds back its own
predictions) must reach >= 95% exact-match accuracy on sums held out from training.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxen import jax_utils, nn, optim

DIGITS = 2  # operands 0..99
CHARS = "0123456789+= "  # '=' starts the answer, ' ' pads the query, EOS ends the answer
EOS = len(CHARS)
VOCAB = len(CHARS) + 1
QUERY_LEN = 2 * DIGITS + 1
ANSWER_LEN = DIGITS + 2  # up to DIGITS + 1 digits, then EOS
HIDDEN = 64


def encode_query(a: int, b: int) -> list[int]:
    """Reversed, as in sequence-to-sequence papers: the last digits, which the answer
    starts from, are read last."""
    return [CHARS.index(c) for c in f"{a}+{b}".rjust(QUERY_LEN)][::-1]


def encode_answer(s: int) -> list[int]:
    ids = [CHARS.index(c) for c in str(s)] + [EOS]
    return ids + [EOS] * (ANSWER_LEN - len(ids))


def make_data(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.array([encode_query(a, b) for a, b in pairs], np.int32)
    ans = np.array([encode_answer(a + b) for a, b in pairs], np.int32)
    return q, ans


class DecoderStep(nn.Module):
    """One decoder step: the previous token (given, or its own prediction) in, logits out."""

    def apply(self, carry, x, teacher_force=True):
        lstm_state, last_prediction = carry
        if not teacher_force:
            x = last_prediction
        lstm_state, y = nn.LSTMCell(lstm_state, x, name="lstm")
        logits = nn.Dense(y, VOCAB, name="logits")
        prediction = jax.nn.one_hot(jnp.argmax(logits, -1), VOCAB)
        return (lstm_state, prediction), logits


class Seq2seq(nn.Module):
    def apply(self, query, decoder_inputs, teacher_force=True):
        """query (B, QUERY_LEN) ids; decoder_inputs (B, ANSWER_LEN) ids starting with '='."""
        q = jax.nn.one_hot(query, VOCAB)
        d = jax.nn.one_hot(decoder_inputs, VOCAB)
        carry = nn.LSTMCell.initialize_carry(jax.random.PRNGKey(0), query.shape[:1], HIDDEN)
        carry, _ = jax_utils.scan_in_dim(nn.LSTMCell.partial(name="encoder"), carry, q, axis=1)
        step = DecoderStep.partial(teacher_force=teacher_force, name="decoder")
        _, logits = jax_utils.scan_in_dim(step, (carry, d[:, 0]), d, axis=1)
        return logits


def decoder_inputs(answers: jax.Array) -> jax.Array:
    go = jnp.full((answers.shape[0], 1), CHARS.index("="), jnp.int32)
    return jnp.concatenate([go, answers[:, :-1]], 1)


def loss_fn(model, query, answers):
    logits = model(query, decoder_inputs(answers))
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.sum(jax.nn.one_hot(answers, VOCAB) * logp, -1))


@jax.jit
def train_step(optimizer, query, answers):
    grads = jax.grad(loss_fn)(optimizer.target, query, answers)
    return optimizer.apply_gradient(grads)


@jax.jit
def greedy(model, query):
    go = jnp.full((query.shape[0], ANSWER_LEN), CHARS.index("="), jnp.int32)
    return jnp.argmax(model(query, go, teacher_force=False), -1)


@pytest.mark.slow
def test_lstm_seq2seq_learns_addition():
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    pairs = np.array([(a, b) for a in range(10 ** DIGITS) for b in range(10 ** DIGITS)])
    rng.shuffle(pairs)
    test_pairs, train_pairs = pairs[:1000], pairs[1000:]
    train_q, train_a = make_data(train_pairs)
    test_q, test_a = make_data(test_pairs)
    assert not {tuple(p) for p in test_pairs} & {tuple(p) for p in train_pairs}

    _, model = Seq2seq.create_by_shape(jax.random.PRNGKey(0), [((8, QUERY_LEN), jnp.int32),
                                                                 ((8, ANSWER_LEN), jnp.int32)])
    optimizer = optim.Adam(learning_rate=0.01).create(model)
    before = float(jnp.mean(jnp.all(greedy(model, test_q) == test_a, -1)))
    for _ in range(1500):
        idx = rng.integers(0, len(train_q), 128)
        optimizer = train_step(optimizer, train_q[idx], train_a[idx])
    accuracy = float(jnp.mean(jnp.all(greedy(optimizer.target, test_q) == test_a, -1)))
    print(f"held-out exact match {accuracy:.3f} (before training {before:.3f}), "
          f"{time.perf_counter() - start:.1f} s")
    assert before < 0.05
    assert accuracy >= 0.95
