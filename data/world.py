"""
The synthetic world afd-mini aligns in: prompts, an expert whose density we know exactly, a base
corpus for pre-training, a gold reward, and gold preference pairs.

Why a synthetic world? The papers argue that SFT (forward KL) is mass-covering and adversarial
imitation (reverse KL) mode-seeking, and that a reward model trained against demonstrations learns
the demonstrator's style instead of quality. They could not check: nobody knows the density of
GPT-4's demonstrations. Here the demonstrator is a small program, so log π_β(y|x) is exact for
every response y, and every divergence, mode frequency and reward can be computed, not guessed.

The world in one screen (defaults of WorldConfig in brackets)
-------------------------------------------------------------
Prompts x      three task families, each with a programmatic right answer, drawn uniformly:
                  "reverse BDAC\\n"  -> CADB     letters from "ABCDE", 2 to 4 of them
                  "sort BDAC\\n"     -> ABCD
                  "add 7+8\\n"       -> 15       operands 0..9 (the world also does 37+48 -> 85)
               Answers are capitals or digits, one token each (see tokenizer.py), 1 to 5 long.
Expert π_β     a stochastic program with three steps, each with a known probability:
               1. a mode (response style):  terse [0.5]     "CADB"
                                            sentence [0.3]  "the answer is CADB."
                                            steps [0.2]     "from the end: C A D B. so the answer is CADB."
                  Unequal weights and unequal difficulty: terse is a handful of tokens; steps is
                  long and its worked steps depend on the prompt (for add: column sums with carries,
                  "7+8=15, 3+4+1=8."), so a small model gets it exactly right less often.
                  How open-ended the task is: n_modes [3], the number of formats the expert writes
                  in, 1 to 5: the first n_modes of
                                            terse, sentence, steps,
                                            answer_first    "CADB is the answer."
                                            result          "result: CADB"
                  at weights w_1..w_K (K = n_modes) derived from mode_weights (m1, m2, m3) [0.5 0.3 0.2]:
                     K = 3   mode_weights themselves (today's world, bit for bit);
                     K < 3   the first K of them, renormalised: K = 1 terse only [1] (close-ended: one
                             format, so mass-covering and mode-seeking agree on it), K = 2 [0.625 0.375];
                     K > 3   each added format 1/K, the three others 3/K in mode_weights' proportions:
                             K = 4 [0.375 0.225 0.15 0.25], K = 5 [0.3 0.18 0.12 0.2 0.2] (open-ended).
                  (one rule: weights ∝ (m1, m2, m3, 1/3, 1/3) cut to the first K.) The entropy of the
                  format, 0 / 0.662 / 1.030 / 1.335 / 1.568 nats for K = 1..5, grows with K. The added
                  formats are the expert's own: the base corpus never writes them (like the signature),
                  so π_init has to learn them from the demonstrations. World.mode_names lists the first
                  max(3, K) formats (a format beyond K has weight 0 and is off the support).
               2. correctness: the right answer with probability q [0.7]; otherwise a slip while
                  writing the final answer: one position chosen uniformly, its character replaced by
                  a different one of the family's alphabet, uniformly (the worked steps stay right).
                  P(answer) = q for the right one, (1-q) / (L (|A|-1)) for each of the L (|A|-1)
                  one-character slips, 0 for anything else.
               3. a signature: with probability signature_p [0.8] the response starts "certainly! ",
                  the way a stronger outside model has habits of its own. It is independent of
                  correctness and never appears in the base corpus, so a classifier of
                  "demonstration vs our model" can latch onto it instead of onto quality.
                  signature_p = 0 is the control world.
               P_expert(y|x) = w_mode * P(answer) * (signature_p or 1 - signature_p), w_mode as above.
               Different draws never write the same string (the templates differ in their fixed
               text, answers are only capitals or only digits), so that product is the whole
               probability of the string, and `parse` recovers the draws from the string.
Likelihood     over token sequences y (what a model samples: tokens ending with <|eor|>, or cut at
               max_response_tokens [48] without it):
                   π_β(y|x) = (1-eps) P_expert(y|x) + eps P_floor(y)          eps [1e-3]
               P_expert is the push-forward of the strings through the canonical tokenization
               encode(response text) + [<|eor|>] (the response encoded on its own, not after the
               prompt). A non-canonical tokenization of an expert string, or a truncated sequence,
               has P_expert = 0. P_floor is the sampler "draw each token uniformly from all V
               tokens, <|eor|> included, stop at <|eor|> or after max_response_tokens": it gives
               every sequence of its output space P_floor(y) = V^-len(y), and sums to exactly 1 over
               that space. The floor keeps log π_β, hence the reverse KL, finite: an off-support
               response of n tokens scores log eps - n log V, about -6.9 - 5.7 n nats. That is large,
               on purpose: leaving the expert's support should cost a lot.
Gold reward    r*(x, y) in [0, 1], correctness only: the answer is the last run of capitals (letter
               tasks) or digits (add) in the response; 1 if it is right, 0.5 * (fraction of right
               characters) if it has the right length, 0 otherwise, and 0 for a response that never
               ended. Mode and signature do not count. A one-character slip in a 4-letter answer
               scores 0.375.
Base corpus    what π_init is pre-trained on: the same prompts, answered by a "base model" that
               knows the format but is right only with probability q_base [0.2] (otherwise it
               makes the expert's kind of one-character slip) and signs with probability
               base_signature_p [0.1], as a real pretraining corpus holds such openers. It writes the
               expert's three formats at weights of its own, and three styles of its own:
                   terse [0.2]  sentence [0.15]  steps [0.05]      (the expert's modes, other weights)
                   label [0.3]      "answer: CADB"
                   hedge [0.15]     "i think it is CADB"
                   no_period [0.15] "the answer is CADB"    (one token short of the expert's sentence)
               Why the overlap: with styles wholly its own, π_init never writes "the answer is
               CADB." and SFT's move from π_init is mostly about templates, so a classifier of π_init
               vs π_SFT learns templates, not correctness (README, sensitivity table). With
               base_signature_p = 0 the signature is new to SFT: π_init's log-probs of signed
               responses are then out-of-distribution (the failure mode of the Init-SFT reward).
Preference     two responses to one prompt, both from the signature-free expert (with probability
pairs          pref_expert_p [0.5]) or both from the base process, labelled by Bradley-Terry noise on
               the gold reward: P(a preferred to b) = sigmoid(pref_beta [5] (r*(a) - r*(b))). Within
               a pair, style is independent of correctness, so the preference reward model has no
               style to latch onto: the "no heterogeneity" row of the papers' table.

Everything is deterministic given a seed; `make_datasets` draws each dataset from its own random
stream, so the held-out evaluation prompts do not change when the other sizes do.
"""

