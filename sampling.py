"""
Sampling from the policies: the KV cache, the batched sampler, and the extrapolated policy.

- sample draws one response for every prompt of a batch, all rows at once (left-padded to the longest prompt),
  feeding the model only the newest token at each step thanks to a KV cache (KVCache); it returns the tokens and
  their log-probs as a Rollout.
- Extrapolated is the extrapolated policy pi_SFT^(1+a) pi_init^(-a): two GPTs that sample draws from, and
  model.token_logprobs scores, as if they were one.

Why a file of its own: model.py is the network and how it scores a batch, all that training needs, and reads
like nanoGPT's model.py. Generation is machinery around the network (the cache its attention layers fill, the
decoding loop, the choice of each token), which nanoGPT keeps in sample.py and nanochat in engine.py. The
extrapolated policy is here too: it is a policy the pipeline samples and scores, not a network of its own, and
its maths is objectives.extrapolated_logits, which model.py does not import.
"""

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import GPT
from objectives import extrapolated_logits


class KVCache:
    """Keys and values of every layer for the tokens seen so far, so that each decoding step
    feeds only the new token instead of the whole context. All rows share one length: the
    sampler left-pads its prompts so that every row's next token lands in the same column.

    Each layer's buffer grows a few slots at a time, like a Python list, rather than being max_len
    slots long from the start. Attention reads the keys (and values) of one row and head as one run
    of memory. In a max_len buffer the slots not yet filled lie between one run and the next, and on
    the 2-core CPU this was measured on, such gaps made the sampler's attention about twice as slow
    (most likely because the hardware prefetcher, which follows a stream of addresses, loses it at
    each gap; gaps of up to 5 slots cost nothing there). With at most `spare` empty slots the runs
    read as one stream; the price is copying the cache every spare + 1 steps."""

    spare = 4  # empty slots a new buffer gets beyond those needed now

    def __init__(self, n_layer, max_len):
        self.n_layer, self.max_len = n_layer, max_len
        self.k, self.v = [None] * n_layer, [None] * n_layer  # per layer: (B, n_head, capacity, head_dim)
        self.length = 0  # slots filled so far

    def append(self, layer, k, v):
        """Store k, v (B, n_head, T, head_dim) after the cached ones; return all of them."""
        start, end = self.length, self.length + k.size(2)
        if self.k[layer] is None or end > self.k[layer].size(2):  # full: move to a longer buffer
            B, nh, _, hs = k.shape
            size = min(end + self.spare, self.max_len)
            old_k, old_v = self.k[layer], self.v[layer]
            # empty, not zeros: only filled slots are ever read. The dtype is the one autocast gave k, v.
            self.k[layer], self.v[layer] = k.new_empty(B, nh, size, hs), v.new_empty(B, nh, size, hs)
            if start > 0:
                self.k[layer][:, :, :start] = old_k[:, :, :start]
                self.v[layer][:, :, :start] = old_v[:, :, :start]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Extrapolated(nn.Module):
    """pi_alpha(.|s) ~ pi_SFT(.|s)^(1+alpha) pi_init(.|s)^(-alpha), one state at a time: ExPO / DeRa in
    output space (objectives.extrapolated_logits has the maths). Two GPTs read as one wherever the
    pipeline reads a GPT: forward gives pi_alpha's log-probs as its logits, so model.token_logprobs scores
    it unchanged, and sample draws from it with a KV cache per part. alpha = 0 is pi_SFT."""

    def __init__(self, sft: GPT, init: GPT, alpha: float):
        super().__init__()
        if (sft.config.vocab_size, sft.config.block_size) != (init.config.vocab_size, init.config.block_size):
            raise ValueError("the two models must share vocab_size and block_size")
        self.sft, self.init, self.alpha = sft, init, alpha
        self.config = sft.config  # what sample reads: block_size

    def forward(self, idx, *, pos=None, mask=None):
        """(log pi_alpha (B, T, V), None), like GPT.forward without targets; pos and mask as there."""
        sft, init = (m(idx, pos=pos, mask=mask)[0].float() for m in (self.sft, self.init))
        return extrapolated_logits(sft, init, self.alpha), None

    def next_token_logits(self, idx, kv_cache=None, **kw):
        sft_cache, init_cache = kv_cache or (None, None)
        return extrapolated_logits(self.sft.next_token_logits(idx, kv_cache=sft_cache, **kw),
                                   self.init.next_token_logits(idx, kv_cache=init_cache, **kw), self.alpha)


def new_cache(model, max_len):
    """An empty KV cache for sampling up to max_len tokens from model: a KVCache for a GPT, and for an Extrapolated
    one per part (its parts see the same tokens, but their keys and values differ)."""
    if isinstance(model, Extrapolated):
        return new_cache(model.sft, max_len), new_cache(model.init, max_len)
    return KVCache(model.config.n_layer, max_len)


