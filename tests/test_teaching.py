"""
docs/TEACHING.md's predictions checked against its own reference outcomes (and the few numbers of docs/RESULTS.md
and data/world.py they rest on). Teacher-only, like TEACHING.md: it quotes the predictions a student is asked to
make (a student copy has no TEACHING.md, and these tests skip there).

Each experiment (3, 8, 10, 12) has a check_exN(doc) that, for every sentence its predictions and diagnostics call
good,
- builds the sentence from the reference tables' cells (the numbers it quotes) and asserts that TEACHING.md holds
  it verbatim (up to line breaks), so that editing the prose or the table without the other fails, and
- asserts the predicate the sentence claims, computed from the tables' means and standard deviations: an order, a
  "clearly", a "within the seed spread". A regeneration of the tables that changes a verdict fails here until the
  text is updated.
"Clearly" is TEACHING.md's own rule (asserted verbatim too): two means differ clearly when their difference
exceeds the sum of their standard deviations; otherwise the difference is within the seed spread.
test_a_changed_verdict_fails and test_a_changed_sentence_fails plant one of each in a copy of the text and expect
the check to fail.
No pipeline runs: the tests read files, and data/world.py's defaults for the numbers worked out on paper.
"""
import itertools
import math
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHING = os.path.join(ROOT, "docs", "TEACHING.md")
teacher_only = pytest.mark.skipif(not os.path.exists(TEACHING),
                                  reason="docs/TEACHING.md is teacher-only: a student copy has none")

RULE = ("Two means differ clearly when their difference exceeds the sum of their standard deviations (the mean ± sd "
        "bars do not touch); otherwise the difference is within the seed spread, and no prediction about its "
        "direction can be judged from these runs.")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def flat(text):
    return " ".join(text.split())


def says(doc, sentence):
    """The sentence is in the document, word for word (line breaks aside)."""
    assert flat(sentence) in flat(doc), f"the document no longer says:\n  {flat(sentence)}"


# -----------------------------------------------------------------------------
# the reference outcomes' tables

class Cell:
    """A table cell "mean ± sd": m and s as numbers, ms and ss as written."""

    def __init__(self, ms, ss):
        self.ms, self.ss = ms, ss
        self.m, self.s = float(ms.replace("−", "-")), float(ss)

    def __repr__(self):
        return f"{self.ms} ± {self.ss}"


CELL = re.compile(r"^([+−-]?\d+(?:\.\d+)?) ± (\d+(?:\.\d+)?)$")


def clear(a, b):
    """TEACHING.md's rule: the two means differ by more than the sum of their standard deviations."""
    return round(abs(a.m - b.m), 9) > round(a.s + b.s, 9)


def experiment(doc, n):
    """Exercise n's section of TEACHING.md: from its heading to the next exercise's."""
    m = re.search(rf"^### {n}\. .*?(?=^### |^## |\Z)", doc, re.M | re.S)
    assert m, f"docs/TEACHING.md has no section '### {n}. '"
    return m[0]


def reference(doc, n):
    """{row: {column: Cell or text}} of every table in exercise n's reference outcome, merged by row."""
    section = experiment(doc, n)
    assert "#### Reference outcome" in section, f"exercise {n} has no reference outcome"
    rows = {}
    lines = section.split("#### Reference outcome", 1)[1].split("\n")
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|[-| ]+\|", lines[i + 1].strip()):
            head = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
            for row in itertools.takewhile(lambda r: r.startswith("|"), lines[i + 2:]):
                cells = [c.strip() for c in row.strip().strip("|").split("|")]
                for column, cell in zip(head[1:], cells[1:]):
                    m = CELL.match(cell)
                    rows.setdefault(cells[0].strip("`"), {})[column] = Cell(m[1], m[2]) if m else cell
    assert rows, f"exercise {n}: no table in its reference outcome"
    return rows


def effects(text):
    """{(effect, condition): {column: verdict text}} of docs/RESULTS.md's "Every expected effect" table."""
    section = text.split("## Every expected effect", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.split("\n") if line.startswith("|")]   # the header, the rule, the rows
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {(cells[0], cells[1]): dict(zip(head[2:], cells[2:]))
            for cells in ([c.strip() for c in line.strip().strip("|").split("|")] for line in lines[2:])}


