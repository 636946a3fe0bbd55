"""Tests of the LM input pipeline and tokenizers on small texts (real Shakespeare included)."""

import os

import numpy as np
import pytest

from examples.lm1b import input_pipeline as ip
from examples.lm1b import tokenizer as tok

_DATA = os.environ.get("FLAXEN_DATA", "")
SHAKESPEARE = os.path.join(_DATA, "tinyshakespeare.txt") if _DATA else ""


def _write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_char_tokenizer_round_trip_and_vocab():
    text = "hello, world!\nab"
    t = tok.CharTokenizer.from_text(text)
    assert t.chars == sorted(set(text))
    ids = t.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    np.testing.assert_array_equal(ids, [t.chars.index(c) for c in text])
    assert t.decode(ids) == text
    again = tok.from_json(t.to_json())
    assert again.fingerprint() == t.fingerprint()
    assert tok.CharTokenizer.from_text("xyz").fingerprint() != t.fingerprint()


def test_char_tokenizer_unknown_character_is_clear():
    t = tok.CharTokenizer.from_text("abc")
    with pytest.raises(tok.TokenizerError, match=r"1 character\(s\).*'z'"):
        t.encode("abz")
    with pytest.raises(tok.TokenizerError, match=r"Token id 7 is outside .*\[0, 3\)"):
        t.decode([0, 7])


def test_sentencepiece_trains_and_round_trips(tmp_path):
    lines = ["the quick brown fox jumps over the lazy dog", "a stitch in time saves nine",
             "all that glitters is not gold", "to be or not to be that is the question"] * 20
    sp = tok.SentencePieceTokenizer.train(lines, vocab_size=40)
    assert sp.vocab_size == 40
    packed = ip.encode_lines(sp, lines[:2])
    assert packed.dtype == np.int32 and int((packed == sp.eos_id).sum()) == 2
    assert sp.decode(packed) == lines[0] + "\n" + lines[1] + "\n"
    path = str(tmp_path / tok.FILE_NAME)
    tok.save(sp, path)
    loaded = tok.load(path)
    assert loaded.fingerprint() == sp.fingerprint()
    np.testing.assert_array_equal(loaded.encode(lines[3]), sp.encode(lines[3]))


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(tok.TokenizerError, match="No tokenizer file"):
        tok.load(str(tmp_path / "missing.json"))
    with pytest.raises(tok.TokenizerError, match="damaged"):
        tok.load(_write(tmp_path, "bad.json", b"{not json"))
    with pytest.raises(tok.TokenizerError, match="Not a tokenizer description"):
        tok.load(_write(tmp_path, "other.json", b'{"kind": "bpe"}'))


def test_pack_puts_eos_after_each_sentence():
    out = ip.pack([np.array([5, 6]), np.array([7]), np.array([], np.int32)], eos_id=1)
    np.testing.assert_array_equal(out, [5, 6, 1, 7, 1, 1])
    assert out.dtype == np.int32


def test_bad_text_files_are_clear_errors(tmp_path):
    with pytest.raises(ip.TextDataError, match="is empty"):
        ip.read_text_file(_write(tmp_path, "empty.txt", b""))
    with pytest.raises(ip.TextDataError, match="is empty"):
        ip.read_text_file(_write(tmp_path, "blank.txt", b"  \n\n "))
    with pytest.raises(ip.TextDataError, match="binary: it has a NUL byte at offset 3"):
        ip.read_text_file(_write(tmp_path, "nul.bin", b"abc\x00def"))
    with pytest.raises(ip.TextDataError, match=r"binary: it is not valid UTF-8 \(byte 0xff"):
        ip.read_text_file(_write(tmp_path, "img.bin", b"ok \xff\xd8\xff\xe0 jpeg"))
    with pytest.raises(ip.TextDataError, match="does not exist"):
        ip.read_text_file(str(tmp_path / "nowhere.txt"))
    with pytest.raises(ip.TextDataError, match="is a directory"):
        ip.read_text_file(str(tmp_path))


def test_text_too_short_for_context(tmp_path):
    ds = ip.load_text_dataset(_write(tmp_path, "short.txt", b"abcdefghij" * 3))
    ip.check_lengths(ds, seq_len=2)
    with pytest.raises(ip.TextDataError, match=r"held-out part .* 3 tokens.*context\+1 = 9"):
        ip.check_lengths(ds, seq_len=8)


def test_split_and_char_dataset(tmp_path):
    text = "".join(chr(97 + i % 26) for i in range(1000))
    ds = ip.load_text_dataset(_write(tmp_path, "t.txt", text.encode()), eval_fraction=0.1)
    assert len(ds.train) == 900 and len(ds.eval) == 100
    assert ds.tokenizer.decode(ds.train) + ds.tokenizer.decode(ds.eval) == text


