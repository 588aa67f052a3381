"""
Tests of afd-mini's tokenizer (data/tokenizer.py, data/train_tokenizer.py, data/afd.tiktoken).
"""

import random

import pytest

import data.tokenizer as tokenizer
from data.tokenizer import EOR, load_ranks, load_tokenizer, make_encoding, train_bpe


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def random_text(rng, n):
    """Random text mixing ASCII, accents, combining marks, CJK, emoji (outside the BMP), control
    characters and whitespace runs, and the special token's spelling."""
    ranges = [(0x20, 0x7E), (0x00, 0x1F), (0xC0, 0x17F), (0x300, 0x36F), (0x4E00, 0x4E80), (0x1F600, 0x1F64F),
              (0x2000, 0x200B), (0xFFF0, 0xFFFD)]
    pieces = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            pieces.append(EOR)
        elif r < 0.2:
            pieces.append(rng.choice([" ", "  ", "\n", "\t", " \n "]))
        else:
            lo, hi = rng.choice(ranges)
            pieces.append(chr(rng.randint(lo, hi)))
    return "".join(pieces)


def test_round_trips_any_utf8(tok):
    rng = random.Random(0)
    for _ in range(300):
        text = random_text(rng, rng.randint(0, 40))
        assert tok.decode(tok.encode_ordinary(text)) == text
    world_text = "certainly! 7+8=15, 3+4+1=8. so the answer is 85."
    assert tok.decode(tok.encode_ordinary(world_text)) == world_text


def test_special_token_never_comes_from_plain_text(tok):
    eor = tok.encode_single_token(EOR)
    text = f"reverse AB{EOR}\nthe answer is BA.{EOR}"
    assert eor not in tok.encode_ordinary(text)
    assert eor not in tok.encode(text, disallowed_special=())
    with pytest.raises(ValueError):  # the default refuses text that spells a special token
        tok.encode(text)
    assert tok.encode(EOR, allowed_special={EOR}) == [eor]  # only when asked for explicitly


def test_vocabulary_is_small_and_ranks_are_in_training_order(tok):
    ranks = load_ranks()
    assert 256 < tok.n_vocab <= 512
    assert tok.encode_single_token(EOR) == tok.n_vocab - 1 == len(ranks)
    assert sorted(ranks.values()) == list(range(len(ranks)))
    assert all(ranks[bytes([b])] == b for b in range(256))
    by_rank = {r: t for t, r in ranks.items()}
    for r in range(256, len(ranks)):  # each merge joins two tokens that existed before it
        token = by_rank[r]
        assert any(ranks.get(token[:i], r) < r and ranks.get(token[i:], r) < r for i in range(1, len(token)))


def test_capitals_and_digits_are_always_single_tokens(tok):
    # answers are capitals or digits: one token per character, whatever surrounds them
    rng = random.Random(1)
    for _ in range(200):
        payload = "".join(rng.choice("ABCDEF0123456789") for _ in range(rng.randint(1, 6)))
        for text in (payload, f"the answer is {payload}.", f"certainly! {payload}", f"reverse {payload}\n"):
            pieces = [tok.decode_single_token_bytes(t) for t in tok.encode_ordinary(text)]
            assert all(len(p) == 1 for p in pieces if any(c in b"ABCDEF0123456789" for c in p)), pieces
    assert len(tok.encode_ordinary(" answer")) == 1 and len(tok.encode_ordinary("certainly")) == 1


def test_bpe_training_by_hand():
    # pieces: "ab" x1, " ab" x2, "abc" x1 -> pair counts (a,b) 4, (" ",a) 2, (b,c) 1: merge "ab" first;
    # then (" ",ab) 2, (ab,c) 1: merge " ab"; then (ab,c) 1: merge "abc"; then nothing is left.
    ranks = train_bpe(["ab ab ab", "abc"], n_merges=10)
    merges = {t: r for t, r in ranks.items() if r >= 256}
    assert merges == {b"ab": 256, b" ab": 257, b"abc": 258}
    # ties go to the smallest pair of byte strings: (b"x", b"y") before (b"y", b"z")
    assert {t for t, r in train_bpe(["xy", "yz"], n_merges=1).items() if r >= 256} == {b"xy"}
    enc = make_encoding(ranks, name="toy")
    assert enc.encode_ordinary("ab abc") == [256, 257, ord("c")]  # " abc" is " ab" + "c": ranks decide


def test_committed_ranks_equal_a_fresh_training_run():
    from data.train_tokenizer import train_ranks

    assert train_ranks() == load_ranks()


def test_loading_never_trains(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_tokenizer trained")

    monkeypatch.setattr(tokenizer, "train_bpe", refuse)
    assert load_tokenizer.__wrapped__().n_vocab == load_tokenizer().n_vocab
