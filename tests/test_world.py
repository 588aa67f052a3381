"""
Tests of the synthetic world (data/world.py). Where a test needs a right answer, a probability or a
frequency, it computes it here, from the definitions in the world's docstring, not by asking the code
under test. Statistical checks use 4 standard errors (a false alarm about once in 16,000 checks) and
fixed seeds, so they are deterministic.

test_worked_steps_match_an_independent_rendering guards the steps mode's text (a carry dropped or put in
the wrong column, operands of different lengths misaligned, a letter task's steps in the wrong order):
the expert would then demonstrate wrong arithmetic, and the likelihood would score it as right.
"""

import math

import numpy as np
import pytest

from data import SIGNATURE, World, WorldConfig

DIGITS = "0123456789"


@pytest.fixture(scope="module")
def world():
    return World()


def right_answer(prompt_text):
    """The task's answer, computed from the prompt text alone."""
    verb, payload = prompt_text.split()
    if verb == "reverse":
        return payload[::-1]
    if verb == "sort":
        return "".join(sorted(payload))
    a, b = payload.split("+")
    return str(int(a) + int(b))


def assert_frequency(count, n, p, what):
    se = math.sqrt(p * (1 - p) / n)
    assert abs(count / n - p) <= 4 * se + 1e-12, f"{what}: {count / n:.4f} vs {p:.4f} (4 SE = {4 * se:.4f})"


def slip(answer, alphabet, i):
    """The answer with position i replaced by the next character of the alphabet (a different one)."""
    c = alphabet[(alphabet.index(answer[i]) + 1) % len(alphabet)]
    return answer[:i] + c + answer[i + 1:]


def test_prompts_have_right_answers_and_the_configured_distribution(world):
    cfg, n = world.cfg, 3000
    prompts = world.sample_prompts(n, np.random.default_rng(0))
    for p in prompts:
        assert p.text == f"{p.family} {p.payload}\n"
        assert p.answer == right_answer(p.text)
        assert p.tokens == world.tok.encode_ordinary(p.text)
        if p.family == "add":
            assert all(0 <= int(v) <= cfg.max_operand for v in p.payload.split("+"))
        else:
            assert cfg.min_len <= len(p.payload) <= cfg.max_len and set(p.payload) <= set(cfg.letters)
    for family, w in zip(("reverse", "sort", "add"), cfg.family_weights):
        assert_frequency(sum(p.family == family for p in prompts), n, w, family)


@pytest.mark.parametrize("family, payload", [("reverse", "AB"), ("add", "2+3")])
def test_expert_string_probabilities_sum_to_one(family, payload):
    # A sub-world small enough that sampling finds every string the expert can write; the weights are
    # flattened so that the rarest string (probability 1/3 * 0.9/9 * 0.5 = 1/60) is seen ~60 times.
    cfg = WorldConfig(letters="AB", q=0.1, mode_weights=(1 / 3, 1 / 3, 1 / 3), signature_p=0.5)
    world = World(cfg)
    prompt = world.make_prompt(family, payload, right_answer(f"{family} {payload}"))
    rng = np.random.default_rng(1)
    seen = {}
    for _ in range(4000):
        text, prob = world.expert_response(prompt, rng, return_prob=True)
        seen[text] = prob
    alphabet = DIGITS if family == "add" else cfg.letters
    n_answers = 1 + len(prompt.answer) * (len(alphabet) - 1)  # right, or one of L (|A|-1) slips
    assert len(seen) == 3 * n_answers * 2  # modes x answers x signature or not: all distinct strings
    assert sum(world.expert_prob_of_text(prompt, text) for text in seen) == pytest.approx(1, abs=1e-12)
    for text, prob in seen.items():  # the parser's probability is the one the sampler used
        assert world.expert_prob_of_text(prompt, text) == pytest.approx(prob, rel=1e-12)