def test_resume_with_other_characters_is_vocab_mismatch(tmp_path):
    saved = tok.CharTokenizer.from_text("abcdef")
    path = _write(tmp_path, "t.txt", b"abcdefxyz" * 20)
    with pytest.raises(ip.VocabMismatchError, match=r"char vocabulary of 6 -> char of 9; new "
                       r"characters 'xyz'"):
        ip.load_text_dataset(path, saved=saved)
    spm_saved = tok.SentencePieceTokenizer.train(["abc def ghi"] * 50, vocab_size=14)
    with pytest.raises(ip.VocabMismatchError, match="sentencepiece vocabulary of 14.*--tokenizer="
                       "sentencepiece with --vocab_size=30"):
        ip.load_text_dataset(path, "sentencepiece", 30, saved=spm_saved)


def test_train_batches_are_shifted_windows_and_reproducible():
    stream = np.arange(100, dtype=np.int32)
    b = ip.train_batch(stream, batch_size=4, seq_len=8, seed=3, step=5)
    assert b["inputs"].shape == (4, 8) and b["inputs"].dtype == np.int32
    np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["inputs"][:, :-1] + 1)
    again = next(ip.train_batches(stream, 4, 8, seed=3, start_step=5))
    np.testing.assert_array_equal(again["inputs"], b["inputs"])
    other = ip.train_batch(stream, 4, 8, seed=3, step=6)
    assert not np.array_equal(other["inputs"], b["inputs"])
    assert b["inputs"].max() + 1 <= 99  # every target exists


def test_eval_batches_cover_stream_once_with_padding():
    stream = np.arange(1, 43, dtype=np.int32)  # 42 tokens -> 41 targets -> 10 windows of 4
    batches = list(ip.eval_batches(stream, batch_size=4, seq_len=4))
    assert len(batches) == 3
    inputs = np.concatenate([b["inputs"] for b in batches])
    weights = np.concatenate([b["weights"] for b in batches])
    assert weights.sum() == 40 and weights[10:].sum() == 0
    np.testing.assert_array_equal(inputs[:10].ravel(), np.arange(1, 41))
    targets = np.concatenate([b["targets"] for b in batches])
    np.testing.assert_array_equal(targets[:10].ravel(), np.arange(2, 42))
    assert len(list(ip.eval_batches(stream, 4, 4, max_batches=2))) == 2


def test_lm1b_layout_is_read(tmp_path):
    root = tmp_path / ip.LM1B_TOP
    (root / "training-monolingual.tokenized.shuffled").mkdir(parents=True)
    (root / "heldout-monolingual.tokenized.shuffled").mkdir(parents=True)
    words = ["the cat sat on the mat .", "a dog ran in the park .", "it was a sunny day ."]
    for i in (1, 2):
        (root / f"training-monolingual.tokenized.shuffled/news.en-0000{i}-of-00100").write_text(
            "\n".join(words * 20) + "\n")
    (root / ip.LM1B_EVAL_FILE).write_text("the dog sat in the sun .\n")
    ds = ip.load_lm1b_dataset(str(tmp_path), vocab_size=25, max_train_sentences=50)
    assert ds.tokenizer.vocab_size == 25
    assert int((ds.train == 1).sum()) == 50 and int((ds.eval == 1).sum()) == 1
    assert ds.tokenizer.decode(ds.eval) == "the dog sat in the sun .\n"
    with pytest.raises(ip.TextDataError, match="does not hold the LM1b release"):
        ip.lm1b_files(str(tmp_path / "empty"))


@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason="Tiny Shakespeare not found: set "
                    "FLAXEN_DATA to a folder holding tinyshakespeare.txt")
def test_tiny_shakespeare_char_level():
    ds = ip.load_text_dataset(SHAKESPEARE)
    assert ds.tokenizer.vocab_size == 65
    assert len(ds.train) + len(ds.eval) == 1115394
    assert ds.tokenizer.decode(ds.train[:14]) == "First Citizen:"


def test_old_vocabulary_file_name_is_read_with_a_deprecation_warning(tmp_path):
    t = tok.CharTokenizer.from_text("hello")
    tok.save(t, str(tmp_path / tok.OLD_FILE_NAME))
    with pytest.warns(FutureWarning, match="now named vocab.flaxen.json"):
        assert tok.load_from_run(str(tmp_path)).fingerprint() == t.fingerprint()
    other = tok.CharTokenizer.from_text("xyz")
    tok.save(other, str(tmp_path / tok.FILE_NAME))  # the new name wins, without a warning
    assert tok.load_from_run(str(tmp_path)).fingerprint() == other.fingerprint()
    with pytest.raises(tok.TokenizerError, match="No tokenizer file"):
        tok.load_from_run(str(tmp_path / "missing"))