def policies(text):
    """{policy name: {column: Cell}} of docs/RESULTS.md's "The policies" table, rows named by their `name`."""
    section = text.split("## The policies", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.split("\n") if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.search(r"\(`([\w.]+)`\)$", cells[0])[1]
        out[name] = {h: Cell(*CELL.match(c).groups()) for h, c in zip(head[1:], cells[1:]) if CELL.match(c)}
    return out


def fmt(x, digits=2):
    return f"{x:.{digits}f}"


def world():
    from data.world import WorldConfig
    return WorldConfig()


def logit(p):
    return math.log(p / (1 - p))


# -----------------------------------------------------------------------------
# exercise 3: a less reliable demonstrator

def on_paper(cfg):
    """E[0.5 (L − 1)/L] of a slip, from data/world.py's draws: the families 1/3 each, letter answers of L letters
    uniform on min_len..max_len, add answers the sum of two operands uniform on 0..max_operand."""
    lengths = range(cfg.min_len, cfg.max_len + 1)
    letters = sum((n - 1) / n for n in lengths) / len(lengths)
    ops = range(cfg.max_operand + 1)
    two_digits = sum(a + b >= 10 for a in ops for b in ops)
    add = two_digits / len(ops) ** 2 * (1 / 2)
    return letters, two_digits, len(ops) ** 2, add, 0.5 * (2 * letters + add) / 3


def check_ex3(doc):
    cfg = world()
    assert cfg.family_weights == (1 / 3, 1 / 3, 1 / 3) and (cfg.min_len, cfg.max_len, cfg.max_operand) == (2, 4, 9)
    letters, two, pairs, add, slip = on_paper(cfg)
    fractions = " + ".join(f"{n - 1}/{n}" for n in range(cfg.min_len, cfg.max_len + 1))
    says(doc, f"A reverse or sort answer has L letters, L uniform on {{2, 3, 4}} (`--min_len` to `--max_len`), so "
              f"E[(L − 1)/L] = ({fractions})/3 = {fmt(letters, 3)}.")
    says(doc, f"two digits in the {two} of the {pairs} pairs whose sum is 10 or more, one digit otherwise, and a slip "
              f"in a one-digit answer scores 0, so E[(L − 1)/L] = {two / pairs:.2f} · 1/2 = {fmt(add, 3)} for add.")
    says(doc, f"Overall E[0.5 (L − 1)/L] = 0.5 · (2 · {fmt(letters, 3)} + {fmt(add, 3)})/3 = {fmt(slip, 4)}, and")
    gold = lambda q: q + slip * (1 - q)
    says(doc, f"E[r*] = q + {fmt(slip, 4)} (1 − q): {fmt(gold(0.5), 3)} at q = 0.5; {fmt(gold(cfg.q), 3)} at "
              f"q = {cfg.q}")
    says(doc, f"{fmt(gold(cfg.q_base), 3)} at q = q_base = {cfg.q_base}.")
    expert = policies(read("docs/RESULTS.md"))["expert"]["gold reward"]
    says(doc, f"(the expert's {expert} in [RESULTS.md](RESULTS.md#the-policies) agrees)")
    assert abs(expert.m - gold(cfg.q)) <= expert.s + 5e-4, "the expert's measured gold reward is not the paper's"
    says(doc, f"a gap of logit(q) − logit(q_base) = {fmt(logit(cfg.q) - logit(cfg.q_base))} nats at q = {cfg.q}, "
              f"{fmt(logit(0.5) - logit(cfg.q_base))} at q = 0.5, 0 at q = q_base.")
    signature = math.log(cfg.signature_p / cfg.base_signature_p) - math.log((1 - cfg.signature_p) /
                                                                            (1 - cfg.base_signature_p))
    says(doc, f"log(0.8/0.1) − log(0.2/0.9) = {fmt(signature)} nats")

    t = reference(doc, 3)
    D, Q = "default (q = 0.7)", "q = 0.5"
    demo, sft = t["demonstrations' gold reward"], t["π_SFT's gold reward"]
    says(doc, f"The demonstrations' gold reward is the value on paper: {demo[Q]} at q = 0.5 and {demo[D]} at "
              f"q = 0.7 in the reference outcome.")
    for column, q in ((Q, 0.5), (D, cfg.q)):
        assert abs(demo[column].m - gold(q)) <= demo[column].s, f"demonstrations at q = {q}: not the value on paper"
    says(doc, f"π_SFT's gold reward falls with the demonstrations' and stays below them by 0.06 to 0.10: "
              f"{sft[Q].ms} against {demo[Q].ms} at q = 0.5, {sft[D].ms} against {demo[D].ms} at q = 0.7.")
    assert sft[Q].m < sft[D].m and clear(sft[Q], sft[D]), "π_SFT's gold reward does not clearly fall with q"
    for column in (Q, D):
        assert 0.06 <= round(demo[column].m - sft[column].m, 2) <= 0.10, f"{column}: π_SFT not 0.06–0.10 below"
    b1, b4, b16 = (t[f"Best-of-{n}, learned Init-SFT"] for n in (1, 4, 16))
    g4, g16 = (t[f"Best-of-{n} gain over N = 1, learned Init-SFT"] for n in (4, 16))
    for column in (Q, D):   # the gain rows are the differences of the rows above (paired over seeds)
        assert abs(g4[column].m - (b4[column].m - b1[column].m)) < 0.0015
        assert abs(g16[column].m - (b16[column].m - b1[column].m)) < 0.0015
    says(doc, f"In the reference outcome Best-of-4 by the learned Init-SFT model gains less over N = 1 at q = 0.5 "
              f"in the mean (+{g4[Q].ms} against +{g4[D].ms}), but the difference is within the seed spread "
              f"(± {g4[Q].ss} at q = 0.5): judge the reasoning, not the direction.")
    assert g4[Q].m < g4[D].m and not clear(g4[Q], g4[D])
    says(doc, f"Best-of-16 is below Best-of-4 in both worlds, past its peak: clearly at q = 0.7 ({b16[D].ms} against "
              f"{b4[D].ms}), within the seed spread at q = 0.5 ({b16[Q].ms} against {b4[Q].ms}).")
    assert b16[D].m < b4[D].m and clear(b16[D], b4[D]) and b16[Q].m < b4[Q].m and not clear(b16[Q], b4[Q])
    says(doc, "The reference outcome has no run at q = q_base: judge the reasoning only.")
    assert not any("q = 0.2" in column for row in t.values() for column in row)
    says(doc, f"close to {fmt(gold(0.5), 3)}; π_SFT's `gold` below it ({sft[Q].ms} in the reference).")


# -----------------------------------------------------------------------------
# exercise 8: a stronger leash

KL_COEFS = ("0", "0.05", "0.5")
DRIFTING = ("rkl_seq_scalar", "fkl_fairl")
NEAR = ("rkl_seq", "rkl_tok", "js", "rkl_oracle", "js_oracle")
METRICS = ("kl_sft", "reverse_kl", "forward_kl", "off_support", "mode_entropy")


def check_ex8(doc):
    import afd_mini
    t = reference(doc, 8)
    at = lambda policy, metric: [t[policy][f"{metric} ({c})"] for c in KL_COEFS]
    arrows = lambda cells: " → ".join(c.ms for c in cells)
    down = lambda cells: all(a.m > b.m for a, b in zip(cells, cells[1:]))
    up = lambda cells: all(a.m < b.m for a, b in zip(cells, cells[1:]))
    sft = re.search(r"^π_SFT: forward KL (\S+) ± (\S+), reverse KL (\S+) ± (\S+), off-support (\S+) ± (\S+), "
                    r"mode entropy (\S+) ± (\S+)\.$", experiment(doc, 8), re.M)
    assert sft, "exercise 8's reference outcome no longer states π_SFT's numbers in the form this test reads"
    sft_entropy = Cell(sft[7], sft[8])

    weighed = [s.name for s in afd_mini.STAGES if "kl_coef" in s.reads]
    listed = re.search(r"\*\*Predictions\.\*\* With kl_coef = 0\.5 every stage that reads `kl_coef` \(([^)]*)\)",
                       experiment(doc, 8))
    assert listed and sorted(re.findall(r"`(\w+)`", listed[1])) == sorted(weighed), \
        "exercise 8's predictions list other stages than those that read --kl_coef"
    absent = ["pg_control", "pg_frozen", "fkl_iw", "fkl_oracle", "fkl_iw_oracle"]
    says(doc, "`pg_control`, `pg_frozen`, `fkl_iw`, `fkl_oracle` and `fkl_iw_oracle` are not in the tables: no "
              "prediction about them can be judged from these runs.")
    assert set(t) == set(weighed) - set(absent) | {"rl_init_sft"}, f"the tables list {sorted(t)}"

    s, f = at("rkl_seq_scalar", "kl_sft"), at("fkl_fairl", "kl_sft")
    says(doc, f"`kl_sft` shrinks from 0 to 0.05 to 0.5 for `rkl_seq_scalar` ({arrows(s)}) and `fkl_fairl` "
              f"({arrows(f)}).")
    assert down(s) and down(f)
    says(doc, f"Each step is clear for `rkl_seq_scalar`; for `fkl_fairl` the step from 0 to 0.05 is within the seed "
              f"spread ({f[0]} against {f[1]}) and the step from 0.05 to 0.5 is clear.")
    assert clear(s[0], s[1]) and clear(s[1], s[2]) and not clear(f[0], f[1]) and clear(f[1], f[2])

    fairl_entropy = at("fkl_fairl", "mode_entropy")
    says(doc, f"For both, the forward KL, the reverse KL and the off-support rate fall from 0 to 0.05 to 0.5, and the "
              f"mode entropy rises towards SFT's {sft_entropy.ms} (for `fkl_fairl` only from 0.05 to 0.5: "
              f"{', '.join(c.ms for c in fairl_entropy)}).")
    for policy in DRIFTING:
        assert all(down(at(policy, m)) for m in ("forward_kl", "reverse_kl", "off_support")), policy
        assert all(c.m <= sft_entropy.m for c in at(policy, "mode_entropy"))
    assert up(at("rkl_seq_scalar", "mode_entropy"))
    assert fairl_entropy[0].m == fairl_entropy[1].m < fairl_entropy[2].m
    forward, reverse, entropy = (at("rkl_seq_scalar", m) for m in ("forward_kl", "reverse_kl", "mode_entropy"))
    says(doc, f"From 0 to 0.5 the off-support rate falls clearly for both; the forward KL ({forward[0].ms} → "
              f"{forward[2].ms}), the reverse KL ({reverse[0].ms} → {reverse[2].ms}) and the mode entropy "
              f"({entropy[0].ms} → {entropy[2].ms}) change clearly only for `rkl_seq_scalar`, while those of "
              f"`fkl_fairl` move within their seed spread.")
    for policy in DRIFTING:
        assert clear(at(policy, "off_support")[0], at(policy, "off_support")[2]), policy
    for metric in ("forward_kl", "reverse_kl", "mode_entropy"):
        assert clear(*at("rkl_seq_scalar", metric)[::2]) and not clear(*at("fkl_fairl", metric)[::2]), metric

    says(doc, "`rkl_seq`, `rkl_tok`, `js`, `rkl_oracle` and `js_oracle` stay within 0.5 nats of π_SFT (`kl_sft`) at "
              "every kl_coef, and none of their five numbers in the tables changes clearly between the three runs.")
    assert all(c.m <= 0.5 for p in NEAR for c in at(p, "kl_sft"))
    changed = {(p, m) for p in NEAR for m in METRICS
               if any(clear(a, b) for a, b in itertools.combinations(at(p, m), 2))}
    assert not changed, f"clear changes among the policies near π_SFT: {changed}"
    oracle = at("rkl_oracle", "kl_sft")
    says(doc, f"That includes the oracle: its `kl_sft` is {oracle[0].ms}, {oracle[1].ms} and {oracle[2].ms} at "
              f"kl_coef = 0, 0.05 and 0.5, so the pull towards π_SFT that π* implies at convergence does not show "
              f"in 30 iterations.")

    says(doc, "`rl_init_sft` does not change: it reads `--rm_kl_coef`, and its stage is reused (the same numbers in "
              "all three runs).")
    assert all(len({c.ms + c.ss for c in at("rl_init_sft", m)}) == 1 for m in METRICS)
    assert [s.name for s in afd_mini.STAGES if "rm_kl_coef" in s.reads] == ["rl_init_sft"] \
        and "rl_init_sft" not in weighed

    # the diagnostics: they must not fire on the reference outcome
    says(doc, f"A wrong penalty sign shows where the penalty bites: `rkl_seq_scalar` or `fkl_fairl` further from SFT "
              f"(a larger `kl_sft`) at 0.5 than at 0, where the reference has {s[2].ms} against {s[0].ms} and "
              f"{f[2].ms} against {f[0].ms}.")
    assert s[2].m < s[0].m and clear(s[2], s[0]) and f[2].m < f[0].m and clear(f[2], f[0])
    says(doc, f"The oracle is no such sign: its `kl_sft` moves by less than the seed spread, and in the reference it "
              f"is a little larger at 0.5 than at 0 ({oracle[2].ms} against {oracle[0].ms}).")
    assert oracle[2].m > oracle[0].m and not any(clear(a, b) for a, b in itertools.combinations(oracle, 2))
    says(doc, "`fkl_fairl`'s step there is within the seed spread even over four seeds.")


def test_the_fairl_numbers_are_those_of_results_md():
    """README idea 6 and TEACHING.md's exercise 8 quote docs/RESULTS.md's ten-seed FAIRL numbers."""
    results = read("docs/RESULTS.md")
    forward = {name: row["KL(β‖π)"].ms for name, row in policies(results).items()}
    beaten = effects(results)[("SFT still beats the importance weight e^h on forward KL (exact: π_SFT has a lower "
                               "forward KL than fkl_iw_oracle)", "forward KL")]["seeds 0–9"]
    assert beaten.startswith("**holds** +0.313"), beaten
    says(read("README.md"), f"over ten seeds `fkl_oracle` ends at a forward KL of {forward['fkl_oracle']} and "
                            f"`fkl_fairl` (learned h) at {forward['fkl_fairl']}, against π_SFT's {forward['sft']}")
    says(read("README.md"), f"It does not collapse (forward KL {forward['fkl_iw_oracle']} exact, {forward['fkl_iw']} "
                            f"learned), but SFT, which weighs every demonstration 1, still beats it by 0.31 nats.")
    if os.path.exists(TEACHING):
        says(read("docs/TEACHING.md"),
             f"In the ten-seed reference run FAIRL ends at a forward KL of {forward['fkl_fairl']} (learned h) and "
             f"{forward['fkl_oracle']} (exact h, `fkl_oracle`) against π_SFT's {forward['sft']}; the importance "
             f"weight e^h, the forward KL's own gradient, does not collapse (`fkl_iw` {forward['fkl_iw']}, "
             f"`fkl_iw_oracle` {forward['fkl_iw_oracle']}), but SFT still beats it by 0.31 nats")


# -----------------------------------------------------------------------------
# exercise 10: a model too small for the expert

def check_ex10(doc):
    t = reference(doc, 10)
    get = lambda policy, metric, model: t[policy][f"{metric} ({model})"]
    D, T = "default", "tiny"

    off, fwd, gold = (lambda m, metric=metric: get("sft", metric, m) for metric in ("off_support", "forward_kl",
                                                                                     "gold_reward"))
    says(doc, f"Against the default model, π_SFT's off-support rises from {off(D).ms} to {off(T).ms}, its forward KL "
              f"from {fwd(D).ms} to {fwd(T).ms}, and its gold reward falls from {gold(D).ms} to {gold(T).ms}, all "
              f"clearly.")
    assert off(T).m > off(D).m and fwd(T).m > fwd(D).m and gold(T).m < gold(D).m
    assert clear(off(T), off(D)) and clear(fwd(T), fwd(D)) and clear(gold(T), gold(D))
    steps, entropy = (lambda m, metric=metric: get("sft", metric, m) for metric in ("steps", "mode_entropy"))
    says(doc, f"It never writes the steps mode correctly ({steps(T).ms}, against {steps(D).ms} with the default "
              f"model), so its mode entropy, which counts on-support responses only, falls from {entropy(D).ms} to "
              f"{entropy(T).ms}.")
    assert steps(T).m == 0 < steps(D).m and entropy(T).m < entropy(D).m and clear(entropy(T), entropy(D))
    init = lambda m: get("init", "off_support", m)
    says(doc, f"π_init is worse too (off-support {init(T).ms} against {init(D).ms}).")
    assert init(T).m > init(D).m and clear(init(T), init(D))

    o = lambda metric, m=T: get("rkl_oracle", metric, m)
    s = lambda metric, m=T: get("sft", metric, m)
    says(doc, f"With the tiny model the oracle writes more terse answers than π_SFT ({o('terse').ms} against "
              f"{s('terse').ms}), has a far lower mode entropy ({o('mode_entropy').ms} against "
              f"{s('mode_entropy').ms}), shorter responses ({o('length').ms} against {s('length').ms} tokens) and a "
              f"reverse KL of {o('reverse_kl').ms} against π_SFT's {s('reverse_kl').ms}, all clearly.")
    assert o("terse").m > s("terse").m and clear(o("terse"), s("terse"))
    for metric in ("mode_entropy", "length", "reverse_kl"):
        assert o(metric).m < s(metric).m and clear(o(metric), s(metric)), metric
    says(doc, f"Its off-support rate is only a little below π_SFT's ({o('off_support').ms} against "
              f"{s('off_support').ms}, within the seed spread): it goes down by saying little, not by leaving the "
              f"floor.")
    assert o("off_support").m < s("off_support").m and not clear(o("off_support"), s("off_support"))
    says(doc, f"With the default model it also drops the steps mode ({o('steps', D).ms} against π_SFT's "
              f"{s('steps', D).ms}, clearly); with the tiny one π_SFT writes no steps either, so there is none to "
              f"drop.")
    assert o("steps", D).m < s("steps", D).m and clear(o("steps", D), s("steps", D))
    assert o("steps").m == s("steps").m == 0

    j = lambda metric: get("js_oracle", metric, T)
    says(doc, f"It lowers the off-support rate below π_SFT's clearly ({j('off_support').ms} against "
              f"{s('off_support').ms}), as far as the oracle does (within the seed spread of its "
              f"{o('off_support').ms}), but keeps π_SFT's mode entropy ({j('mode_entropy').ms} against "
              f"{s('mode_entropy').ms}).")
    assert j("off_support").m < s("off_support").m and clear(j("off_support"), s("off_support"))
    assert not clear(j("off_support"), o("off_support")) and not clear(j("mode_entropy"), s("mode_entropy"))

    r = lambda metric: get("rkl_seq", metric, T)
    says(doc, f"With the tiny model `rkl_seq`'s off-support rate, mode entropy, forward KL and reverse KL are all "
              f"within the seed spread of π_SFT's (its reverse KL {r('reverse_kl').ms} against {s('reverse_kl').ms}).")
    assert not any(clear(r(metric), s(metric)) for metric in ("off_support", "mode_entropy", "forward_kl",
                                                              "reverse_kl"))
    says(doc, "The reference lists neither `rkl_tok`, `js`, `rkl_seq_scalar` nor `pg_control`: no prediction about "
              "them, or about a learned discriminator against the control, can be judged from it")
    assert not {"rkl_tok", "js", "rkl_seq_scalar", "pg_control"} & set(t)

    lead = [o("forward_kl", m).m - s("forward_kl", m).m for m in (D, T)]
    cut = [s("reverse_kl", m).m - o("reverse_kl", m).m for m in (D, T)]
    drop = [s("mode_entropy", m).m - o("mode_entropy", m).m for m in (D, T)]
    says(doc, f"SFT keeps the lowest forward KL in the table with both models, and its lead over the oracle grows "
              f"from {fmt(lead[0])} to {fmt(lead[1])} nats; the oracle's cut in reverse KL below SFT's grows from "
              f"{fmt(cut[0])} to {fmt(cut[1])} nats and in mode entropy from {fmt(drop[0])} to {fmt(drop[1])}.")
    for m in (D, T):
        assert min(t, key=lambda p: get(p, "forward_kl", m).m) == "sft", m
    assert lead[1] > lead[0] > 0 and cut[1] > cut[0] > 0 and drop[1] > drop[0] > 0
    gap = [s("off_support", m).m - o("off_support", m).m for m in (D, T)]
    says(doc, f"Not in off-support: the oracle is {fmt(gap[0])} below π_SFT with either model.")
    assert fmt(gap[0]) == fmt(gap[1])

    # the diagnostics: they must not fire on the reference outcome
    says(doc, "the oracle with more terse answers, no more steps, shorter responses, lower mode entropy and no more "
              "off-support than π_SFT.")
    for m in (D, T):
        assert o("terse", m).m > s("terse", m).m and o("steps", m).m <= s("steps", m).m, m
        assert o("length", m).m < s("length", m).m and o("mode_entropy", m).m < s("mode_entropy", m).m, m
        assert o("off_support", m).m <= s("off_support", m).m, m
    says(doc, f"in the reference π_SFT's mode entropy is above the oracle's with both models "
              f"({s('mode_entropy', D).ms} against {o('mode_entropy', D).ms}, {s('mode_entropy').ms} against "
              f"{o('mode_entropy').ms}).")


# -----------------------------------------------------------------------------
# exercise 12: the demonstrator's fingerprint

def check_ex12(doc):
    cfg = world()
    t = reference(doc, 12)
    S, C, Z = "default, signed world", "default, its control world", "--signature_p=0"
    bon = lambda name, n, world: t[f"{name}, N = {n}"][world]
    rewards = ("init_sft", "init_demo", "sft_demo", "init_sft_optimum", "init_demo_optimum")

    signature = math.log(cfg.signature_p / cfg.base_signature_p) - math.log((1 - cfg.signature_p) /
                                                                            (1 - cfg.base_signature_p))
    says(doc, f"In the idealised optima the signature is worth log(0.8/0.1) − log(0.2/0.9) = {fmt(signature)} nats, "
              f"more than the correctness gap ({fmt(logit(cfg.q) - logit(cfg.q_base))} nats at q = 0.7, exercise 3)")
    assert signature > logit(cfg.q) - logit(cfg.q_base)

    demo_opt = lambda n, w: bon("init_demo_optimum", n, w)
    sft_opt = lambda n, w: bon("init_sft_optimum", n, w)
    says(doc, f"Without the signature the exact optima pick at least as well: the Init-Demo optimum's Best-of-4 rises "
              f"from {demo_opt(4, S).ms} to {demo_opt(4, C).ms} (clearly), the Init-SFT optimum's from "
              f"{sft_opt(4, S).ms} to {sft_opt(4, C).ms} (within the seed spread), and at N = 16 both are level or "
              f"higher ({demo_opt(16, S).ms} → {demo_opt(16, C).ms}, {sft_opt(16, S).ms} → {sft_opt(16, C).ms}).")
    assert all(opt(n, C).m >= opt(n, S).m for opt in (demo_opt, sft_opt) for n in (4, 16))
    assert clear(demo_opt(4, C), demo_opt(4, S)) and not clear(sft_opt(4, C), sft_opt(4, S))

    d, s = (lambda n, w, name=name: bon(name, n, w) for name in ("init_demo", "init_sft"))
    says(doc, f"In the reference outcome the learned Init-Demo and Init-SFT models are level in both worlds "
              f"({d(4, S).ms} and {s(4, S).ms} at N = 4 with the signature, {d(4, C).ms} and {s(4, C).ms} without; "
              f"{d(16, S).ms} and {s(16, S).ms}, {d(16, C).ms} and {s(16, C).ms} at N = 16), every difference "
              f"within the seed spread.")
    assert not any(clear(d(n, w), s(n, w)) for n in (4, 16) for w in (S, C))
    verdicts = effects(read("docs/RESULTS.md"))
    less = verdicts[("heterogeneity: Best-of-N gains less with the Init-Demo reward model than with the Init-SFT one",
                     "all conditions")]["seeds 0–9"]
    shrinks = verdicts[("the Init-SFT advantage shrinks without the demonstrator's signature",
                        "all conditions")]["seeds 0–9"]
    seeds = re.search(r"(\d+)/(\d+)$", shrinks)
    says(doc, f"On ten seeds neither \"Init-Demo gains less than Init-SFT\" nor \"the Init-SFT advantage shrinks "
              f"without the demonstrator's signature\" holds: both are inconclusive, the second with {seeds[1]} of "
              f"{seeds[2]} seeds in its direction")
    assert less.startswith("*inconclusive*") and shrinks.startswith("*inconclusive*") and seeds[2] == "10"
    signed = t["signed share of Init-SFT's Best-of-16 picks"]
    says(doc, f"π_SFT signs as β does ({signed[S].ms} of Init-SFT's Best-of-16 picks are signed) and π_init has seen "
              f"the signature ({cfg.base_signature_p:.0%} of its corpus, `--base_signature_p`)")

    demos = t["demonstrations"]
    sd = lambda n, w: bon("sft_demo", n, w)
    says(doc, f"SFT-Demo is clearly the lowest in both worlds, and below the demonstrations: {sd(4, S).ms} and "
              f"{sd(4, C).ms} at N = 4, against {demos[S].ms} for the demonstrations.")
    for n, w in itertools.product((4, 16), (S, C)):
        assert all(clear(sd(n, w), bon(name, n, w)) and sd(n, w).m < bon(name, n, w).m
                   for name in rewards if name != "sft_demo"), (n, w)
        assert sd(n, w).m < demos[w].m and clear(sd(n, w), demos[w]), (n, w)
    says(doc, f"The exact Init-Demo optimum is the best reward in both worlds, clearly above the demonstrations and "
              f"the Init-SFT optimum: {demo_opt(4, S).ms} and {demo_opt(4, C).ms} at N = 4, {demo_opt(16, S).ms} "
              f"and {demo_opt(16, C).ms} at N = 16.")
    for n, w in itertools.product((4, 16), (S, C)):
        assert max(rewards, key=lambda name: bon(name, n, w).m) == "init_demo_optimum", (n, w)
        assert clear(demo_opt(n, w), demos[w]) and clear(demo_opt(n, w), sft_opt(n, w)), (n, w)
    says(doc, f"What fails is *learning* it: the learned Init-Demo model reaches {d(4, S).ms} and {d(4, C).ms} at "
              f"N = 4.")
    assert all(clear(d(4, w), demo_opt(4, w)) for w in (S, C))
    says(doc, f"Without the signature the signed share of Init-SFT's Best-of-16 picks falls from {signed[S].ms} to "
              f"{signed[C].ms}.")
    assert signed[C].m == 0 < signed[S].m

    never = re.search(r"Best-of-4 by the learned Init-SFT model: (−\d\.\d+) \[(−\d\.\d+), (−\d\.\d+)\] against the "
                      r"demonstrations \(does not hold", read("docs/RESULTS.md"))
    assert never, "docs/RESULTS.md no longer reports Best-of-4 by Init-SFT when π_init never saw the signature"
    says(doc, f"measures Best-of-4 by Init-SFT falling below the demonstrations there: {never[1]} [{never[2]}, "
              f"{never[3]}]")

    says(doc, "(`--signature_p=0`'s main world equals the default run's control world on every seed: True.)")
    assert all(row[C].ms + row[C].ss == row[Z].ms + row[Z].ss for row in t.values()), \
        "the --signature_p=0 column is not the default run's control world"
    says(doc, "learned Init-Demo level with Init-SFT in both panels, SFT-Demo still lowest.")


# -----------------------------------------------------------------------------

@teacher_only
def test_teaching_md_states_its_rule_for_a_clear_difference():
    says(read("docs/TEACHING.md"), RULE)


@teacher_only
@pytest.mark.parametrize("check", [check_ex3, check_ex8, check_ex10, check_ex12], ids=lambda c: c.__name__)
def test_every_good_prediction_is_what_the_reference_outcome_shows(check):
    check(read("docs/TEACHING.md"))


def replace_cell(doc, n, row, column, new):
    """doc with the cell (row, column) of exercise n's reference tables replaced by `new`."""
    section = experiment(doc, n)
    lines = section.split("\n")
    for i, line in enumerate(lines):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].strip("`") == row:
            rule = max(j for j in range(i) if re.fullmatch(r"\|[-| ]+\|", lines[j].strip()))
            head = [c.strip().strip("`") for c in lines[rule - 1].strip().strip("|").split("|")]
            if column not in head:   # the row of another table
                continue
            cells[head.index(column)] = new
            lines[i] = "| " + " | ".join(cells) + " |"
            return doc.replace(section, "\n".join(lines))
    raise AssertionError(f"no row {row} in exercise {n}")