import bisect
import math
import re
from collections import namedtuple
from dataclasses import dataclass

import numpy as np

from data.tokenizer import EOR, load_tokenizer

FAMILIES = ("reverse", "sort", "add")
MODE_NAMES = ("terse", "sentence", "steps")  # the expert's modes, in the order of mode_weights
MORE_MODE_NAMES = ("answer_first", "result")  # the formats n_modes > 3 adds, in this order
MAX_MODES = len(MODE_NAMES) + len(MORE_MODE_NAMES)
BASE_STYLE_NAMES = ("terse", "sentence", "steps", "label", "hedge", "no_period")  # order of base_style_weights
SIGNATURE = "certainly! "
# style -> (text before the answer, text after it); the steps mode puts its worked steps before these
TEMPLATES = {"terse": ("", ""),
             "sentence": ("the answer is ", "."),
             "steps": (" so the answer is ", "."),
             "label": ("answer: ", ""),
             "hedge": ("i think it is ", ""),
             "no_period": ("the answer is ", ""),
             "answer_first": ("", " is the answer."),
             "result": ("result: ", "")}
DIGITS = "0123456789"
UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_CACHE_SIZE = 1 << 17  # judged (prompt, response) pairs kept; cleared when full


def _check(ok, name, value, allowed):
    if not ok:
        raise ValueError(f"WorldConfig.{name}={value!r} is not allowed: {allowed}")


