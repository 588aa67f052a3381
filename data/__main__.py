"""
Show the world: python -m data

Prints samples of each kind (expert, base corpus, demonstrations, preference pairs) with what the
world knows about them (mode or style, signature, gold reward r*, exact log π_β in nats), and a few
statistics of the default datasets, with the time it takes to make them.
"""

import time
from collections import Counter

import numpy as np

import console
from data import World


def show(world, prompt, text):
    tokens = world.encode_response(text)
    j = world.judge(prompt, tokens)
    kind = j.mode if j.mode != "off" else f"off ({j.style})"
    print(f"  {prompt.text.strip():<16} -> {text!r:<52} {kind:<16} sig={int(j.signature)} "
          f"r*={j.gold:.3f} log π_β={j.logprob:8.2f} ({len(tokens)} tokens)")


def main():
    console.utf8_output()
    world = World()
    cfg = world.cfg
    print(f"world: {cfg}")
    print(f"tokenizer: {world.vocab_size} tokens, <|eor|> = {world.eos_id}; longest expert response "
          f"{world.max_expert_tokens} of max_response_tokens={cfg.max_response_tokens}")

    start = time.perf_counter()
    data = world.make_datasets(seed=0)
    seconds = time.perf_counter() - start
    print(f"make_datasets(seed=0): {', '.join(f'{k}={len(v)}' for k, v in data.items())} in {seconds:.2f} s\n")

    rng = np.random.default_rng(0)
    prompt = data["eval_prompts"][0]
    print(f"expert samples for one prompt (the same prompt, {world.mode_weights} over {world.mode_names}):")
    for _ in range(6):
        show(world, prompt, world.expert_response(prompt, rng))
    pieces = [world.tok.decode_single_token_bytes(t).decode() for t in world.encode_response(world.render(
        prompt, "steps", prompt.answer, signature=True))[:-1]]
    print(f"  its steps mode, tokenized: {'|'.join(pieces)}|<|eor|>")

    print("\nbase corpus (what π_init learns; off the expert's support unless terse):")
    for prompt, text in data["base"][:6]:
        show(world, prompt, text)

    print("\ndemonstrations:")
    for prompt, text in data["demos"][:6]:
        show(world, prompt, text)

    print("\npreference pairs (chosen, then rejected):")
    for prompt, chosen, rejected in data["pref"][:4]:
        show(world, prompt, chosen)
        show(world, prompt, rejected)

    print("\nstatistics of the datasets:")
    for name in ("base", "demos"):
        judged = [world.judge(p, world.encode_response(t)) for p, t in data[name]]
        gold = np.array([j.gold for j in judged])
        styles = Counter(j.style for j in judged)
        print(f"  {name:<6} mean r* {gold.mean():.3f}, right {np.mean(gold == 1):.3f}, "
              f"signed {np.mean([j.signature for j in judged]):.3f}, "
              f"off-support {np.mean([j.mode == 'off' for j in judged]):.3f}, "
              f"styles {dict(styles.most_common())}")
    margins = np.array([world.gold_reward_of_text(p, c) - world.gold_reward_of_text(p, r) for p, c, r in data["pref"]])
    print(f"  pref   chosen has the higher r* in {np.mean(margins > 0):.3f}, the lower in {np.mean(margins < 0):.3f}, "
          f"a tie in {np.mean(margins == 0):.3f}")


if __name__ == "__main__":
    main()
