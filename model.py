"""
The language model of afd-mini, and how the pipeline scores a batch with it.

- GPT is the policy pi_theta: a GPT-2-style decoder-only transformer. forward() gives the
  next-token logits and, with targets, their mean cross-entropy, as nanoGPT's does. (The
  pipeline's maximum likelihood, pretraining's and SFT's, is objectives.sft_loss on
  token_logprobs, which masks the prompt.)
- ScalarGPT is the same backbone with a one-number head: the reward model and the
  discriminator of adversarial imitation.
- token_logprobs gives log pi_theta(y_t | x, y_<t) for every response token. Every objective
  in objectives.py is computed from it, so SFT, reverse KL and the RL losses see the same
  numbers. It, and the score head's sequence_scores and token_scores, pack several short rows
  of a padded batch into one (packed), so the padding costs nothing.
- get_device / autocast / save_checkpoint / load_checkpoint are the plumbing
  the pipeline's stages share (common.Run).

Sampling (the KV cache, the batched sampler) and the extrapolated policy live in sampling.py;
the model only accepts a cache (kv_cache) and gives the next token's logits (next_token_logits).
The architecture follows nanoGPT (karpathy/nanoGPT); what it lacks and we add is room for the KV
cache, batched prompts of different lengths, packed rows, and the scalar head.
"""

import contextlib
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE_INDEX = -1  # targets equal to this (e.g. prompt tokens) are left out of the loss


@dataclass
class GPTConfig:
    block_size: int = 96  # prompt (~10-20 tokens) + response (<= 64 tokens)
    vocab_size: int = 512  # the pipeline overrides this with the tokenizer's n_vocab
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64  # the pipeline's default CPU model (afd_mini.Config)
    dropout: float = 0.0
    bias: bool = True  # biases in Linear and LayerNorm, as in GPT-2


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout = config.n_head, config.dropout

    def forward(self, x, mask=None, kv_cache=None, layer=0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if kv_cache is not None:
            k, v = kv_cache.append(layer, k, v)
        # One fused kernel for softmax(q k^T / sqrt(d) + mask) v. With no explicit mask the plain
        # causal case can take the fastest (flash) path.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm: the residual stream x is never normalised, only what each branch reads."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, mask=None, kv_cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), mask, kv_cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),  # learned positions
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and predicting it out use one matrix (fewer
        # parameters, and rare tokens learn from both ends).
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: each residual branch ends in a c_proj; scaling its init by 1/sqrt(2 n_layer)
        # keeps the variance of the residual stream from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())  # parameters() counts the tied matrix once

    def hidden(self, idx, pos=None, valid=None, kv_cache=None, mask=None):
        """Final-LayerNorm hidden states (B, T, C) of tokens idx (B, T).

        Plain use (training, scoring): hidden(idx) with positions 0..T-1 and a causal mask.
        The sampler also passes, for its left-padded batch,
          pos:      (B, T) position of each token within its own unpadded row,
          valid:    (B, S) False at pad slots, S = cached length + T,
          kv_cache: a sampling.KVCache; idx then holds only the tokens the cache has not seen,
          mask:     in place of valid, the attention mask itself, (B, 1, T, S), boolean or
                    additive; the sampler makes the one of its decoding steps just once.
        """
        B, T = idx.size()
        past = kv_cache.length if kv_cache is not None else 0
        # A row may hold more than block_size tokens when they are several sequences (packed, or a prefix tree
        # of them, evaluation.py): only positions must stay below block_size, and a caller giving pos keeps them so.
        if (pos is None or kv_cache is not None) and past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        if pos is None:
            pos = torch.arange(past, past + T, device=idx.device)
        if mask is None and (valid is not None or past > 0):  # no mask = plain causal attention
            q_slot = torch.arange(past, past + T, device=idx.device)[:, None]
            k_slot = torch.arange(past + T, device=idx.device)[None, :]
            mask = k_slot <= q_slot  # (T, S) causal, offset by what is cached
            if valid is not None:
                # Nobody attends to a pad slot, except that slot itself: some PyTorch versions and
                # kernels give NaN for an all-masked softmax row, and a NaN stored as a value
                # would reach the real rows through 0 * NaN.
                mask = (mask & valid[:, None, :]) | (k_slot == q_slot)
                mask = mask[:, None]  # (B, 1, T, S), same for every head
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, mask, kv_cache, layer)
        if kv_cache is not None:
            kv_cache.length += T
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, pos=None, mask=None):
        """Logits (B, T, V) for the next token at every position; with targets (B, T), also the
        mean cross-entropy over the positions whose target is not IGNORE_INDEX. pos and mask as
        in hidden (token_logprobs' packed rows pass both)."""
        logits = self.lm_head(self.hidden(idx, pos=pos, mask=mask))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
        return logits, loss

    def next_token_logits(self, idx, **kw):
        """(B, V) logits of the token after each row of idx, for the sampler (sampling.py): hidden's
        arguments, the LM head only at the last position (the only one sampled from)."""
        return self.lm_head(self.hidden(idx, **kw)[:, -1]).float()

    def configure_optimizer(self, weight_decay, learning_rate, betas=(0.9, 0.95), device_type="cpu"):
        # Decay the matrices (Linear weights, embeddings); biases and LayerNorm gains stay free.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        # fused = one kernel for the whole update, CUDA only; foreach batches the tensors elsewhere.
        impl = {"fused": True} if device_type == "cuda" else {"foreach": True}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **impl)