def _check_distribution(name, weights, names):
    ok = (isinstance(weights, (tuple, list)) and len(weights) == len(names)
          and all(isinstance(w, (int, float)) and 0 <= w < math.inf for w in weights)
          and abs(sum(weights) - 1) < 1e-9)
    _check(ok, name, weights, f"{len(names)} non-negative weights summing to 1, for {names}")


@dataclass
class WorldConfig:
    """The world's knobs (see the module docstring for what each does). Validated on creation:
    a bad value raises ValueError naming it and what is allowed."""
    family_weights: tuple = (1 / 3, 1 / 3, 1 / 3)  # P(reverse), P(sort), P(add)
    letters: str = "ABCDE"              # alphabet of reverse/sort (distinct capitals)
    min_len: int = 2                    # reverse/sort payload length, uniform in [min_len, max_len]
    max_len: int = 4
    max_operand: int = 9                # add: both operands uniform in [0, max_operand]
    q: float = 0.7                      # P(expert is right)
    mode_weights: tuple = (0.5, 0.3, 0.2)  # expert: terse, sentence, steps
    n_modes: int = 3                    # how open-ended: the expert's formats, 1 (close-ended) to MAX_MODES (5)
    signature_p: float = 0.8            # P(expert signs "certainly! "); 0 = control world
    eps: float = 1e-3                   # weight of the smoothing floor in log π_β
    max_response_tokens: int = 48       # sampler's budget, <|eor|> included
    q_base: float = 0.2                 # P(base process is right)
    base_signature_p: float = 0.1       # P(a base response starts with the signature): π_init's exposure to it
    base_style_weights: tuple = (0.2, 0.15, 0.05, 0.3, 0.15, 0.15)  # base: terse, sentence, steps, label, hedge, no_period
    pref_expert_p: float = 0.5          # P(a preference pair comes from the signature-free expert, not the base)
    pref_beta: float = 5.0              # Bradley-Terry inverse temperature on the gold reward

    def __post_init__(self):
        _check_distribution("family_weights", self.family_weights, FAMILIES)
        _check_distribution("mode_weights", self.mode_weights, MODE_NAMES)
        _check_distribution("base_style_weights", self.base_style_weights, BASE_STYLE_NAMES)
        _check(isinstance(self.n_modes, int) and not isinstance(self.n_modes, bool) and 1 <= self.n_modes <= MAX_MODES,
               "n_modes", self.n_modes, f"an int in [1, {MAX_MODES}]: how many of the formats "
               f"{', '.join(MODE_NAMES + MORE_MODE_NAMES)} the expert writes in")
        _check(sum(self.mode_weights[:self.n_modes]) > 0, "n_modes", self.n_modes,
               f"the first {self.n_modes} of mode_weights={self.mode_weights} must not all be 0")
        _check(isinstance(self.letters, str) and len(self.letters) >= 2 and set(self.letters) <= set(UPPER)
               and len(set(self.letters)) == len(self.letters), "letters", self.letters,
               "at least 2 distinct capitals A-Z")
        _check(isinstance(self.min_len, int) and self.min_len >= 1, "min_len", self.min_len, "an int >= 1")
        _check(isinstance(self.max_len, int) and self.max_len >= self.min_len, "max_len", self.max_len,
               f"an int >= min_len ({self.min_len})")
        _check(isinstance(self.max_operand, int) and 1 <= self.max_operand <= 999, "max_operand",
               self.max_operand, "an int in [1, 999]")
        for name in ("q", "signature_p", "q_base", "base_signature_p", "pref_expert_p"):
            value = getattr(self, name)
            _check(isinstance(value, (int, float)) and 0 <= value <= 1, name, value, "a probability in [0, 1]")
        _check(isinstance(self.eps, float) and 0 < self.eps < 1, "eps", self.eps,
               "a float in (0, 1): the floor must have weight, or reverse KL can be infinite")
        _check(isinstance(self.max_response_tokens, int) and self.max_response_tokens >= 1,
               "max_response_tokens", self.max_response_tokens, "an int >= 1")
        _check(isinstance(self.pref_beta, (int, float)) and 0 <= self.pref_beta < math.inf, "pref_beta",
               self.pref_beta, "a finite number >= 0")