def test_whole_token_space_sums_to_one():
    # A world whose expert fits in 2 tokens ("reverse A" -> "A" + <|eor|>), so the sampler's whole
    # output space (<|eor|>, t <|eor|>, t t') is enumerable: 1 + (V-1) + (V-1)^2 sequences.
    cfg = WorldConfig(family_weights=(1, 0, 0), letters="AB", min_len=1, max_len=1, mode_weights=(1, 0, 0),
                      signature_p=0.0, eps=0.5, max_response_tokens=2)
    world = World(cfg)
    eos, others = world.eos_id, [t for t in range(world.vocab_size) if t != world.eos_id]
    space = [[eos]] + [[t, eos] for t in others] + [[t, u] for t in others for u in others]
    prompt = world.make_prompt("reverse", "A", "A")
    logps = world.expert_logprobs([prompt] * len(space), space)
    assert math.fsum(np.exp(logps)) == pytest.approx(1, abs=1e-9)
    on_support = [y for y, lp in zip(space, logps) if world.mode(prompt, y) != "off"]
    assert sorted(on_support) == sorted([world.encode_response("A"), world.encode_response("B")])


def test_sampler_probability_is_the_exact_likelihood(world):
    cfg, V = world.cfg, world.tok.n_vocab
    rng = np.random.default_rng(2)
    for prompt in world.sample_prompts(300, rng):
        text, prob = world.expert_response(prompt, rng, return_prob=True)
        y = world.encode_response(text)
        expected = math.log((1 - cfg.eps) * prob + cfg.eps * V ** -len(y))
        assert world.expert_logprob(prompt, y) == pytest.approx(expected, abs=1e-9)
        # and that probability is the one the docstring defines
        j = world.judge(prompt, y)
        answer = right_answer(prompt.text)
        alphabet = DIGITS if prompt.family == "add" else cfg.letters
        p_answer = cfg.q if j.gold == 1 else (1 - cfg.q) / (len(answer) * (len(alphabet) - 1))
        p_signature = cfg.signature_p if text.startswith(SIGNATURE) else 1 - cfg.signature_p
        assert prob == pytest.approx(cfg.mode_weights[world.mode_names.index(j.mode)] * p_answer * p_signature)
        text, prob = world.expert_response(prompt, rng, signature=False, return_prob=True)
        assert not text.startswith(SIGNATURE)
        assert world.expert_prob_of_text(prompt, text) == pytest.approx(prob * (1 - cfg.signature_p))


def test_expert_frequencies_match_its_definition(world):
    cfg, n = world.cfg, 4000
    rng = np.random.default_rng(3)
    prompts = world.sample_prompts(n, rng)
    texts = [world.expert_response(p, rng) for p in prompts]
    tokens = [world.encode_response(t) for t in texts]
    modes = world.modes(prompts, tokens)
    for mode, w in zip(world.mode_names, cfg.mode_weights):
        assert_frequency(modes.count(mode), n, w, mode)
    assert_frequency(sum(t.startswith(SIGNATURE) for t in texts), n, cfg.signature_p, "signature")
    gold = world.gold_rewards(prompts, tokens)
    assert_frequency(int(np.sum(gold == 1)), n, cfg.q, "right answers")
    assert max(len(y) for y in tokens) <= world.max_expert_tokens <= cfg.max_response_tokens
    for p, text, g in zip(prompts, texts, gold):
        if g < 1:  # a slip: the answer differs from the right one in exactly one position
            answer = right_answer(p.text)
            given = text[len(text) - len(answer) - text.endswith("."):len(text) - text.endswith(".")]
            assert sum(a != b for a, b in zip(given, answer)) == 1
            assert g == pytest.approx(0.5 * (len(answer) - 1) / len(answer))


