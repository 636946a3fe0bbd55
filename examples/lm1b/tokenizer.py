"""Tokenizers for the language model: characters, or SentencePiece trained on the text.

Both kinds share one small interface (``vocab_size``, ``encode``, ``decode``, ``eos_id``,
``fingerprint``) and are saved as one JSON file, ``vocab.flaxen.json`` (``FILE_NAME``),
next to the checkpoints, so that ``generate.py`` and ``--resume`` use exactly the
vocabulary the model was trained with. The file is this example's own small format
(``{"kind": "char", "chars": ...}`` or ``{"kind": "sentencepiece", "model": <base64
model proto>}``), not Hugging Face's ``tokenizer.json``; runs written before the rename
used that name, and ``load_from_run`` still reads it, with a deprecation warning.
``fingerprint`` (a SHA-256 of the vocabulary) is stored in the checkpoint too; restoring
with another vocabulary is an error, not silent garbage.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

from flaxen.errors import FlaxenError

FILE_NAME = "vocab.flaxen.json"
OLD_FILE_NAME = "tokenizer.json"  # before the rename: looked like Hugging Face's format


class TokenizerError(FlaxenError):
    """A tokenizer cannot encode some text, or its file is missing or damaged."""


class Tokenizer(Protocol):
    """What the training and sampling code needs from a tokenizer."""

    kind: str
    vocab_size: int
    eos_id: int | None

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def fingerprint(self) -> str: ...

    def to_json(self) -> dict: ...


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters seen.

    There are no special tokens, so ``vocab_size`` is the number of distinct characters
    (65 for Tiny Shakespeare) and the loss is in nats per character.
    """

    kind = "char"
    eos_id: int | None = None

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise TokenizerError("A character vocabulary needs at least one character; got none.")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TokenizerError("A character vocabulary must be distinct single characters.")
        self.chars = chars
        self.vocab_size = len(chars)
        self._index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The vocabulary of every distinct character of ``text``, sorted."""
        return cls(sorted(set(text)))

    def encode(self, text: str) -> np.ndarray:
        """``text`` as an int32 array of shape ``[len(text)]``.

        Raises:
          TokenizerError: ``text`` has characters outside the vocabulary (names them).
        """
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int32, count=len(text))
        except KeyError:
            unknown = sorted(set(text) - set(self._index))
            raise TokenizerError(
                f"The text has {len(unknown)} character(s) that are not in the model's "
                f"vocabulary of {self.vocab_size}: {''.join(unknown[:20])!r}. A character-level "
                "model can only read characters it was trained on; remove them (for a prompt) "
                "or train on a text that contains them."
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """The characters of ``ids`` (ids out of range raise TokenizerError)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(
                    f"Token id {i} is outside the vocabulary [0, {self.vocab_size}).")
            out.append(self.chars[i])
        return "".join(out)

    def fingerprint(self) -> str:
        return hashlib.sha256(("char:" + "".join(self.chars)).encode("utf-8")).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}


