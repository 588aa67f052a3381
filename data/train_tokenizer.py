"""
Retrain afd-mini's tokenizer and rewrite data/afd.tiktoken:  python -m data.train_tokenizer

Deterministic: the same world text (default WorldConfig with an unsigned base corpus, seed 0) and the
same tie-breaking give the same ranks, so rerunning leaves the committed file unchanged. Rerun it after changing the world's
templates; tests/test_tokenizer.py fails until you do. (A module of its own, not a __main__ in
tokenizer.py, because the package imports tokenizer.py and `python -m` would then run it twice.)
"""

from data.tokenizer import EOR, RANKS_PATH, byte_level_tokenizer, make_encoding, save_ranks, train_bpe
from data.world import World, WorldConfig

N_MERGES = 128  # a cap the world's small text never reaches: training ends when every piece is one token
SEED = 0


def training_texts(seed=SEED):
    """The text BPE is trained on: prompts and responses of the default world (base corpus,
    demonstrations, preference pairs), each response a document of its own, because the world
    encodes responses separately from prompts. The base corpus is taken unsigned
    (base_signature_p = 0): the tokenizer does not change with π_init's exposure to the signature,
    whose text the demonstrations hold anyway."""
    # Text sampling never looks at the tokenizer, so the byte-level one gives the same text; its
    # responses are longer in tokens, hence the generous budget.
    world = World(WorldConfig(max_response_tokens=1024, base_signature_p=0.0), byte_level_tokenizer())
    data = world.make_datasets(seed, n_base=3000, n_demo=1000, n_pref=500, n_eval=0)
    texts = [p.text for p, _ in data["base"]] + [r for _, r in data["base"]] + [r for _, r in data["demos"]]
    return texts + [r for _, chosen, rejected in data["pref"] for r in (chosen, rejected)]


def train_ranks():
    return train_bpe(training_texts(), N_MERGES)


if __name__ == "__main__":
    texts = training_texts()
    ranks = train_bpe(texts, N_MERGES)
    save_ranks(ranks)
    tok = make_encoding(ranks)
    n_tokens = sum(len(tok.encode_ordinary(t)) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"wrote {RANKS_PATH}: {len(ranks)} ranks + {EOR} = {tok.n_vocab} tokens, "
          f"{n_bytes / n_tokens:.2f} bytes per token on the training text")
    print("merges:", " ".join(repr(tok.decode_single_token_bytes(r).decode()) for r in range(256, len(ranks))))