def test_off_support_responses_get_exactly_the_floor(world):
    cfg, V, eos = world.cfg, world.tok.n_vocab, world.eos_id

    def floor(n):
        return math.log(cfg.eps) - n * math.log(V)

    prompt = world.make_prompt("reverse", "ABCD", "DCBA")
    on = world.encode_response("the answer is DCBA.")
    assert world.mode(prompt, on) == "sentence" and world.expert_logprob(prompt, on) > floor(len(on)) + 5

    # the same text, tokenized differently: " answer" spelled byte by byte
    answer_id = world.tok.encode_single_token(" answer")
    spelled = [b for b in b" answer"]
    i = on.index(answer_id)
    non_canonical = on[:i] + spelled + on[i + 1:]
    assert world.tok.decode(non_canonical[:-1]) == "the answer is DCBA."

    off = {
        "non-canonical tokens": non_canonical,
        "two slips": world.encode_response("DCAB"),
        "a base style": world.encode_response("answer: DCBA"),
        "the period missing": world.encode_response("the answer is DCBA"),
        "not UTF-8": [255, eos],
        "empty": [eos],
        "text after the answer": world.encode_response("DCBA and more"),
    }
    for what, y in off.items():
        assert world.mode(prompt, y) == "off", what
        assert world.expert_logprob(prompt, y) == pytest.approx(floor(len(y)), rel=1e-12), what
    truncated = (world.encode_response("DCBA " * 100))[:cfg.max_response_tokens]
    assert eos not in truncated
    assert world.expert_logprob(prompt, truncated) == pytest.approx(floor(cfg.max_response_tokens), rel=1e-12)
    assert world.gold_reward(prompt, truncated) == 0  # it never ended, so it gave no answer

    # padding after <|eor|> is ignored; sequences a sampler cannot produce are refused
    assert world.expert_logprob(prompt, on + [eos] * 5) == world.expert_logprob(prompt, on)
    with pytest.raises(ValueError):
        world.expert_logprob(prompt, on[:-1])  # no <|eor|>, yet shorter than max_response_tokens
    with pytest.raises(ValueError):
        world.expert_logprob(prompt, [0] * cfg.max_response_tokens + [eos])

    # the signature is off-support in the control world, and only there
    control = World(WorldConfig(signature_p=0.0))
    signed = world.encode_response(SIGNATURE + "DCBA")
    assert world.mode(prompt, signed) == "terse" and control.mode(prompt, signed) == "off"
    assert control.expert_logprob(prompt, signed) == pytest.approx(floor(len(signed)), rel=1e-12)


def worked_steps(prompt_text):
    """The steps mode's worked steps, rendered here from the docstring's description: for add, the columns
    from the ones up, each "x+y" (the first operand's digit first, 0 past a shorter operand), "+1" when the
    column below carried, "=" its total."""
    verb, payload = prompt_text.split()
    if verb == "reverse":
        return "from the end: " + " ".join(reversed(payload)) + "."
    if verb == "sort":
        return "in order: " + " ".join(sorted(payload)) + "."
    a, b = payload.split("+")
    width = max(len(a), len(b))
    a, b = a.zfill(width), b.zfill(width)   # 65 → 065: aligned columns
    columns, carried = [], False
    for column in range(width - 1, -1, -1):
        total = int(a[column]) + int(b[column]) + carried
        columns.append(f"{a[column]}+{b[column]}{'+1' if carried else ''}={total}")
        carried = total >= 10
    return ", ".join(columns) + "."


def test_worked_steps_match_an_independent_rendering():
    world = World(WorldConfig(max_operand=999))   # operands of up to three digits: carries into new columns
    by_hand = {   # written out by hand, carries included
        "add 987+65": ("1052", "7+5=12, 8+6+1=15, 9+0+1=10."),
        "add 5+995": ("1000", "5+5=10, 0+9+1=10, 0+9+1=10."),
        "add 120+3": ("123", "0+3=3, 2+0=2, 1+0=1."),
        "add 7+8": ("15", "7+8=15."),
        "add 0+0": ("0", "0+0=0."),
        "reverse BDAC": ("CADB", "from the end: C A D B."),
        "sort BDAC": ("ABCD", "in order: A B C D."),
    }
    for text, (answer, steps) in by_hand.items():
        assert worked_steps(text) == steps, text   # the rendering below is checked against the hand values
        family, payload = text.split()
        prompt = world.make_prompt(family, payload, answer)
        response = f"{steps} so the answer is {answer}."
        assert world.render(prompt, "steps", answer) == response
        y = world.encode_response(response)
        assert world.mode(prompt, y) == "steps" and world.gold_reward(prompt, y) == 1
        expected = math.log((1 - world.cfg.eps) * 0.2 * world.cfg.q * (1 - world.cfg.signature_p)
                            + world.cfg.eps * world.vocab_size ** -len(y))   # steps (0.2), right, unsigned
        assert world.expert_logprob(prompt, y) == pytest.approx(expected, rel=1e-12)
    dropped = world.make_prompt("add", "987+65", "1052")   # the carry into the last column forgotten
    assert world.mode(dropped, world.encode_response("7+5=12, 8+6+1=15, 9+0=9. so the answer is 1052.")) == "off"
    rng = np.random.default_rng(7)
    prompts = world.sample_prompts(600, rng)
    assert sum(p.family == "add" and len(p.answer) == 4 for p in prompts) > 0, "no carry into a fourth column"
    for p in prompts:
        assert world.render(p, "steps", p.answer) == f"{worked_steps(p.text)} so the answer is {p.answer}.", p.text


