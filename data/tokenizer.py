"""
afd-mini's tokenizer: a small byte-level BPE trained on the synthetic world's own text.

Why our own and not GPT-2's? A 50k vocabulary would make the embedding table of a ~1M-parameter
model larger than the model, and tiktoken's named encodings download on first use. A few hundred
tokens (the 256 bytes + the merges our text needs) keep the model small and everything offline.

How it is used. `load_tokenizer()` builds a `tiktoken.Encoding` from the committed ranks file
data/afd.tiktoken (tiktoken's format: one "base64(token bytes) rank" per line). Loading never
trains. `python -m data.train_tokenizer` retrains and rewrites that file, deterministically; a
test checks that the committed file equals a fresh training run.

How it is trained (`train_bpe`), the textbook byte-level BPE:
  1. pre-split the text with the regex PAT_STR (tiktoken splits with the same one, and BPE never
     merges across the pieces it makes), and count each distinct piece;
  2. start from the 256 single bytes, ranks 0..255;
  3. count adjacent token pairs over all pieces (weighted by piece counts), merge the most frequent
     pair into a new token with the next rank, repeat.
tiktoken encodes by repeatedly merging the adjacent pair whose concatenation has the lowest rank,
which replays our merges in training order: that is why ranks must be training order.

The pre-split regex is where the world's tokenization is designed:
  [A-Z] | [0-9]         every capital letter and digit is a piece of its own, so the answers and
                        payloads (all capitals or digits: "reverse BDAC", "add 37+48") are always
                        one token per character, whatever their context: copying, reversing and
                        adding are then token-level operations a small model can learn.
  ' ?[a-z]+'            lower-case words with their leading space (" answer"): the template text
                        merges into whole-word tokens.
  ' ?[^\\sA-Za-z0-9]+'   runs of anything else (punctuation, non-ASCII), with a leading space.
  '\\s+(?!\\S)|\\s+'      whitespace, as in GPT-2.
The alternatives cover every character, so every string is split without gaps and, since every
byte is a token, encoding round-trips any UTF-8 text exactly.

One special token, <|eor|> (end of response), takes the id after the last rank. It never arises
from plain text: `encode_ordinary` treats the string "<|eor|>" as ordinary characters, and
`encode` refuses text containing it unless told otherwise.
"""

import base64
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import tiktoken

EOR = "<|eor|>"
PAT_STR = r"[A-Z]|[0-9]| ?[a-z]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+"
RANKS_PATH = Path(__file__).with_name("afd.tiktoken")


def train_bpe(texts, n_merges):
    """Byte-level BPE: returns {token bytes: rank}, the 256 bytes first, then merges in order.

    Ties between equally frequent pairs go to the smallest pair of byte strings, so training is
    deterministic. Stops early if no pair is left to merge."""
    counts = Counter(piece for text in texts for piece in re.findall(PAT_STR, text))
    words = [[bytes([b]) for b in piece.encode("utf-8")] for piece in counts]
    freqs = list(counts.values())
    ranks = {bytes([b]): b for b in range(256)}
    for _ in range(n_merges):
        pairs = Counter()
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        ranks.setdefault(best[0] + best[1], len(ranks))
        words = [_merge(word, best) for word in words]
    return ranks


def _merge(word, pair):
    """Replace every occurrence of the adjacent `pair` in `word` (a list of bytes) by its concatenation."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def save_ranks(ranks, path=RANKS_PATH):
    in_rank_order = sorted(ranks.items(), key=lambda kv: kv[1])
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}" for token, rank in in_rank_order]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def load_ranks(path=RANKS_PATH):
    ranks = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return ranks


def make_encoding(ranks, name="afd"):
    """A tiktoken.Encoding over `ranks` with <|eor|> as the id after the last rank."""
    return tiktoken.Encoding(name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={EOR: len(ranks)})


@lru_cache(maxsize=None)
def load_tokenizer(path=RANKS_PATH):
    """afd-mini's tokenizer, from the committed ranks file (offline, a few milliseconds, cached)."""
    return make_encoding(load_ranks(path))


def byte_level_tokenizer():
    """The tokenizer before any merge (one token per byte): what the world runs on while it writes
    the text the real tokenizer is trained on."""
    return make_encoding({bytes([b]): b for b in range(256)}, name="afd-bytes")
