"""Text data for the language model: LM1b release files or any plain-text file.

Everything becomes one int32 token stream per split. Sentences (LM1b lines, or lines of
a text file under SentencePiece) are packed end to end with an end-of-sentence token
between them; a character-level stream is the text itself. Training batches are
fixed-length windows at random offsets of the packed stream (a fresh draw per step,
reproducible from ``(seed, step)`` so ``--resume`` continues the same sequence);
evaluation reads the held-out stream once in consecutive, non-overlapping windows.

LM1b ("One Billion Word Benchmark", Chelba et al. 2013) is read from its standard release,
``1-billion-word-language-modeling-benchmark-r13output.tar.gz`` (see README.md):

    <lm1b_dir>/training-monolingual.tokenized.shuffled/news.en-000NN-of-00100   (train)
    <lm1b_dir>/heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050 (eval)
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator, Sequence

import numpy as np

from flaxen.errors import FlaxenError

try:  # as part of the repository's `examples` package (tests, `python -m examples.lm1b.train`)
    from examples.lm1b import tokenizer as tok
except ImportError:  # as a script, `python examples/lm1b/train.py`, or in a forked copy
    import tokenizer as tok  # type: ignore[no-redef]

Batch = dict[str, np.ndarray]

LM1B_TOP = "1-billion-word-language-modeling-benchmark-r13output"
LM1B_TRAIN_GLOB = "training-monolingual.tokenized.shuffled/news.en-*-of-00100"
LM1B_EVAL_FILE = "heldout-monolingual.tokenized.shuffled/news.en.heldout-00000-of-00050"


class TextDataError(FlaxenError):
    """A text file or data directory cannot be used (empty, binary, too short, missing)."""


class VocabMismatchError(FlaxenError):
    """The vocabulary of the data or flags differs from the one a checkpoint was trained with."""


@dataclasses.dataclass
class Dataset:
    """A tokenizer and the token streams of the two splits (int32, 1-D)."""

    tokenizer: tok.Tokenizer
    train: np.ndarray
    eval: np.ndarray
    source: str


# -- Reading text ---------------------------------------------------------------------------


def read_text_file(path: str) -> str:
    """The UTF-8 text of ``path``.

    Raises:
      TextDataError: the file is missing, empty (or only whitespace), or binary (has NUL
        bytes or is not valid UTF-8); the message says which and where.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TextDataError(f"--text_file {path!r} does not exist.") from None
    except IsADirectoryError:
        raise TextDataError(f"--text_file {path!r} is a directory; give a plain-text file "
                            "(for the LM1b release directory use --lm1b_dir).") from None
    if not data.strip():
        raise TextDataError(f"--text_file {path!r} is empty ({len(data)} bytes, no text). "
                            "Give a plain-text file with some text in it.")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise TextDataError(f"--text_file {path!r} looks binary: it has a NUL byte at offset "
                            f"{nul}. Give a plain UTF-8 text file.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextDataError(f"--text_file {path!r} looks binary: it is not valid UTF-8 "
                            f"(byte {data[e.start]:#04x} at offset {e.start}). Give a plain "
                            "UTF-8 text file.") from None


def split_text(text: str, eval_fraction: float) -> tuple[str, str]:
    """The first ``1 - eval_fraction`` of the characters for training, the rest held out."""
    if not 0.0 < eval_fraction < 1.0:
        raise TextDataError(f"eval_fraction must be in (0, 1); got {eval_fraction}.")
    cut = int(round(len(text) * (1.0 - eval_fraction)))
    return text[:cut], text[cut:]


def lm1b_files(lm1b_dir: str) -> tuple[list[str], str]:
    """The training shards and the held-out file of the LM1b release under ``lm1b_dir``.

    ``lm1b_dir`` may be the extracted ``1-billion-word-...-r13output`` directory or the
    directory that contains it.
    """
    root = lm1b_dir
    if os.path.isdir(os.path.join(root, LM1B_TOP)):
        root = os.path.join(root, LM1B_TOP)
    train = sorted(glob.glob(os.path.join(root, LM1B_TRAIN_GLOB)))
    heldout = os.path.join(root, LM1B_EVAL_FILE)
    if not train or not os.path.isfile(heldout):
        raise TextDataError(
            f"--lm1b_dir {lm1b_dir!r} does not hold the LM1b release: expected "
            f"{LM1B_TRAIN_GLOB!r} and {LM1B_EVAL_FILE!r} under it (found {len(train)} training "
            "shards). Download and extract the release as described in examples/lm1b/README.md."
        )
    return train, heldout


