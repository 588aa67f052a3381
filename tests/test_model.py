"""Tests for model.py on a tiny CPU model. Each check compares against an independent
computation (a plain forward pass of one unpadded row, a manual log_softmax gather), so a
wrong shift, a leaked pad or a packed row that sees another row makes it fail.

The tiny model and the batches here are also those of tests/test_sampling.py (sampling.py: the KV
cache, the sampler, the extrapolated policy)."""

import os

import pytest
import torch
import torch.nn.functional as F

from model import (IGNORE_INDEX, GPT, GPTConfig, ScalarGPT, get_device, load_checkpoint, pack, save_checkpoint,
                   sequence_scores, token_logprobs, token_scores)

EOS = 0
PROMPTS = [[5, 9, 3], [7, 1, 2, 8, 4, 6, 11], [12, 13, 14, 15, 16]]  # different lengths on purpose


def tiny_config(**kw):
    return GPTConfig(**{**dict(block_size=32, vocab_size=37, n_layer=2, n_head=2, n_embd=16), **kw})


def _spread_weights(model, std=0.3, seed=0):
    # GPT-2 init gives near-uniform logits; larger weights make every token and position matter,
    # so a mistake in the cache or the masks shows, and greedy has no near-ties.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return _spread_weights(GPT(tiny_config())).eval()


def full_logits(model, row):
    """Logits of one unpadded row, by a plain forward pass."""
    return model(torch.tensor([row]))[0][0]


def right_padded(rows, n_prompt, pad):
    """tokens and response_mask for rows = prompt + response, right-padded with pad."""
    T = max(map(len, rows))
    tokens = torch.tensor([r + [pad] * (T - len(r)) for r in rows])
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for b, (r, n) in enumerate(zip(rows, n_prompt)):
        mask[b, n:len(r)] = True
    return tokens, mask


def test_shapes_and_masked_loss(model):
    idx = torch.randint(0, 37, (3, 10))
    targets = torch.randint(0, 37, (3, 10))
    targets[:, :4] = IGNORE_INDEX  # the "prompt"
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 10, 37) and loss.shape == ()
    logp = F.log_softmax(logits[:, 4:], dim=-1).gather(-1, targets[:, 4:, None])
    torch.testing.assert_close(loss, -logp.mean())
    assert model(idx)[1] is None
    # decay exactly the >= 2-D parameters; the tied embedding counted once
    groups = model.configure_optimizer(0.1, 1e-3).param_groups
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    assert sum(p.numel() for g in groups for p in g["params"]) == model.num_params()


def test_causality(model):
    idx = torch.randint(1, 37, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (idx[:, 7] + 1) % 37  # change token t+1 = 7
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 7], b[:, 7])


def test_token_logprobs_matches_per_row_cross_entropy(model):
    rows = [p + [20, 21, 22][:k] for p, k in zip(PROMPTS, [3, 1, 2])]
    tokens, mask = right_padded(rows, list(map(len, PROMPTS)), pad=EOS)
    out = token_logprobs(model, tokens, mask)
    for b, r in enumerate(rows):
        n = len(PROMPTS[b])
        ce = F.cross_entropy(full_logits(model, r)[:-1], torch.tensor(r[1:]), reduction="none")
        torch.testing.assert_close(out[b, n:len(r)], -ce[n - 1:], atol=1e-5, rtol=0)
    assert (out[~mask] == 0).all()
    out.sum().backward()  # differentiable
    assert model.lm_head.weight.grad is not None


def rows_that_share_packed_rows():
    """A batch whose rows the packing puts several to a row, with junk (not the pad value) after
    each row's response and one row without a response: (rows, (prompt, response) lengths,
    tokens, mask)."""
    g = torch.Generator().manual_seed(1)
    lengths = [(2, 1), (1, 2), (9, 6), (3, 2), (1, 1), (4, 9), (2, 3), (2, 0)]   # (prompt, response)
    rows = [torch.randint(1, 37, (p + r,), generator=g).tolist() for p, r in lengths]
    tokens = torch.randint(1, 37, (len(rows), max(map(len, rows)) + 2), generator=g)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for b, (r, (p, k)) in enumerate(zip(rows, lengths)):
        tokens[b, :len(r)] = torch.tensor(r)
        mask[b, p:p + k] = True
    where, _ = pack([p + k - 1 if k else 0 for p, k in lengths])
    assert len({r for r, _ in where}) < len(rows) - 2   # several rows share packed rows: the tests can fail
    return rows, lengths, tokens, mask