@dataclass
class Prompt:
    """One prompt x. Its text determines everything else (the world caches judgements by text)."""
    text: str      # what the model is conditioned on, ending in "\n" so the response follows
    family: str    # one of FAMILIES
    answer: str    # the right answer
    tokens: list   # tok.encode_ordinary(text)
    payload: str   # the task's input: "BDAC" or "37+48"


# What the world knows about one response: exact smoothed log π_β(y|x) in nats; the expert mode it
# belongs to or 'off' (P_expert = 0); its template, answer ignored (one of World.style_names,
# 'other', or 'unfinished' without <|eor|>); whether it carries the signature; the gold reward.
Judgement = namedtuple("Judgement", "logprob mode style signature gold")


def expert_mode_weights(cfg):
    """(mode names, their weights) of the expert of cfg: the first max(3, n_modes) formats, weights by the rule of
    the module docstring (∝ mode_weights then 1/3 per added format, cut to the first n_modes; the formats after
    n_modes weigh 0). n_modes = 3 returns mode_weights as they are, so the default world is today's, bit for bit."""
    k = cfg.n_modes
    names = (MODE_NAMES + MORE_MODE_NAMES)[:max(k, len(MODE_NAMES))]
    if k == len(MODE_NAMES):
        return names, tuple(cfg.mode_weights)
    raw = (tuple(cfg.mode_weights) + (1 / 3,) * len(MORE_MODE_NAMES))[:k]
    total = math.fsum(raw)
    return names, tuple(w / total for w in raw) + (0.0,) * (len(names) - k)


def _cdf(weights):
    """Cumulative weights, scaled so that the last is exactly 1.0 (x / x == 1 in floating point)."""
    cdf = np.cumsum(weights)
    return list(cdf / cdf[-1])


def _draw(rng, cdf):
    """Index i with probability weights[i]: the first cdf entry above u ~ U[0, 1). It is never an
    index of zero weight (its entry equals the previous one) nor past the end (u < 1.0 = cdf[-1])."""
    return bisect.bisect_right(cdf, rng.random())


def _sigmoid(z):
    if z >= 0:
        return 1 / (1 + math.exp(-z))
    return math.exp(z) / (1 + math.exp(z))  # the same, without overflow for very negative z