class SentencePieceTokenizer:
    """A SentencePiece model (unigram by default); ids: 0 pad, 1 end of sentence, 2 unknown."""

    kind = "sentencepiece"
    pad_id = 0
    eos_id: int | None = 1

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on bad bytes
            raise TokenizerError(f"Cannot load the SentencePiece model: {e}") from e
        self.vocab_size = int(self._sp.GetPieceSize())

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int, model_type: str = "unigram",
              max_sentences: int = 1_000_000) -> SentencePieceTokenizer:
        """Trains a SentencePiece model on ``sentences`` (one string per sentence/line).

        Args:
          sentences: training text, one sentence (or line) per item.
          vocab_size: the number of pieces, including pad, eos and unk.
          model_type: ``unigram`` or ``bpe`` (``char``/``word`` also work).
          max_sentences: at most this many sentences are sampled for training.
        """
        import io

        import sentencepiece as spm

        lines = [s for s in sentences if s.strip()]
        if not lines:
            raise TokenizerError("SentencePiece needs non-empty training text; got none.")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                model_type=model_type, character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2,
                bos_id=-1, input_sentence_size=max_sentences, shuffle_input_sentence=True,
                max_sentence_length=1 << 16, minloglevel=2,
            )
        except RuntimeError as e:
            raise TokenizerError(
                f"SentencePiece could not train a vocabulary of --vocab_size={vocab_size} on "
                f"this text: {e}. Choose a --vocab_size in the range it names (a small text "
                "supports only a small vocabulary), or use --tokenizer=char."
            ) from e
        return cls(model.getvalue())

    def encode(self, text: str) -> np.ndarray:
        """``text`` as an int32 array of piece ids, shape ``[num_pieces]``."""
        return np.asarray(self._sp.EncodeAsIds(text), dtype=np.int32)

    def encode_lines(self, lines: Sequence[str]) -> list[np.ndarray]:
        """Each line encoded (one call into SentencePiece for the whole list)."""
        return [np.asarray(ids, dtype=np.int32) for ids in self._sp.EncodeAsIds(list(lines))]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TokenizerError(
                f"Token id {bad[0]} is outside the vocabulary [0, {self.vocab_size}).")
        # The end-of-sentence id separates packed sentences: show it as a line break.
        segments: list[list[int]] = [[]]
        for i in ids:
            if i == self.eos_id:
                segments.append([])
            elif i != self.pad_id:
                segments[-1].append(i)
        return "\n".join(self._sp.DecodeIds(s) for s in segments)

    def fingerprint(self) -> str:
        return hashlib.sha256(b"spm:" + self.model_proto).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"kind": self.kind, "model": base64.b64encode(self.model_proto).decode("ascii")}


def from_json(data: dict) -> Tokenizer:
    """The tokenizer that ``tokenizer.to_json()`` describes."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == "char" and isinstance(data.get("chars"), str):
        return CharTokenizer(list(data["chars"]))
    if kind == "sentencepiece" and isinstance(data.get("model"), str):
        return SentencePieceTokenizer(base64.b64decode(data["model"]))
    got = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise TokenizerError("Not a tokenizer description (expected kind 'char' or 'sentencepiece' "
                         f"with its vocabulary); got {got}.")


def save(tokenizer: Tokenizer, path: str) -> None:
    """Writes ``tokenizer`` as JSON to ``path`` atomically (temporary file, then rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tokenizer.to_json(), f)
    os.replace(tmp, path)


def load(path: str) -> Tokenizer:
    """Reads a tokenizer written by ``save``.

    Raises:
      TokenizerError: the file is missing, not JSON, or not a tokenizer description.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise TokenizerError(f"No tokenizer file at {path!r}; it is written by train.py into "
                             "--output_dir. Point --output_dir at a training run.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"The tokenizer file {path!r} is damaged (not JSON): {e}") from e
    return from_json(data)


def run_file(run_dir: str) -> str:
    """The tokenizer file of the run in ``run_dir``: ``vocab.flaxen.json``, or, for a run
    written before the rename that holds only ``tokenizer.json``, that file (with a
    ``FutureWarning``: the next save writes the new name)."""
    path = os.path.join(run_dir, FILE_NAME)
    old = os.path.join(run_dir, OLD_FILE_NAME)
    if not os.path.exists(path) and os.path.exists(old):
        warnings.warn(
            f"{old}: the vocabulary file is now named {FILE_NAME} (it is flaxen's own format, "
            f"not Hugging Face's tokenizer.json). Reading the old name; rename the file, or "
            "resume the run once, which writes the new name.", FutureWarning, stacklevel=2)
        return old
    return path


def load_from_run(run_dir: str) -> Tokenizer:
    """The tokenizer saved by train.py in ``run_dir`` (see ``run_file``)."""
    return load(run_file(run_dir))