def read_lines(paths: Sequence[str], max_lines: int | None = None) -> list[str]:
    """The non-empty lines of ``paths`` (newlines stripped), at most ``max_lines``."""
    lines: list[str] = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.strip():
                    lines.append(line)
                    if max_lines is not None and len(lines) >= max_lines:
                        return lines
    return lines


# -- Tokenising and packing -----------------------------------------------------------------


def pack(pieces: Sequence[np.ndarray], eos_id: int) -> np.ndarray:
    """The sequences of ``pieces`` end to end, each followed by ``eos_id``: int32 ``[n]``."""
    if not pieces:
        return np.zeros((0,), np.int32)
    eos = np.asarray([eos_id], np.int32)
    return np.concatenate([part for p in pieces for part in (np.asarray(p, np.int32), eos)])


def encode_lines(tokenizer: tok.SentencePieceTokenizer, lines: Sequence[str]) -> np.ndarray:
    """Lines encoded and packed with the end-of-sentence id between them."""
    assert tokenizer.eos_id is not None
    return pack(tokenizer.encode_lines(lines), tokenizer.eos_id)


def check_same_vocab(saved: tok.Tokenizer, new: tok.Tokenizer, where: str) -> None:
    """Raises VocabMismatchError unless ``new`` has exactly the vocabulary of ``saved``."""
    if saved.fingerprint() == new.fingerprint():
        return
    detail = f"{saved.kind} vocabulary of {saved.vocab_size} -> {new.kind} of {new.vocab_size}"
    if isinstance(saved, tok.CharTokenizer) and isinstance(new, tok.CharTokenizer):
        added = sorted(set(new.chars) - set(saved.chars))
        missing = sorted(set(saved.chars) - set(new.chars))
        detail += f"; new characters {''.join(added)!r}, missing {''.join(missing)!r}"
    raise VocabMismatchError(
        f"The vocabulary does not match the one the model in {where} was trained with "
        f"({detail}). A model can only be resumed or sampled with its own vocabulary: use the "
        "same --text_file/--lm1b_dir and --tokenizer/--vocab_size, or a new --output_dir."
    )


def build_tokenizer(kind: str, train_lines: Sequence[str], char_text: str,
                    vocab_size: int) -> tok.Tokenizer:
    """A ``char`` tokenizer of ``char_text`` or a ``sentencepiece`` one of ``train_lines``."""
    if kind == "char":
        return tok.CharTokenizer.from_text(char_text)
    if kind == "sentencepiece":
        return tok.SentencePieceTokenizer.train(train_lines, vocab_size)
    raise TextDataError(f"--tokenizer must be 'char' or 'sentencepiece'; got {kind!r}.")


def resolve_tokenizer(kind: str, vocab_size: int, saved: tok.Tokenizer | None,
                      train_lines: Sequence[str], char_text: str, where: str) -> tok.Tokenizer:
    """The tokenizer to use: the saved one (checked against the flags and data) or a new one.

    A character vocabulary is rebuilt from the text and compared with the saved one, so a
    different text is caught with the characters named. A SentencePiece model is not
    retrained on resume: the saved one is used if the flags ask for the same kind and size.
    """
    if saved is None:
        return build_tokenizer(kind, train_lines, char_text, vocab_size)
    if kind == "char":
        new = tok.CharTokenizer.from_text(char_text)
        check_same_vocab(saved, new, where)
        return saved
    if saved.kind != kind or saved.vocab_size != vocab_size:
        raise VocabMismatchError(
            f"The model in {where} was trained with a {saved.kind} vocabulary of "
            f"{saved.vocab_size}, but the flags ask for --tokenizer={kind} with "
            f"--vocab_size={vocab_size}. Use the same flags to resume, or a new --output_dir."
        )
    return saved


def load_text_dataset(path: str, tokenizer_kind: str = "char", vocab_size: int = 2000,
                      eval_fraction: float = 0.1, saved: tok.Tokenizer | None = None,
                      where: str = "--output_dir") -> Dataset:
    """Reads a plain-text file: the first 90% (by characters) trains, the rest evaluates.

    Args:
      path: a UTF-8 text file.
      tokenizer_kind: ``char`` (one token per character, every character of the file:
        the held-out part is always readable) or ``sentencepiece`` (trained on the
        training part, one sentence per line; newlines become end-of-sentence).
      vocab_size: the SentencePiece vocabulary size (ignored for ``char``).
      eval_fraction: the held-out fraction at the end of the text.
      saved: the tokenizer a run being resumed was trained with, if any.
      where: where ``saved`` came from, for messages.
    """
    text = read_text_file(path)
    train_text, eval_text = split_text(text, eval_fraction)
    train_lines = train_text.split("\n")
    tokenizer = resolve_tokenizer(tokenizer_kind, vocab_size, saved, train_lines, text, where)
    if isinstance(tokenizer, tok.CharTokenizer):
        train, held = tokenizer.encode(train_text), tokenizer.encode(eval_text)
    else:
        assert isinstance(tokenizer, tok.SentencePieceTokenizer)
        train = encode_lines(tokenizer, train_lines)
        held = encode_lines(tokenizer, eval_text.split("\n"))
    return Dataset(tokenizer, train, held, source=path)