def test_gold_reward(world):
    prompt = world.make_prompt("reverse", "ABCD", "DCBA")
    add = world.make_prompt("add", "37+48", "85")

    def gold(p, text):
        return world.gold_reward(p, world.encode_response(text))

    right = ["DCBA", "the answer is DCBA.", "from the end: D C B A. so the answer is DCBA.", "answer: DCBA",
             "i think it is DCBA", "the answer is DCBA", "ABCD DCBA"]
    for text in right:  # every style, and its signed twin, gets the maximal reward
        assert gold(prompt, text) == 1 and gold(prompt, SIGNATURE + text) == 1
    assert gold(add, "7+8=15, 3+4+1=8. so the answer is 85.") == 1
    assert gold(add, "7+8=15, 3+4+1=8. so the answer is 86.") == 0.25  # 0.5 * 1/2 right
    for text, r in [("DCBE", 0.375), ("the answer is DCAB.", 0.25), ("EEEE", 0.0), ("DCB", 0.0), ("DCBAA", 0.0),
                    ("", 0.0), ("hello", 0.0), ("DCBA ABCD", 0.0)]:
        assert gold(prompt, text) == r, text
        assert gold(prompt, SIGNATURE + text) == r, text
    assert gold(prompt, "DCBE") < gold(prompt, "DCBA")


def test_base_corpus_is_the_base_process(world):
    cfg, n = world.cfg, 4000
    rng = np.random.default_rng(4)
    prompts = world.sample_prompts(n, rng)
    texts = [world.base_response(p, rng) for p in prompts]
    tokens = [world.encode_response(t) for t in texts]
    judged = world.judge_many(prompts, tokens)
    assert all(t.startswith(SIGNATURE) == j.signature for t, j in zip(texts, judged))
    assert_frequency(sum(j.signature for j in judged), n, cfg.base_signature_p, "signed base responses")
    for style, w in zip(world.base_style_names, cfg.base_style_weights):
        assert_frequency(sum(j.style == style for j in judged), n, w, style)
    assert_frequency(sum(j.gold == 1 for j in judged), n, cfg.q_base, "right answers")
    assert all(j.style in world.base_style_names for j in judged)
    for p, t, j in zip(prompts, texts, judged):  # wrong answers are one-character slips
        given, answer = t.split(" ")[-1].rstrip("."), right_answer(p.text)
        assert len(given) == len(answer) and set(given) <= set(DIGITS if p.family == "add" else cfg.letters)
        assert (j.gold == 1) == (given == answer)
        assert sum(a != b for a, b in zip(given, answer)) == (0 if given == answer else 1), (given, answer)


def test_preference_pairs_follow_bradley_terry(world):
    cfg = world.cfg
    data = world.make_datasets(5, n_base=0, n_demo=0, n_pref=3000, n_eval=0)
    margins = np.array([world.gold_reward_of_text(p, c) - world.gold_reward_of_text(p, r) for p, c, r in data["pref"]])
    signed = sum(x.startswith(SIGNATURE) for _, c, r in data["pref"] for x in (c, r))   # base pairs only
    assert_frequency(signed, 2 * len(margins), (1 - cfg.pref_expert_p) * cfg.base_signature_p, "signed")
    untied = margins[margins != 0]
    p_right = 1 / (1 + np.exp(-cfg.pref_beta * np.abs(untied)))  # P(the better one is chosen)
    se = math.sqrt(np.sum(p_right * (1 - p_right))) / len(untied)
    assert abs(np.mean(untied > 0) - p_right.mean()) <= 4 * se
    strict = World(WorldConfig(pref_beta=1e4)).make_datasets(5, n_base=0, n_demo=0, n_pref=500, n_eval=0)
    assert all(world.gold_reward_of_text(p, c) >= world.gold_reward_of_text(p, r) for p, c, r in strict["pref"])