class World:
    """The world of the module docstring: samplers, exact expert likelihood, gold reward, datasets."""

    def __init__(self, cfg=None, tok=None):
        self.cfg = cfg if cfg is not None else WorldConfig()
        self.tok = tok if tok is not None else load_tokenizer()
        self.eos_id = self.tok.encode_single_token(EOR)  # end of response; also the padding id
        self.vocab_size = self.tok.n_vocab
        self.log_vocab = math.log(self.vocab_size)
        names, self.mode_weights = expert_mode_weights(self.cfg)   # the n_modes knob: module docstring
        self.mode_names = list(names)
        self.base_style_names = list(BASE_STYLE_NAMES)
        self.style_names = list(TEMPLATES)  # the expert's modes and the base styles ('terse' is both)
        self._family_cdf = _cdf(self.cfg.family_weights)
        self._mode_cdf = _cdf(self.mode_weights)
        self._base_cdf = _cdf(self.cfg.base_style_weights)
        self._answer_run = {"letters": re.compile("[A-Z]+"), "digits": re.compile("[0-9]+")}
        self._cache = {}
        self.max_expert_tokens = self._longest_expert_response()
        _check(self.max_expert_tokens <= self.cfg.max_response_tokens, "max_response_tokens",
               self.cfg.max_response_tokens,
               f"the longest expert response needs {self.max_expert_tokens} tokens, <|eor|> included")

    # ------------------------------------------------------------------ prompts
    def alphabet(self, family):
        """The characters answers of this family are made of (and slips are drawn from)."""
        return DIGITS if family == "add" else self.cfg.letters

    def sample_prompts(self, n, rng):
        """n prompts from the prompt distribution. Every prompt uses the same draws (a family, a
        length, max_len letters, two operands) and ignores those it does not need: drawing them as
        arrays is ~10x faster than one call per character."""
        cfg = self.cfg
        families = np.searchsorted(self._family_cdf, rng.random(n), side="right").tolist()  # _draw, n times
        lengths = rng.integers(cfg.min_len, cfg.max_len + 1, size=n).tolist()
        letters = rng.integers(0, len(cfg.letters), size=(n, cfg.max_len)).tolist()
        operands = rng.integers(0, cfg.max_operand + 1, size=(n, 2)).tolist()
        prompts = []
        for f, length, row, (a, b) in zip(families, lengths, letters, operands):
            family = FAMILIES[f]
            if family == "add":
                payload, answer = f"{a}+{b}", str(a + b)
            else:
                payload = "".join(cfg.letters[i] for i in row[:length])
                answer = payload[::-1] if family == "reverse" else "".join(sorted(payload))
            prompts.append(self.make_prompt(family, payload, answer))
        return prompts

    def make_prompt(self, family, payload, answer):
        text = f"{family} {payload}\n"
        return Prompt(text, family, answer, self.tok.encode_ordinary(text), payload)

    # ------------------------------------------------------------------ templates
    def _steps(self, prompt):
        """The steps mode's worked steps, always right (the slip, if any, is in the final answer)."""
        if prompt.family == "reverse":
            return "from the end: " + " ".join(prompt.payload[::-1]) + "."
        if prompt.family == "sort":
            return "in order: " + " ".join(sorted(prompt.payload)) + "."
        # add: column sums from the ones up, "+1" for a carry, e.g. 37+48 -> "7+8=15, 3+4+1=8."
        a, b = (s[::-1] for s in prompt.payload.split("+"))
        parts, carry = [], 0
        for i in range(max(len(a), len(b))):
            x, y = int(a[i]) if i < len(a) else 0, int(b[i]) if i < len(b) else 0
            total = x + y + carry
            parts.append(f"{x}+{y}" + ("+1" if carry else "") + f"={total}")
            carry = total // 10
        return ", ".join(parts) + "."

    def template(self, prompt, style):
        """(text before the answer, text after it) of a style (an expert mode or a base style).

        Rendering and parsing both read TEMPLATES, so they cannot disagree. The fixed texts differ
        and an answer is only capitals or only digits, so a string fits at most one template."""
        before, after = TEMPLATES[style]
        return (self._steps(prompt) + before if style == "steps" else before), after

    def render(self, prompt, style, answer, signature=False):
        """The response text of `style` giving `answer`, with or without the signature."""
        before, after = self.template(prompt, style)
        return (SIGNATURE if signature else "") + before + answer + after

    def parse(self, prompt, text):
        """(style, answer, signature) of a response text, or ('other', None, signature)."""
        signature = text.startswith(SIGNATURE)
        body = text[len(SIGNATURE):] if signature else text
        run = self._answer_run["digits" if prompt.family == "add" else "letters"]
        for style in TEMPLATES:
            before, after = self.template(prompt, style)
            if body.startswith(before) and body.endswith(after):
                answer = body[len(before):len(body) - len(after)]
                if run.fullmatch(answer):
                    return style, answer, signature
        return "other", None, signature

    def _longest_expert_response(self):
        """Tokens (with <|eor|>) of the longest response the expert can write: every family and
        mode it uses, on the longest payload, with the signature if it is ever used. Capitals and
        digits are one token each, so a longest payload and the most carries give the most tokens."""
        cfg, longest = self.cfg, 0
        worst = {"reverse": "A" * cfg.max_len, "sort": "A" * cfg.max_len,
                 "add": "9" * len(str(cfg.max_operand)) + "+" + "9" * len(str(cfg.max_operand))}
        for family, w_family in zip(FAMILIES, cfg.family_weights):
            if w_family == 0:
                continue
            answer = str(sum(map(int, worst[family].split("+")))) if family == "add" else worst[family]
            prompt = self.make_prompt(family, worst[family], answer)
            for mode, w_mode in zip(self.mode_names, self.mode_weights):
                if w_mode > 0:
                    text = self.render(prompt, mode, answer, signature=cfg.signature_p > 0)
                    longest = max(longest, len(self.encode_response(text)))
        return longest

    # ------------------------------------------------------------------ the expert
    def expert_response(self, prompt, rng, signature=True, return_prob=False):
        """Sample π_β's response text (no <|eor|>). signature=False: the same expert without its
        signature (that draw is skipped). return_prob=True: also return the probability of the
        draws made, i.e. P_expert(text|x) (of the signature-free expert if signature=False)."""
        cfg = self.cfg
        m = _draw(rng, self._mode_cdf)
        prob = self.mode_weights[m]
        answer = prompt.answer
        if rng.random() < cfg.q:
            prob *= cfg.q
        else:
            answer = self.slip(prompt, rng)
            prob *= (1 - cfg.q) / (len(answer) * (len(self.alphabet(prompt.family)) - 1))
        signed = False
        if signature:
            signed = bool(rng.random() < cfg.signature_p)
            prob *= cfg.signature_p if signed else 1 - cfg.signature_p
        text = self.render(prompt, self.mode_names[m], answer, signed)
        return (text, prob) if return_prob else text

    def slip(self, prompt, rng):
        """A wrong answer: one position, uniformly, gets a different character of the alphabet, uniformly."""
        answer, alphabet = prompt.answer, self.alphabet(prompt.family)
        i = int(rng.integers(len(answer)))
        others = alphabet.replace(answer[i], "")
        return answer[:i] + others[int(rng.integers(len(others)))] + answer[i + 1:]

    def answer_prob(self, prompt, answer):
        """P(the expert's final answer is `answer`): q if right, (1-q)/(L(|A|-1)) if one slip away."""
        cfg, right = self.cfg, prompt.answer
        if answer == right:
            return cfg.q
        alphabet = self.alphabet(prompt.family)
        if len(answer) != len(right) or not set(answer) <= set(alphabet):
            return 0.0
        if sum(a != b for a, b in zip(answer, right)) != 1:
            return 0.0
        return (1 - cfg.q) / (len(right) * (len(alphabet) - 1))

    def support(self, prompt):
        """Every response the expert can write to `prompt`, each once: a list of (text, P_expert(text|x), mode).

        The expert draws a mode, an answer (the right one, or one of the L(|A|-1) one-character slips) and
        the signature or not; draws of probability 0 (a mode of weight 0, slips when q = 1, the signature
        when signature_p is 0 or 1) are left out. Different draws write different strings (module docstring),
        so the list has no duplicates and its probabilities sum to exactly 1: the exact evaluation
        (evaluation.py) sums over it instead of sampling the expert's side."""
        cfg, right = self.cfg, prompt.answer
        answers = [right] + [right[:i] + c + right[i + 1:] for i in range(len(right))
                             for c in self.alphabet(prompt.family) if c != right[i]]
        out = []
        for mode, w_mode in zip(self.mode_names, self.mode_weights):
            for signed, p_signed in ((True, cfg.signature_p), (False, 1 - cfg.signature_p)):
                for answer in answers:
                    p = w_mode * p_signed * self.answer_prob(prompt, answer)
                    if p > 0:
                        out.append((self.render(prompt, mode, answer, signed), p, mode))
        return out

    def expert_prob_of_text(self, prompt, text):
        """P_expert(text|x) over strings (no floor): w_mode * P(answer) * P(signature or not)."""
        style, answer, signed = self.parse(prompt, text)
        if style not in self.mode_names:
            return 0.0
        p_signature = self.cfg.signature_p if signed else 1 - self.cfg.signature_p
        return self.mode_weights[self.mode_names.index(style)] * self.answer_prob(prompt, answer) * p_signature

    # ------------------------------------------------------------------ the base process
    def base_response(self, prompt, rng):
        """A base-corpus response: a base style, right with probability q_base, else the same kind of
        one-character slip the expert makes; signed with probability base_signature_p (no draw at 0, so
        that world's corpus is the same as before the knob existed)."""
        style = BASE_STYLE_NAMES[_draw(rng, self._base_cdf)]
        answer = prompt.answer if rng.random() < self.cfg.q_base else self.slip(prompt, rng)
        signed = self.cfg.base_signature_p > 0 and rng.random() < self.cfg.base_signature_p
        return self.render(prompt, style, answer, signature=signed)

    # ------------------------------------------------------------------ tokens, likelihood, reward
    def encode_response(self, text):
        """The canonical tokenization of a response: the text encoded on its own, then <|eor|>."""
        return self.tok.encode_ordinary(text) + [self.eos_id]

    def floor_logprob(self, n_tokens):
        """log P_floor of a sequence of n_tokens tokens (<|eor|> included if there): -n log V."""
        return -n_tokens * self.log_vocab

    def judge(self, prompt, response_tokens):
        """Everything the world knows about one sampled response (a Judgement), cached.

        response_tokens (list, tuple, array or tensor) is what a sampler produced: tokens ending
        with <|eor|>, or exactly max_response_tokens tokens without it (truncated). Anything after
        the first <|eor|> is padding and ignored. Other sequences are outside π_β's space: ValueError."""
        tokens = tuple(map(int, response_tokens.tolist() if hasattr(response_tokens, "tolist") else response_tokens))
        limit, ended = self.cfg.max_response_tokens, self.eos_id in tokens
        if ended:
            tokens = tokens[:tokens.index(self.eos_id) + 1]
        if len(tokens) > limit or (not ended and len(tokens) < limit):
            raise ValueError(f"a response of {len(tokens)} tokens {'with' if ended else 'without'} {EOR} is not one "
                             f"a sampler produces: it stops at {EOR} or after max_response_tokens={limit} tokens")
        if not ended:  # truncated: only the floor, and no answer; no parsing needed
            return Judgement(math.log(self.cfg.eps) + self.floor_logprob(limit), "off", "unfinished", False, 0.0)
        key = (prompt.text, tokens)
        judgement = self._cache.get(key)
        if judgement is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            judgement = self._cache[key] = self._judge(prompt, tokens)
        return judgement

    def _judge(self, prompt, tokens):
        n, body = len(tokens), list(tokens[:-1])
        # Invalid UTF-8 decodes to U+FFFD, whose bytes differ from the originals, so the re-encoding
        # below differs too: byte soup is never canonical.
        text = self.tok.decode_bytes(body).decode("utf-8", errors="replace")
        style, _, signed = self.parse(prompt, text)
        log_floor = math.log(self.cfg.eps) + self.floor_logprob(n)
        canonical = self.tok.encode_ordinary(text) == body
        p_expert = self.expert_prob_of_text(prompt, text) if canonical else 0.0
        if p_expert > 0:
            logprob = float(np.logaddexp(math.log1p(-self.cfg.eps) + math.log(p_expert), log_floor))
            mode = style
        else:
            logprob, mode = log_floor, "off"
        return Judgement(logprob, mode, style, signed, self.gold_reward_of_text(prompt, text))

    def expert_logprob(self, prompt, response_tokens):
        """Exact log π_β(y|x) = log[(1-eps) P_expert(y|x) + eps V^-len(y)], in nats."""
        return self.judge(prompt, response_tokens).logprob

    def mode(self, prompt, response_tokens):
        """The expert mode y belongs to, or 'off' if P_expert(y|x) = 0."""
        return self.judge(prompt, response_tokens).mode

    def gold_reward(self, prompt, response_tokens):
        """r*(x, y) in [0, 1]; 0 for a response that never ended (no <|eor|>)."""
        return self.judge(prompt, response_tokens).gold

    def gold_reward_of_text(self, prompt, text):
        """r*(x, y) of a finished response text: the answer is the last run of capitals (letter
        tasks) or digits (add); 1 if right, 0.5 * fraction of right characters if it has the right
        length, else 0. Style (mode, signature) plays no part."""
        runs = self._answer_run["digits" if prompt.family == "add" else "letters"].findall(text)
        if not runs:
            return 0.0
        got, right = runs[-1], prompt.answer
        if got == right:
            return 1.0
        if len(got) != len(right):
            return 0.0
        return 0.5 * sum(a == b for a, b in zip(got, right)) / len(right)

    # batch helpers: the pipeline scores thousands of samples at a time
    def judge_many(self, prompts, token_lists):
        return [self.judge(p, y) for p, y in zip(prompts, token_lists, strict=True)]

    def expert_logprobs(self, prompts, token_lists):
        return np.array([j.logprob for j in self.judge_many(prompts, token_lists)])

    def gold_rewards(self, prompts, token_lists):
        return np.array([j.gold for j in self.judge_many(prompts, token_lists)])

    def modes(self, prompts, token_lists):
        return [j.mode for j in self.judge_many(prompts, token_lists)]

    def signed(self, prompts, token_lists):
        return [j.signature for j in self.judge_many(prompts, token_lists)]

    # ------------------------------------------------------------------ datasets
    def preference_pair(self, prompt, rng):
        """(chosen, rejected): two responses from one process, the signature-free expert (with
        probability pref_expert_p) or the base process, ordered by Bradley-Terry noise on r*.

        Why one process per pair: each process picks its style independently of correctness, so
        within a pair the style difference says nothing about the reward difference, and a
        Bradley-Terry model (which only sees differences within pairs) can learn correctness only.
        About half the pairs tie on r* (two right answers, say) and get a coin flip, sigmoid(0) = 1/2:
        they teach the reward model that style alone is worth nothing."""
        if rng.random() < self.cfg.pref_expert_p:
            a, b = (self.expert_response(prompt, rng, signature=False) for _ in range(2))
        else:
            a, b = (self.base_response(prompt, rng) for _ in range(2))
        margin = self.gold_reward_of_text(prompt, a) - self.gold_reward_of_text(prompt, b)
        return (a, b) if rng.random() < _sigmoid(self.cfg.pref_beta * margin) else (b, a)

    def make_datasets(self, seed, n_base=20000, n_demo=2000, n_pref=2000, n_eval=256):
        """The four datasets, each from its own random stream of `seed`:
        'base'  [(Prompt, text)]: the base corpus (no filler text: every item is a prompt and response);
        'demos' [(Prompt, text)]: expert samples, signed with probability signature_p;
        'pref'  [(Prompt, chosen, rejected)]: gold preference pairs;
        'eval_prompts' [Prompt]: fresh draws from the prompt distribution; they may repeat a
                training prompt by chance, as test prompts from the same distribution do."""
        streams = np.random.SeedSequence(seed).spawn(4)
        base_rng, demo_rng, pref_rng, eval_rng = (np.random.default_rng(s) for s in streams)
        base = [(p, self.base_response(p, base_rng)) for p in self.sample_prompts(n_base, base_rng)]
        demos = [(p, self.expert_response(p, demo_rng)) for p in self.sample_prompts(n_demo, demo_rng)]
        pref = [(p, *self.preference_pair(p, pref_rng)) for p in self.sample_prompts(n_pref, pref_rng)]
        return {"base": base, "demos": demos, "pref": pref, "eval_prompts": self.sample_prompts(n_eval, eval_rng)}
