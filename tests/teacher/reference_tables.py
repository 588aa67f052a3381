"""
docs/TEACHING.md's reference outcomes, as tables, from the runs its commands write (teacher-only, like TEACHING.md).

    python tests/teacher/reference_tables.py DEFAULT_DIR EXPERIMENTS_DIR [docs/TEACHING.md]

DEFAULT_DIR: the ten-seed default run (its seeds 0-3 are the "default" columns); EXPERIMENTS_DIR: the folder that
holds the four-seed runs out_q05, out_kl05, out_kl0, out_tiny and out_nosig (TEACHING.md's commands). Prints each
experiment's tables in the form TEACHING.md has them (mean ± sample standard deviation over seeds 0-3), to paste
there (given a third argument, the file, replaces them there in place); tests/test_teaching.py then says which sentences of the predictions no
longer hold.
"""
import re
import json
import os
import statistics
import sys

SEEDS = range(4)


def load(run_dir):
    runs = []
    for s in SEEDS:
        with open(os.path.join(run_dir, f"seed_{s}", "metrics.json"), encoding="utf-8") as f:
            runs.append(json.load(f))
    return runs


def cell(values, digits):
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}".replace("-", "−")


def bon(run, rm, n, key="gold_reward", world=None):
    table = run["control"]["bon"] if world == "control" else run["bon"]
    return table[rm][key][table[rm]["n"].index(n)]