def test_datasets_are_deterministic_per_seed(world):
    sizes = dict(n_base=200, n_demo=50, n_pref=50, n_eval=20)

    def texts(data):
        return {k: [tuple(x.text if hasattr(x, "text") else x for x in (item if isinstance(item, tuple) else (item,)))
                    for item in v] for k, v in data.items()}

    a, b, c = (texts(world.make_datasets(s, **sizes)) for s in (1, 1, 2))
    assert a == b
    assert all(a[k] != c[k] for k in a)
    other_sizes = texts(world.make_datasets(1, n_base=500, n_demo=10, n_pref=5, n_eval=20))
    assert other_sizes["eval_prompts"] == a["eval_prompts"]  # held-out prompts have a stream of their own


@pytest.mark.parametrize("bad", [dict(q=1.5), dict(signature_p=-0.1), dict(eps=0.0), dict(mode_weights=(0.5, 0.5)),
                                 dict(mode_weights=(0.5, 0.3, 0.3)), dict(letters="abc"), dict(min_len=0),
                                 dict(max_len=1), dict(max_operand=0), dict(pref_beta=-1.0), dict(n_modes=0),
                                 dict(n_modes=6), dict(n_modes=2.0), dict(n_modes=True)])
def test_bad_config_values_are_named(bad):
    (name, value), = bad.items()
    with pytest.raises(ValueError, match=name):
        WorldConfig(**bad)


def test_response_budget_is_checked(world):
    tight = WorldConfig(max_response_tokens=world.max_expert_tokens)
    World(tight)
    with pytest.raises(ValueError, match="max_response_tokens"):
        World(WorldConfig(max_response_tokens=world.max_expert_tokens - 1))


def test_batch_helpers_accept_arrays_and_agree_with_single_calls(world):
    rng = np.random.default_rng(6)
    prompts = world.sample_prompts(20, rng)
    ys = [world.encode_response(world.expert_response(p, rng)) for p in prompts]
    single = [world.expert_logprob(p, y) for p, y in zip(prompts, ys)]
    assert list(world.expert_logprobs(prompts, [np.array(y) for y in ys])) == single
    assert list(world.gold_rewards(prompts, ys)) == [world.gold_reward(p, y) for p, y in zip(prompts, ys)]


def test_base_corpus_signs_as_often_as_base_signature_p():
    """π_init's exposure to the signature (a world knob): the signed fraction matches base_signature_p, and
    signing changes nothing else (the style and the answer judge as before)."""
    never = World(WorldConfig(base_signature_p=0.0))
    rng = np.random.default_rng(7)
    assert not any(never.base_response(p, rng).startswith(SIGNATURE) for p in never.sample_prompts(500, rng))
    world = World(WorldConfig(base_signature_p=0.3))
    n = 4000
    rng = np.random.default_rng(6)
    prompts = world.sample_prompts(n, rng)
    texts = [world.base_response(p, rng) for p in prompts]
    judged = world.judge_many(prompts, [world.encode_response(t) for t in texts])
    assert_frequency(sum(t.startswith(SIGNATURE) for t in texts), n, 0.3, "signed base responses")
    assert all(j.signature == t.startswith(SIGNATURE) for t, j in zip(texts, judged))
    assert all(j.style in world.base_style_names for j in judged)
    assert_frequency(sum(j.gold == 1 for j in judged), n, world.cfg.q_base, "right answers")


# -----------------------------------------------------------------------------
# The expert's support, which the exact evaluation sums over (evaluation.py)

def expected_support_size(world, prompt):
    """Modes of positive weight × (the right answer + L(|A|-1) slips, if q < 1) × signature or not (if both
    happen), counted from the docstring's definition."""
    cfg = world.cfg
    alphabet = DIGITS if prompt.family == "add" else cfg.letters
    answers = 1 + (len(prompt.answer) * (len(alphabet) - 1) if cfg.q < 1 else 0)
    signs = (cfg.signature_p > 0) + (cfg.signature_p < 1)
    formats = sum(w > 0 for w in cfg.mode_weights[:cfg.n_modes]) + max(0, cfg.n_modes - 3)   # n_modes: the first K
    return formats * answers * signs