def load_lm1b_dataset(lm1b_dir: str, vocab_size: int = 32000,
                      max_train_sentences: int | None = None,
                      max_eval_sentences: int | None = None,
                      spm_sentences: int = 1_000_000, saved: tok.Tokenizer | None = None,
                      where: str = "--output_dir") -> Dataset:
    """LM1b with a SentencePiece vocabulary trained on (a sample of) its training text."""
    train_files, heldout = lm1b_files(lm1b_dir)
    train_lines = read_lines(train_files, max_train_sentences)
    eval_lines = read_lines([heldout], max_eval_sentences)
    if saved is None:
        tokenizer: tok.Tokenizer = tok.SentencePieceTokenizer.train(
            train_lines[:spm_sentences], vocab_size)
    else:
        tokenizer = resolve_tokenizer("sentencepiece", vocab_size, saved, [], "", where)
    assert isinstance(tokenizer, tok.SentencePieceTokenizer)
    return Dataset(tokenizer, encode_lines(tokenizer, train_lines),
                   encode_lines(tokenizer, eval_lines), source=lm1b_dir)


def check_lengths(dataset: Dataset, seq_len: int) -> None:
    """Both splits must hold at least one window of ``seq_len + 1`` tokens."""
    for name, stream in (("training", dataset.train), ("held-out", dataset.eval)):
        if len(stream) < seq_len + 1:
            raise TextDataError(
                f"The {name} part of {dataset.source!r} has {len(stream)} tokens, fewer than "
                f"one window of context+1 = {seq_len + 1}. Use a longer text or a shorter "
                "--context."
            )


# -- Batches ----------------------------------------------------------------------------------


def train_batch(stream: np.ndarray, batch_size: int, seq_len: int, seed: int,
                step: int, rows: slice = slice(None)) -> Batch:
    """Windows at random offsets, drawn from ``(seed, step)`` only.

    ``rows`` picks this process's rows of the global batch (see ``flaxen.distributed``):
    every process draws the same ``batch_size`` offsets and reads only its own windows.

    Returns:
      ``{'inputs', 'targets'}`` int32 ``[batch_size, seq_len]`` (targets are inputs shifted
      by one token) and ``'weights'`` float32 ones of the same shape.
    """
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - seq_len, size=batch_size)[rows]
    windows = stream[starts[:, None] + np.arange(seq_len + 1)]
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:],
            "weights": np.ones((len(starts), seq_len), np.float32)}


def train_batches(stream: np.ndarray, batch_size: int, seq_len: int, seed: int,
                  start_step: int = 0, rows: slice = slice(None)) -> Iterator[Batch]:
    """``train_batch`` for steps ``start_step, start_step + 1, ...``."""
    step = start_step
    while True:
        yield train_batch(stream, batch_size, seq_len, seed, step, rows)
        step += 1


def eval_batches(stream: np.ndarray, batch_size: int, seq_len: int,
                 max_batches: int | None = None, rows: slice = slice(None)) -> Iterator[Batch]:
    """The held-out stream once, in consecutive non-overlapping windows.

    The last batch is padded with rows of weight 0, so every batch has ``batch_size`` rows
    (it divides evenly over the devices) and padding does not count in the loss. ``rows``
    picks this process's rows of each batch: together the processes see every window once.
    """
    n = (len(stream) - 1) // seq_len
    inputs = stream[: n * seq_len].reshape(n, seq_len)
    targets = stream[1 : n * seq_len + 1].reshape(n, seq_len)
    for b, start in enumerate(range(0, n, batch_size)):
        if max_batches is not None and b >= max_batches:
            return
        x, y = inputs[start : start + batch_size], targets[start : start + batch_size]
        w = np.ones(x.shape, np.float32)
        pad = batch_size - len(x)
        if pad:
            x, y, w = (np.concatenate([a, np.zeros((pad, seq_len), a.dtype)]) for a in (x, y, w))
        yield {"inputs": x[rows], "targets": y[rows], "weights": w[rows]}
