"""Strings in, strings out: ``tinygpt.load(path).generate("ROMEO:", 200)``."""
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .generate import check_sampling
from .model import TinyGPT
from .tokenizer import CharTokenizer


class TextGenerator:
    """A model with its tokenizer, sampling text from text.

    >>> generator = TextGenerator(TinyGPT(3, d_model=8, n_heads=2), CharTokenizer("abc"))
    >>> len(generator.generate("ab", 5, seed=0))
    7
    """

    def __init__(self, model: TinyGPT, tokenizer: CharTokenizer):
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} characters, the model "
                             f"{model.config.vocab_size}")
        self.model, self.tokenizer = model, tokenizer

    def generate(self, prompt: str, max_new_tokens: int, temperature: float = 1.0, *,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 repetition_penalty: float = 1.0, stop: Union[str, Sequence[str], None] = None,
                 seed=None, on_text: Optional[Callable[[str], None]] = None) -> str:
        """The prompt followed by up to ``max_new_tokens`` sampled characters.

        Generation ends early where the new text first contains one of the ``stop`` strings;
        the stop string itself is left out. on_text(str) receives the new text as it comes,
        except for characters that may yet begin a stop string (those follow once they
        cannot). Sampling settings as in TinyGPT.generate.
        """
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"prompt must be a non-empty str, got {prompt!r}")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if not all(isinstance(s, str) and s for s in stops):
            raise ValueError(f"stop must be a non-empty str or a list of them, got {stop!r}")
        check_sampling(temperature, top_k, top_p, repetition_penalty)
        ids = np.array(self.tokenizer.encode(prompt), dtype=np.int64)
        text, sent = "", 0  # the new text, and how much of it on_text has seen

        def on_token(next_ids):
            nonlocal text, sent
            text += self.tokenizer.chars[int(next_ids[0])]
            if any(text.endswith(s) for s in stops):
                return True
            if on_text is not None:
                held = max((n for s in stops for n in range(len(s), 0, -1)
                            if text.endswith(s[:n])), default=0)
                if len(text) - held > sent:
                    on_text(text[sent:len(text) - held])
                    sent = len(text) - held
            return False

        self.model.generate(ids, max_new_tokens, temperature, top_k, seed, top_p=top_p,
                            repetition_penalty=repetition_penalty, on_token=on_token)
        stopped = next((s for s in stops if text.endswith(s)), None)
        if stopped is not None:
            text = text[:-len(stopped)]
        if on_text is not None and len(text) > sent:
            on_text(text[sent:])
        return prompt + text

    def __repr__(self):
        c = self.model.config
        return (f"TextGenerator({self.model.num_parameters():,} parameters, d_model {c.d_model}, "
                f"{c.n_layers} layers, vocab {c.vocab_size})")


def load(path) -> TextGenerator:
    """A TextGenerator from a checkpoint (.npz), a .safetensors file or a Hugging Face
    directory written by ``tinygpt export``."""
    from .export import load_model

    return TextGenerator(*load_model(path))