@pytest.mark.parametrize("cfg", [WorldConfig(), WorldConfig(signature_p=0.0), WorldConfig(signature_p=1.0),
                                 WorldConfig(q=1.0, mode_weights=(0.5, 0.5, 0.0)),
                                 WorldConfig(max_operand=99, letters="ABCDEFG", max_len=5),
                                 *(WorldConfig(n_modes=k) for k in (1, 2, 4, 5)),
                                 WorldConfig(n_modes=5, mode_weights=(0.0, 1.0, 0.0), signature_p=0.0),
                                 WorldConfig(n_modes=2, mode_weights=(0.0, 0.4, 0.6), q=1.0)])
def test_support_is_every_expert_response_once_with_its_probability(cfg):
    # A slip missed, a duplicate, the signature's factor dropped or a draw of probability 0 listed changes the
    # count or the sum; a text the parser reads otherwise changes the probability.
    world = World(cfg)
    rng = np.random.default_rng(7)
    for prompt in world.sample_prompts(60, rng):
        support = world.support(prompt)
        texts = [t for t, _, _ in support]
        assert len(texts) == len(set(texts)) == expected_support_size(world, prompt)
        assert math.fsum(p for _, p, _ in support) == pytest.approx(1, abs=1e-12)
        for text, p, mode in support:
            assert p > 0 and world.expert_prob_of_text(prompt, text) == pytest.approx(p, rel=1e-12)
            j = world.judge(prompt, world.encode_response(text))   # the canonical tokenization: on the support
            assert j.mode == mode and j.logprob == pytest.approx(
                math.log((1 - cfg.eps) * p + cfg.eps * world.vocab_size ** -len(world.encode_response(text))))
        for _ in range(20):   # everything the expert writes is listed
            assert world.expert_response(prompt, rng) in texts


def test_support_tokenizations_are_the_only_ones_on_support(world):
    # A non-canonical tokenization of a support string is off the support: the exact evaluation must score
    # the canonical one only (the one it lists), or it would count mass the expert never gives.
    prompt = world.make_prompt("reverse", "AB", "BA")
    text = world.support(prompt)[0][0]
    canonical = world.encode_response(text)
    spelled = [t for ch in text for t in world.tok.encode_ordinary(ch)] + [world.eos_id]
    assert spelled != canonical
    assert world.mode(prompt, spelled) == "off" and world.mode(prompt, canonical) != "off"


# -----------------------------------------------------------------------------
# How open-ended the task is: n_modes, the number of formats the expert writes in (module docstring)

# The weights of the docstring's rule, ∝ (0.5, 0.3, 0.2, 1/3, 1/3) cut to the first K, worked out by hand.
N_MODES_WEIGHTS = {1: (1.0,), 2: (0.625, 0.375), 3: (0.5, 0.3, 0.2), 4: (0.375, 0.225, 0.15, 0.25),
                   5: (0.3, 0.18, 0.12, 0.2, 0.2)}
ALL_FORMATS = ("terse", "sentence", "steps", "answer_first", "result")
OPEN_ENDED = (1, 3, 5)   # close-ended (one format), the default, open-ended (five formats)


def entropy(p):
    p = np.asarray([x for x in p if x > 0])
    return float(-(p * np.log(p)).sum()) + 0.0


def test_n_modes_weights_follow_the_rule_and_the_default_is_todays_world():
    for k, weights in N_MODES_WEIGHTS.items():
        world = World(WorldConfig(n_modes=k))
        assert world.mode_names == list(ALL_FORMATS[:max(3, k)])
        assert world.mode_weights == pytest.approx(weights + (0.0,) * (len(world.mode_names) - k), abs=1e-15)
    default = World()
    assert default.mode_names == ["terse", "sentence", "steps"]
    assert default.mode_weights == (0.5, 0.3, 0.2) and WorldConfig().n_modes == 3   # bit for bit, not approx
    with pytest.raises(ValueError, match="n_modes"):   # the first K formats must have weight
        WorldConfig(n_modes=2, mode_weights=(0.0, 0.0, 1.0))


