"""The PaliGemma prompt tokenizer, with openpi's exact prompt formats for π0 and π0.5.

openpi (``models/tokenizer.py``, ``PaligemmaTokenizer``) builds prompts as follows; this module
reproduces it token for token given the same sentencepiece model:

* cleaning: ``prompt.strip().replace("_", " ").replace("\\n", " ")`` (case is kept);
* π0 (no state): ``[BOS] + encode(cleaned) + encode("\\n")`` -- the newline, tokenized on its own,
  is the "start of answer" token;
* π0.5 discrete state: the state (normalized to [-1, 1]) is discretised into 256 bins with
  ``np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1`` (values below -1 give -1, values at or
  above the last edge give 255) and the prompt ``"Task: {cleaned}, State: {s0 s1 ...};\\nAction: "``
  is encoded in one piece with BOS;
* padding with token 0 (mask False) to ``max_len``; longer prompts are truncated with a warning.

The sentencepiece model (``paligemma_tokenizer.model``, big_vision's) is read from a local path;
nothing is downloaded. `find_tokenizer` looks for it in a checkpoint directory.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import sentencepiece

logger = logging.getLogger(__name__)

TOKENIZER_FILENAMES = ("paligemma_tokenizer.model", "tokenizer.model")
"""File names `find_tokenizer` accepts, in order of preference."""
STATE_BINS = 256
"""Number of bins of the discretised π0.5 state."""


def discretize_state(state: np.ndarray) -> np.ndarray:
    """int[d] bin indices of a [-1, 1]-normalized state, as openpi's π0.5 tokenizer makes them.

    Values below -1 map to -1 and values >= 1 - 2/256 to 255 (no clipping, as in openpi).
    """
    state = np.asarray(state)
    if state.ndim != 1:
        raise ValueError(f"state must be 1-D (one robot state vector), got shape {state.shape}")
    edges = np.linspace(-1, 1, STATE_BINS + 1)[:-1]
    return np.digitize(state, bins=edges) - 1


def clean_prompt(prompt: str) -> str:
    """openpi's prompt cleaning: strip, underscores and newlines to spaces (case kept)."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


def format_state_prompt(prompt: str, state: np.ndarray) -> str:
    """The π0.5 discrete-state prompt text: "Task: {prompt}, State: {bins};\\nAction: "."""
    state_str = " ".join(str(int(b)) for b in discretize_state(state))
    return f"Task: {clean_prompt(prompt)}, State: {state_str};\nAction: "


class PaligemmaTokenizer:
    """Tokenizes prompts (and, for π0.5 with discrete state input, the state) to a fixed length.

    Args:
      model_path: path of the sentencepiece model (PaliGemma's ``paligemma_tokenizer.model``).
      max_len: length every output is padded / truncated to (openpi: 48 for π0, 200 for π0.5).
    """

    def __init__(self, model_path: str | os.PathLike, max_len: int = 48):
        if max_len < 1:
            raise ValueError(f"max_len must be positive, got {max_len}")
        path = pathlib.Path(model_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"sentencepiece tokenizer model not found at {path}; pass the path of "
                "paligemma_tokenizer.model (openpi caches it at ~/.cache/openpi/big_vision/)"
            )
        self._max_len = max_len
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        # The "\n" token is appended to every π0 prompt; encode it once.
        self._newline = list(self._sp.encode("\n"))

    @property
    def max_len(self) -> int:
        return self._max_len

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode_unpadded(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        """The token ids before padding / truncation (BOS first)."""
        if state is not None:
            return list(self._sp.encode(format_state_prompt(prompt, state), add_bos=True))
        return list(self._sp.encode(clean_prompt(prompt), add_bos=True)) + self._newline

    def tokenize(self, prompt: str, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (tokens int32[max_len], mask bool[max_len]); padding is token 0 with mask False.

        state: None for π0 (the state goes to the action expert); the [-1, 1]-normalized state
        vector for π0.5 with discrete state input (it becomes part of the prompt text).
        """
        ids = self.encode_unpadded(prompt, state)
        if len(ids) > self._max_len:
            logger.warning(
                "Token length (%d) exceeds max length (%d), truncating. Consider increasing the "
                "`max_token_len` in your model config if this happens frequently.",
                len(ids),
                self._max_len,
            )
            ids = ids[: self._max_len]
        tokens = np.zeros(self._max_len, np.int32)
        tokens[: len(ids)] = ids
        mask = np.zeros(self._max_len, bool)
        mask[: len(ids)] = True
        return tokens, mask

    def decode(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> str:
        """Text of the (masked) tokens; BOS and padding are dropped."""
        tokens = np.asarray(tokens)
        if mask is not None:
            tokens = tokens[np.asarray(mask, bool)]
        return self._sp.decode([int(t) for t in tokens])


def find_tokenizer(checkpoint_dir: str | os.PathLike) -> pathlib.Path:
    """Path of the PaliGemma sentencepiece model shipped with a checkpoint.

    Looks for TOKENIZER_FILENAMES in the checkpoint directory, its ``assets/`` (recursively) and its
    parent's ``assets/`` (openpi keeps assets next to the step directories' parent); raises
    FileNotFoundError listing the places searched.
    """
    root = pathlib.Path(checkpoint_dir).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"checkpoint directory {root} does not exist")
    searched: list[pathlib.Path] = []
    for base in (root, root / "assets", root.parent / "assets"):
        searched.append(base)
        if not base.is_dir():
            continue
        for name in TOKENIZER_FILENAMES:
            if (base / name).is_file():
                return base / name
        if base.name == "assets":
            for name in TOKENIZER_FILENAMES:
                found = sorted(base.rglob(name))
                if found:
                    return found[0]
    places = ", ".join(str(p) for p in searched)
    raise FileNotFoundError(
        f"no sentencepiece tokenizer ({' or '.join(TOKENIZER_FILENAMES)}) in checkpoint {root}; "
        f"searched {places} (assets recursively). Copy big_vision's paligemma_tokenizer.model into "
        f"{root / 'assets'} or pass its path to PaligemmaTokenizer directly."
    )


def train_tiny_tokenizer(
    prompts: Sequence[str], path: str | pathlib.Path, vocab_size: int = 512
) -> pathlib.Path:
    """A small word-level sentencepiece model over `prompts` (for random-weight tiny models)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    words = sorted({w for p in prompts for w in clean_prompt(p).lower().split()})
    lines = [clean_prompt(p).lower() for p in prompts] * 20 + words * 5
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_prefix=str(path.with_suffix("")),
        vocab_size=min(vocab_size, 64 + 4 * len(words)),
        model_type="word",
        hard_vocab_limit=False,
        pad_id=0,
        bos_id=2,
        eos_id=1,
        unk_id=3,
        minloglevel=2,
    )
    return path.with_suffix(".model")