@teacher_only
@pytest.mark.parametrize("check, n, row, column, new", [
    (check_ex3, 3, "π_SFT's gold reward", "q = 0.5", "0.563 ± 0.200"),          # the fall is no longer clear
    (check_ex8, 8, "js", "kl_sft (0.5)", "0.90 ± 0.05"),                      # a policy near SFT moves clearly
    (check_ex8, 8, "rkl_oracle", "kl_sft (0.5)", "0.30 ± 0.02"),              # the oracle clearly pulled back
    (check_ex10, 10, "rkl_seq", "off_support (tiny)", "0.40 ± 0.05"),         # rkl_seq clearly leaves the floor
    (check_ex12, 12, "sft_demo, N = 16", "default, signed world", "0.760 ± 0.066"),   # SFT-Demo not the lowest
], ids=["ex3", "ex8-near", "ex8-oracle", "ex10", "ex12"])
def test_a_changed_verdict_fails(check, n, row, column, new):
    doc = read("docs/TEACHING.md")
    check(doc)
    changed = replace_cell(doc, n, row, column, new)
    assert changed != doc
    with pytest.raises(AssertionError):
        check(changed)


@teacher_only
def test_a_changed_sentence_fails():
    doc = read("docs/TEACHING.md")
    sentence = "Each step is clear for `rkl_seq_scalar`;"
    assert sentence in doc
    with pytest.raises(AssertionError, match="no longer says"):
        check_ex8(doc.replace(sentence, "Each step is clear for both;"))