def test_token_logprobs_of_rows_that_share_a_packed_row(model):
    """token_logprobs packs several short rows into one: a token that saw another row's tokens, or its
    own at another position, gets another log-prob than the row alone gives. Tokens after the
    response must not matter, and a row with no response gets zeros."""
    rows, lengths, tokens, mask = rows_that_share_packed_rows()
    out = token_logprobs(model, tokens, mask)
    for b, (r, (p, k)) in enumerate(zip(rows, lengths)):
        if k:
            ce = F.cross_entropy(full_logits(model, r)[:-1], torch.tensor(r[1:]), reduction="none")
            torch.testing.assert_close(out[b, p:p + k], -ce[p - 1:], atol=1e-5, rtol=0)
    assert (out[~mask] == 0).all()
    assert (token_logprobs(model, tokens, torch.zeros_like(mask)) == 0).all()


def test_scalar_scores_of_rows_that_share_a_packed_row():
    torch.manual_seed(0)
    rm = _spread_weights(ScalarGPT(tiny_config()))
    rows, lengths, tokens, mask = rows_that_share_packed_rows()
    seq, tok = sequence_scores(rm, tokens, mask), token_scores(rm, tokens, mask)
    for b, (r, (p, k)) in enumerate(zip(rows, lengths)):
        alone = rm(torch.tensor([r]))[0]
        if k:
            torch.testing.assert_close(seq[b], alone[-1], atol=1e-5, rtol=0)
            torch.testing.assert_close(tok[b, p:p + k], alone[p:], atol=1e-5, rtol=0)
    assert (tok[~mask] == 0).all()


@pytest.mark.parametrize("lengths, rows", [([5, 1, 4, 2, 3, 3, 5], 5), ([1] * 7, 7), ([6], 1), ([3, 0, 2], 2),
                                           ([2, 7, 7, 1, 6, 3, 3, 4], 5)])   # rows: by hand, first fit decreasing
def test_pack_places_every_sequence_without_overlap(lengths, rows):
    where, width = pack(lengths)
    assert width == max(lengths)
    taken = set()
    for (r, o), n in zip(where, lengths):
        slots = {(r, o + i) for i in range(n)}
        assert o >= 0 and o + n <= width and not taken & slots
        taken |= slots
    assert {r for (r, _), n in zip(where, lengths) if n} == set(range(rows))


def test_scalar_scores_read_last_response_token():
    torch.manual_seed(0)
    rm = _spread_weights(ScalarGPT(tiny_config()))
    rows = [p + [20, 21, 22][:k] for p, k in zip(PROMPTS, [3, 1, 2])]
    tokens, mask = right_padded(rows, list(map(len, PROMPTS)), pad=30)  # a pad unlike the response
    seq, tok = sequence_scores(rm, tokens, mask), token_scores(rm, tokens, mask)
    assert seq.shape == (3,) and tok.shape == tokens.shape and seq.dtype == torch.float32
    for b, r in enumerate(rows):
        alone = rm(torch.tensor([r]))[0]  # the unpadded row: position t has seen r[:t+1]
        torch.testing.assert_close(seq[b], alone[-1], atol=1e-5, rtol=0)
        torch.testing.assert_close(tok[b, len(PROMPTS[b]):len(r)], alone[len(PROMPTS[b]):], atol=1e-5, rtol=0)
    assert (tok[~mask] == 0).all()
    assert not torch.allclose(seq, rm(tokens)[:, -1])  # the last column would be a pad for two rows


def test_scalar_from_lm_copies_backbone(model):
    rm = ScalarGPT.from_lm(model)
    idx = torch.randint(0, 37, (2, 9))
    torch.testing.assert_close(rm.gpt.hidden(idx), model.hidden(idx))
    assert (rm(idx) == 0).all()  # fresh zero head
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    assert not torch.allclose(rm.gpt.hidden(idx), model.hidden(idx))  # a copy, not shared


def test_checkpoint_roundtrip(model, tmp_path):
    idx = torch.randint(0, 37, (2, 9))
    path = str(tmp_path / "ckpt" / "policy.pt")
    save_checkpoint(path, model, step=7)
    loaded, extra = load_checkpoint(path)
    assert isinstance(loaded, GPT) and extra == {"step": 7}
    torch.testing.assert_close(loaded(idx)[0], model(idx)[0])
    assert os.listdir(tmp_path / "ckpt") == ["policy.pt"]  # no temporary file left behind
    rm = ScalarGPT.from_lm(model)
    save_checkpoint(path, rm)
    loaded, _ = load_checkpoint(path)
    assert isinstance(loaded, ScalarGPT)
    torch.testing.assert_close(loaded(idx), rm(idx))


def test_device_and_length_errors(model):
    assert get_device("cpu") == torch.device("cpu")
    assert get_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="'tpu'"):
        get_device("tpu")
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 33, dtype=torch.long))