class ScalarGPT(nn.Module):
    """The GPT backbone with a score head: one number per position. Position t has seen
    tokens[:t+1], so its score judges state tokens[:t] with action tokens[t]; the score at the
    last response token judges the whole (prompt, response) pair."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.gpt = GPT(config)  # its lm_head is tied to wte, so it adds no parameters; unused here
        self.score_head = nn.Linear(config.n_embd, 1)
        # Zero init: every score starts at 0 (a discriminator at D = 1/2), and the head is
        # fresh even when the backbone comes from a trained LM.
        nn.init.zeros_(self.score_head.weight)
        nn.init.zeros_(self.score_head.bias)

    def forward(self, idx, pos=None, mask=None):
        return self.score_head(self.gpt.hidden(idx, pos=pos, mask=mask)).squeeze(-1).float()

    @classmethod
    def from_lm(cls, gpt: GPT) -> "ScalarGPT":
        model = cls(gpt.config)
        model.gpt.load_state_dict(gpt.state_dict())   # a copy: training one leaves the other alone
        return model.to(next(gpt.parameters()).device)


def token_logprobs(model: GPT, tokens, response_mask):
    """out[b, t] = log pi(tokens[b, t] | tokens[b, :t]) where response_mask[b, t], else 0.

    tokens (B, T): prompt + response, right-padded (causality makes the pad value irrelevant).
    The logits at position t-1 predict token t, hence the shift; token 0 is always a prompt
    token. Per-token values: the caller decides whether to sum (sequence log-likelihood) or
    average them. The model sees each row only up to the token before its last response token,
    packed with the others (packed). model: a GPT, or a sampling.Extrapolated (its logits are log-probs)."""
    last = last_response_token(response_mask)
    logits, b, t = packed(lambda idx, pos, mask: model(idx, pos=pos, mask=mask)[0], tokens, last)
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, tokens[b, t + 1, None]).squeeze(-1)
    out = torch.zeros(tokens.shape, device=tokens.device)
    return out.index_put((b, t + 1), logp).masked_fill(~response_mask, 0.0)


def sequence_scores(model: ScalarGPT, tokens, response_mask):
    """(B,) score at each row's last response token (not at a pad after it)."""
    last = last_response_token(response_mask)
    scores, b, t = packed(model, tokens, last + 1)
    return scores[t == last[b]]   # one per row, in row order


def token_scores(model: ScalarGPT, tokens, response_mask):
    """(B, T) state-action score at every response token, 0 elsewhere."""
    n = last_response_token(response_mask) + response_mask.any(dim=1)   # no response: nothing to score
    scores, b, t = packed(model, tokens, n)
    out = torch.zeros(tokens.shape, device=tokens.device)
    return out.index_put((b, t), scores).masked_fill(~response_mask, 0.0)


def last_response_token(response_mask):
    """(B,) the position of each row's last response token (0 for a row without one)."""
    return (torch.arange(response_mask.size(1), device=response_mask.device) * response_mask).amax(dim=1)


