"""afd-mini's data: the synthetic world (world.py) and its tokenizer (tokenizer.py).

    from data import World, WorldConfig, load_tokenizer
    world = World(WorldConfig())                    # loads the committed tokenizer
    data = world.make_datasets(seed=0)              # base corpus, demonstrations, preference pairs, eval prompts
    world.expert_logprob(prompt, response_tokens)   # exact log π_β(y|x)

`python -m data` prints samples of each kind; `python -m data.train_tokenizer` retrains the tokenizer.
"""

from data.tokenizer import EOR, load_tokenizer
from data.world import BASE_STYLE_NAMES, FAMILIES, MODE_NAMES, SIGNATURE, Judgement, Prompt, World, WorldConfig

__all__ = ["EOR", "load_tokenizer", "BASE_STYLE_NAMES", "FAMILIES", "MODE_NAMES", "SIGNATURE", "Judgement", "Prompt",
           "World", "WorldConfig"]