# -----------------------------------------------------------------------------
# the teacher's documents: linked from TEACHING.md's top, and pointing only at what exists

HANDOUTS = ["docs/HANDOUT.md", pytest.param("docs/RUBRIC.md", marks=teacher_only)]   # the rubric links TEACHING.md


@teacher_only
def test_teaching_md_links_the_handout_the_rubric_and_the_45_minute_lab():
    doc = read("docs/TEACHING.md")
    top = doc.split("\n## ", 1)[0]
    for link in ("(HANDOUT.md)", "(RUBRIC.md)", "(#a-45-minute-lab)"):   # test_docs checks where they lead
        assert link in top, f"TEACHING.md's top does not link {link}"
    assert re.search(r"^### A 45-minute lab$", doc, re.M)


@pytest.mark.parametrize("doc", HANDOUTS)
def test_handout_and_rubric_point_only_at_what_exists(doc):
    from test_docs import dangling_references
    if not os.path.exists(os.path.join(ROOT, doc)):
        pytest.skip(f"{doc} is not in this copy")
    problems = dangling_references(read(doc), os.path.dirname(doc))
    images = re.findall(r'<img src="([^"]+)"', read(doc))   # HTML images, for their size: test_docs skips them
    problems += [f"<img src={src}>: no file {os.path.dirname(doc)}/{src}" for src in images
                 if not os.path.isfile(os.path.join(ROOT, os.path.dirname(doc), src))]
    assert not problems, f"{doc}:\n" + "\n".join(problems)


@teacher_only
def test_exercise_13s_fit_at_w_half_is_what_teaching_md_says():
    """Exercise 13's Think: the Jensen–Shannon fit (w = 0.5) and w = 0.25 sit on one mode as TEACHING.md quotes,
    computed here, and w = 0.1 spreads out."""
    import numpy as np

    import figures
    doc, grid = read("docs/TEACHING.md"), np.linspace(-6, 6, 241)
    target = figures.bimodal_target(grid)
    fits = {w: figures.fit_gaussian(target, grid, w) for w in (0.1, 0.25, 0.5, 1.0)}
    says(doc, "The Jensen–Shannon fit sits on one mode, like the reverse KL's: μ = %.2f, σ = %.2f." % fits[0.5])
    says(doc, "It already lands on one mode at w = 0.25 (μ = %.2f, σ = %.2f); at w = 0.1 it spreads out." % fits[0.25])
    for w in (0.25, 0.5):
        assert abs(fits[w][0] - 2.0) < 0.1 and fits[w][1] < 1.2 * fits[1.0][1], w   # one mode, as narrow
    assert fits[0.1][1] > 2 * fits[1.0][1]   # spread