def packed(forward, tokens, n):
    """forward(idx, pos, mask) on the first n[b] tokens of each row b of tokens (B, T), without
    the padding: returns its output at every one of those tokens, flattened in row order (N, ...),
    and their (b, t). A right-padded batch of short and long responses is about half padding.
    Here several rows share one packed row (pack), and each token attends only to its own row's
    past at its own positions: the same numbers as one row at a time (tests/test_model.py), on
    about half the tokens."""
    dev = tokens.device
    where, width = pack(n.tolist())
    b = torch.repeat_interleave(torch.arange(len(n), device=dev), n)   # (b, t): every token used
    t = torch.arange(len(b), device=dev) - torch.repeat_interleave(n.cumsum(0) - n, n)
    if len(b) == 0:   # nothing to compute
        return torch.zeros(0, device=dev), b, t
    row, offset = torch.tensor(where, dtype=torch.long, device=dev).unbind(1)
    row, col = row[b], offset[b] + t                                   # ... and its packed slot
    idx = torch.zeros(int(row.max()) + 1, width, dtype=torch.long, device=dev)
    pos = torch.zeros_like(idx)
    owner = torch.full_like(idx, -1)   # which row of tokens a slot holds; -1: none
    idx[row, col], pos[row, col], owner[row, col] = tokens[b, t], t, b
    causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
    mask = (owner[:, :, None] == owner[:, None, :]) & causal   # its own row's past; a pad sees pads
    return forward(idx, pos, mask[:, None])[row, col], b, t


def pack(lengths):
    """Where sequences of these lengths go when several share a row: (row, offset) for each, and
    the rows' width (the longest). First fit, longest first: each sequence goes into the first
    row with room for it."""
    width = max(lengths, default=0)
    where, room = [(0, 0)] * len(lengths), []   # a sequence of length 0 takes no room
    for i in sorted((i for i in range(len(lengths)) if lengths[i]), key=lambda i: -lengths[i]):
        r = next((r for r, left in enumerate(room) if left >= lengths[i]), len(room))
        if r == len(room):
            room.append(width)
        where[i] = (r, width - room[r])
        room[r] -= lengths[i]
    return where, width


def to_batch(prompts, responses, pad_id, device):
    """Lists of prompt and response token lists -> tokens (B, T) right-padded with pad_id, and
    response_mask (B, T): the layout every function here takes."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses)]
    tokens = torch.full((len(lengths), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, :len(p) + len(r)] = torch.tensor(p + r)
        mask[i, len(p):len(p) + len(r)] = True
    return tokens.to(device), mask.to(device)


# Said once at the start of a run on MPS (runner.main, bench.py), until a run there has been checked.
MPS_UNTESTED = ("note: --device=mps is untested: no run of afd-mini has been checked on Apple's MPS backend; "
                "--device=auto (or cpu) runs on the CPU")


def get_device(name="auto"):
    """'auto' picks CUDA where it is available, else the CPU. Never MPS: every Apple-silicon laptop has it, and its
    path has never run, so it is taken only when asked for, --device=mps (MPS_UNTESTED)."""
    available = [kind for kind, ok in (("cuda", torch.cuda.is_available()),
                                       ("mps", torch.backends.mps.is_available()), ("cpu", True)) if ok]
    if name == "auto":
        return torch.device("cuda" if "cuda" in available else "cpu")
    if name not in available:
        raise ValueError(f"device {name!r} is unknown or unavailable here; use one of: auto, {', '.join(available)}")
    return torch.device(name)


def autocast(device, dtype="auto"):
    """The precision of the forward passes. "auto": bf16 autocast on CUDA (matmuls in bf16, reductions in
    fp32), float32 elsewhere; "bfloat16": bf16 autocast on any device (a CPU too, which is how the GPU path is
    tested where there is no GPU); "float32": none."""
    device = torch.device(device)
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_checkpoint(path, model, **extra):
    ckpt = {"kind": "scalar" if isinstance(model, ScalarGPT) else "gpt",
            "config": asdict(model.config),
            "state_dict": model.state_dict(),
            "extra": extra}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # Write elsewhere, then rename: os.replace is atomic, so an interrupted save leaves the old
    # checkpoint (or none), never half a file.
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path, device="cpu"):
    """(model, extra). weights_only=False: our own files, whose extra may hold any Python object."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    model = {"gpt": GPT, "scalar": ScalarGPT}[ckpt["kind"]](GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device), ckpt["extra"]