def table(head, rows):
    return "\n".join(["| " + " | ".join(head).strip() + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def ex3(default, q05):
    rows = [("demonstrations' gold reward", lambda r: r["demonstrations"]["gold_reward"]),
            ("expert's gold reward (evaluation prompts)", lambda r: r["policies"]["expert"]["gold_reward"]),
            ("π_SFT's gold reward", lambda r: r["policies"]["sft"]["gold_reward"])]
    rows += [(f"Best-of-{n}, learned Init-SFT", lambda r, n=n: bon(r, "init_sft", n)) for n in (1, 4, 16)]
    rows += [(f"Best-of-{n} gain over N = 1, learned Init-SFT",
              lambda r, n=n: bon(r, "init_sft", n) - bon(r, "init_sft", 1)) for n in (4, 16)]
    return table(["", "default (q = 0.7)", "q = 0.5"],
                 [[name, cell([f(r) for r in default], 3), cell([f(r) for r in q05], 3)] for name, f in rows])


EX8_POLICIES = ("rkl_seq", "rkl_tok", "js", "rkl_seq_scalar", "rkl_oracle", "js_oracle", "fkl_fairl", "rl_init_sft")


def ex8(kl0, default, kl05):
    runs = (kl0, default, kl05)
    sft = lambda key: cell([r["policies"]["sft"][key] for r in default], 2)
    out = [f"π_SFT: forward KL {sft('forward_kl')}, reverse KL {sft('reverse_kl')}, off-support "
           f"{sft('off_support')}, mode entropy {sft('mode_entropy')}.", ""]
    for metrics in (("kl_sft", "reverse_kl"), ("forward_kl", "off_support"), ("mode_entropy",)):
        head = ["policy"] + [f"{m} ({c})" for m in metrics for c in ("0", "0.05", "0.5")]
        out += [table(head, [[f"`{p}`"] + [cell([r["policies"][p][m] for r in rs], 2) for m in metrics
                                            for rs in runs] for p in EX8_POLICIES]), ""]
    return "\n".join(out)


EX10_POLICIES = ("init", "sft", "rkl_seq", "rkl_oracle", "js_oracle")


def ex10(default, tiny):
    out = []
    for metrics, digits in ((("forward_kl", "reverse_kl"), (2, 2)),
                            (("off_support", "mode_entropy", "gold_reward"), (2, 2, 3))):
        head = ["policy"] + [f"{m} ({c})" for m in metrics for c in ("default", "tiny")]
        rows = []
        for p in EX10_POLICIES:
            rows.append([f"`{p}`"] + [c for m, d in zip(metrics, digits)
                                      for c in [cell([r["policies"][p][m] for r in rs], d) for rs in (default, tiny)]])
        out += [table(head, rows), ""]
    out += ["Share of each mode among all responses (mode_freq):", ""]
    head = ["policy"] + [f"{m} ({c})" for m in ("terse", "steps", "length") for c in ("default", "tiny")]
    rows = []
    for p in EX10_POLICIES:
        row = [f"`{p}`"]
        for m in ("terse", "steps"):
            row += [cell([r["policies"][p]["mode_freq"][m] for r in rs], 2) for rs in (default, tiny)]
        row += [cell([r["policies"][p]["length"] for r in rs], 1) for rs in (default, tiny)]
        rows.append(row)
    return "\n".join(out + [table(head, rows)])


EX12_RMS = ("init_sft", "init_demo", "sft_demo", "init_sft_optimum", "init_demo_optimum")


def ex12(default, nosig):
    rows = []
    for rm in EX12_RMS:
        for n in (4, 16):
            rows.append([f"{rm}, N = {n}", cell([bon(r, rm, n) for r in default], 3),
                         cell([bon(r, rm, n, world="control") for r in default], 3),
                         cell([bon(r, rm, n) for r in nosig], 3)])
    rows.append(["demonstrations", cell([r["demonstrations"]["gold_reward"] for r in default], 3),
                 cell([r["control"]["demonstrations"]["gold_reward"] for r in default], 3),
                 cell([r["demonstrations"]["gold_reward"] for r in nosig], 3)])
    rows.append(["signed share of Init-SFT's Best-of-16 picks",
                 cell([bon(r, "init_sft", 16, "signature") for r in default], 2),
                 cell([bon(r, "init_sft", 16, "signature", world="control") for r in default], 2),
                 cell([bon(r, "init_sft", 16, "signature") for r in nosig], 2)])
    same = all(r[key][rm] == d["control"][key][rm] for r, d in zip(nosig, default)   # every reward model the
               for key in ("bon", "bon_plausible") for rm in d["control"][key])          # control world has
    return (table(["Best-of-N gold reward", "default, signed world", "default, its control world",
                   "`--signature_p=0`"], rows)
            + f"\n\n(`--signature_p=0`'s main world equals the default run's control world on every seed: {same}.)")


TABLE_LINE = re.compile(r"^(\||π_SFT: |Share of each mode|\(`--signature_p=0`|$)")


def replace_tables(doc, n, text):
    """doc with exercise n's reference tables (the run of table lines after its command) replaced by text."""
    start = doc.index(f"\n### {n}. ")
    start = doc.index("#### Reference outcome", start)
    start = doc.index("```\n", doc.index("```bash", start) + 7) + 4   # past the command's code block
    lines = doc[start:].split("\n")
    k = 0
    while not (lines[k] and TABLE_LINE.match(lines[k])):   # to the first table line, past the columns' note
        k += 1
    first = k
    while k < len(lines) and TABLE_LINE.match(lines[k]):
        k += 1
    while k > first and lines[k - 1] == "":
        k -= 1
    return doc[:start] + "\n".join(lines[:first] + text.strip("\n").split("\n") + lines[k:])


def main(default_dir, experiments_dir, *write):
    default = load(default_dir)
    other = {name: load(os.path.join(experiments_dir, name))
             for name in ("out_q05", "out_kl05", "out_kl0", "out_tiny", "out_nosig")}
    tables = {3: ex3(default, other["out_q05"]), 8: ex8(other["out_kl0"], default, other["out_kl05"]),
              10: ex10(default, other["out_tiny"]), 12: ex12(default, other["out_nosig"])}
    if write:
        assert len(write) == 1, "usage: python tests/teacher/reference_tables.py DEFAULT_DIR EXPERIMENTS_DIR [TEACHING.md]"
        with open(write[0], encoding="utf-8") as f:
            doc = f.read()
        for n, text in tables.items():
            doc = replace_tables(doc, n, text)
        with open(write[0], "w", encoding="utf-8") as f:
            f.write(doc)
    for n, text in tables.items():
        print(f"### {n}\n\n{text}\n")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