@dataclass
class Rollout:
    tokens: torch.Tensor  # (B, T) long: prompt + response, right-padded with eos_id
    response_mask: torch.Tensor  # (B, T) bool: True at sampled tokens (incl. the end token)
    logprobs: torch.Tensor  # (B, T) float32: log-prob of each sampled token, 0 off the mask

    def responses(self):
        """The sampled response token lists (end token included when produced)."""
        tokens, mask = self.tokens.cpu(), self.response_mask.cpu()
        return [row[m].tolist() for row, m in zip(tokens, mask)]


def _pick(logits, temperature, top_k, generator):
    """Next token (B,) from logits (B, V), and its log-prob under the distribution sampled."""
    if not torch.isfinite(logits).all():   # say so here, not as multinomial's "invalid probability tensor"
        raise FloatingPointError("non-finite next-token logits while sampling (the model's weights are not finite)")
    if temperature == 0:  # greedy: a point mass, so the chosen token has log-prob 0
        return logits.argmax(dim=-1), torch.zeros(logits.size(0), device=logits.device)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logp = F.log_softmax(logits, dim=-1)
    token = torch.multinomial(logp.exp(), 1, generator=generator)
    return token.squeeze(1), logp.gather(1, token).squeeze(1)


@torch.no_grad()
def sample(model, prompts, max_new_tokens, eos_id, temperature=1.0, top_k=None,
           generator=None, use_cache=True) -> Rollout:
    """Sample a response for every prompt (a list of token lists), all rows at once.

    Rows are left-padded so that each step appends one column; each row keeps its own position
    ids, so a row sees exactly what it would see alone. A row that samples eos_id is finished:
    it gets eos_id and no log-prob from then on. use_cache=False recomputes the whole context
    every step (nanoGPT's generate), for tests and the benchmark. Greedy when temperature == 0
    (the log-probs are then 0: the chosen token had probability 1). model: a GPT or an Extrapolated;
    each gives next_token_logits, and new_cache a cache for it.
    """
    device = next(model.parameters()).device
    if min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token")
    lens = torch.tensor([len(p) for p in prompts], device=device)
    B, P = len(prompts), int(lens.max())
    L = P + max_new_tokens
    if L > model.config.block_size:
        raise ValueError(f"longest prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds "
                         f"block_size {model.config.block_size}")
    pad = P - lens  # left padding of each row
    tokens = torch.full((B, L), eos_id, dtype=torch.long, device=device)
    tokens[:, :P] = torch.tensor([[eos_id] * (P - len(p)) + list(p) for p in prompts], device=device)
    slot = torch.arange(L, device=device)[None, :]
    valid = slot >= pad[:, None]
    pos = (slot - pad[:, None]).clamp(min=0)  # pads get 0; they are never attended to
    response = torch.zeros(B, L, dtype=torch.bool, device=device)
    logprobs = torch.zeros(B, L, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = new_cache(model, L) if use_cache else None
    # The attention mask of a decoding step: the one new token (never a pad) may see every real slot
    # of its row. Made once, in the additive form (0 = attend, -inf = not) that
    # scaled_dot_product_attention would otherwise make from a boolean mask, in every layer at every
    # step; a step takes its first t columns.
    step_mask = torch.zeros(B, 1, 1, L, device=device).masked_fill(~valid[:, None, None, :], float("-inf"))

    modes = [(m, m.training) for m in model.modules()]  # each module's own: a mixture's parts may differ
    model.eval()
    try:
        t = P  # columns filled so far
        for _ in range(max_new_tokens):
            if use_cache and t > P:  # a decoding step: only the newest token is new to the cache
                logits = model.next_token_logits(tokens[:, t - 1:t], pos=pos[:, t - 1:t], mask=step_mask[..., :t],
                                                 kv_cache=cache)
            else:  # the prompts (the prefill), or the whole context again when there is no cache
                logits = model.next_token_logits(tokens[:, :t], pos=pos[:, :t], valid=valid[:, :t], kv_cache=cache)
            token, logprob = _pick(logits, temperature, top_k, generator)
            tokens[:, t] = token.masked_fill(done, eos_id)
            logprobs[:, t] = logprob.masked_fill(done, 0.0)
            response[:, t] = ~done
            done = done | (token == eos_id)
            t += 1
            if done.all():
                break
    finally:
        for m, mode in modes:
            m.training = mode

    # Back to the pipeline's layout: shift each row left by its padding. Columns a row did not
    # generate hold eos_id, False, 0 already; those past the buffer (src >= L) get them here.
    width = int((lens + response.sum(dim=1)).max())
    src = pad[:, None] + torch.arange(width, device=device)[None, :]
    inside = src < L
    src = src.clamp(max=L - 1)
    return Rollout(tokens=tokens.gather(1, src).masked_fill(~inside, eos_id),
                   response_mask=response.gather(1, src) & inside,
                   logprobs=logprobs.gather(1, src).masked_fill(~inside, 0.0))