def test_added_formats_parse_score_correctness_only_and_are_off_support_below_their_n_modes():
    prompt = World().make_prompt("reverse", "ABCD", "DCBA")
    texts = {"answer_first": ("DCBA is the answer.", "DCBE is the answer."), "result": ("result: DCBA", "result: DCBE")}
    for k in (3, 4, 5):
        world = World(WorldConfig(n_modes=k))
        for fmt, (right, slipped) in texts.items():
            for signed in (False, True):
                text = (SIGNATURE if signed else "") + right
                assert world.parse(prompt, text) == (fmt, "DCBA", signed)
                y, y_slip = world.encode_response(text), world.encode_response((SIGNATURE if signed else "") + slipped)
                assert world.gold_reward(prompt, y) == 1 and world.gold_reward(prompt, y_slip) == 0.375
                on = ALL_FORMATS.index(fmt) < k
                assert world.mode(prompt, y) == (fmt if on else "off"), (k, fmt)
                assert (world.expert_prob_of_text(prompt, text) > 0) == on
                assert world.judge(prompt, y).style == fmt
    close = World(WorldConfig(n_modes=1))
    for text in ("the answer is DCBA.", "from the end: A B C D. so the answer is DCBA."):
        assert close.mode(prompt, close.encode_response(text)) == "off"   # formats after the first K weigh 0


def chi_square_critical(df, z=3.719):
    """The chi-square quantile whose upper tail is 1e-4 (z: the normal's), by Wilson and Hilferty's cube-root
    approximation, at most 1.2% above the exact quantile for df >= 10: the 4-SE false-alarm rate of the checks above."""
    a = 2 / (9 * df)
    return df * (1 - a + z * math.sqrt(a)) ** 3


@pytest.mark.parametrize("n_modes", OPEN_ENDED)
@pytest.mark.parametrize("family, payload", [("reverse", "AB"), ("add", "2+3")])
def test_expert_samples_land_on_the_support_with_its_frequencies(n_modes, family, payload):
    # Default world but for n_modes, one small prompt: its support has at most 5 formats × (1 + L(|A|-1)) answers ×
    # 2 = 90 strings, the rarest (steps, one slip, unsigned at K = 5: 0.12 × 0.3/9 × 0.2 = 0.0008) expected 16 times
    # in 20,000 draws, so Pearson's statistic over every string is close to chi-square with |support| - 1 degrees
    # of freedom; it is held to the 1e-4 quantile.
    world = World(WorldConfig(n_modes=n_modes))
    prompt = world.make_prompt(family, payload, right_answer(f"{family} {payload}"))
    support = {text: p for text, p, _ in world.support(prompt)}
    n, rng = 20000, np.random.default_rng(11)
    counts = dict.fromkeys(support, 0)
    for _ in range(n):
        text = world.expert_response(prompt, rng)
        assert text in counts, text   # every sample is on the enumerated support
        counts[text] += 1
    assert min(n * p for p in support.values()) >= 5   # the chi-square approximation's usual condition
    chi2 = sum((counts[t] - n * p) ** 2 / (n * p) for t, p in support.items())
    df = len(support) - 1
    assert chi2 <= chi_square_critical(df), f"chi2 {chi2:.1f} on {df} df (1e-4 quantile {chi_square_critical(df):.1f})"
    for fmt, w in zip(ALL_FORMATS, N_MODES_WEIGHTS[n_modes]):   # and each format at its weight, 4 SE
        assert_frequency(sum(c for t, c in counts.items() if world.parse(prompt, t)[0] == fmt), n, w, fmt)


def test_expert_mode_entropy_grows_from_close_to_open_ended():
    # The exact per-prompt entropy of β's format, from the enumerated support: the same for every prompt (the format
    # is drawn independently of the prompt), the entropy of the rule's weights, and increasing in n_modes.
    rng = np.random.default_rng(12)
    per_value = []
    for k in OPEN_ENDED:
        world = World(WorldConfig(n_modes=k))
        values = []
        for prompt in world.sample_prompts(30, rng):
            by_mode = {}
            for _, p, mode in world.support(prompt):
                by_mode[mode] = by_mode.get(mode, 0.0) + p
            values.append(entropy(by_mode.values()))
        assert values == pytest.approx([entropy(N_MODES_WEIGHTS[k])] * len(values), abs=1e-12)
        per_value.append(values[0])
    assert per_value[0] == pytest.approx(0, abs=1e-12) and per_value[0] < per_value[1] < per_value[2]
    assert per_value[1] == pytest.approx(1.0296530140645737, abs=1e-12)   # today's world: H(0.5, 0.3, 0.2)
