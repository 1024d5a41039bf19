"""PaligemmaTokenizer: openpi's π0 / π0.5 prompt formats, padding, truncation, find_tokenizer.

A tiny sentencepiece model is trained here (no downloads), with PaliGemma's special ids
(pad 0, eos 1, bos 2, unk 3), "\\n" as its own piece and no dummy prefix, like Gemma's tokenizer.
"""

import io
import logging
import random

import numpy as np
import pytest
import sentencepiece

from pirl.models.tokenizer import (
    PaligemmaTokenizer,
    clean_prompt,
    discretize_state,
    find_tokenizer,
    format_state_prompt,
)

MAX_LEN = 48


def _training_lines(n: int = 400) -> list[str]:
    rng = random.Random(0)
    words = [
        "pick",
        "up",
        "the",
        "red",
        "blue",
        "bowl",
        "plate",
        "cup",
        "put",
        "it",
        "on",
        "in",
        "drawer",
        "open",
        "close",
        "top",
        "left",
        "of",
        "and",
        "place",
        "mug",
    ]
    syllables = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "ve", "zu", "bra", "cle", "dri", "fo"]
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(120)]
    lines = []
    for _ in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))
        state = " ".join(str(rng.randint(-1, 255)) for _ in range(rng.randint(1, 8)))
        lines.append(f"Task: {text.capitalize()}, State: {state};")
        lines.append(f"Action: {text}")
    return lines


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_training_lines()),
        model_writer=proto,
        vocab_size=200,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("sp") / "paligemma_tokenizer.model"
    path.write_bytes(proto.getvalue())
    return path


@pytest.fixture(scope="module")
def sp(model_path):
    return sentencepiece.SentencePieceProcessor(model_file=str(model_path))


@pytest.fixture(scope="module")
def tokenizer(model_path):
    return PaligemmaTokenizer(model_path, max_len=MAX_LEN)


def test_pi0_format_cleans_keeps_case_and_appends_newline_token(tokenizer, sp):
    tokens, mask = tokenizer.tokenize("  Pick_up the\nred bowl \n")
    expected = [2, *sp.encode("Pick up the red bowl"), *sp.encode("\n")]
    assert sp.encode("\n") == [sp.piece_to_id("\n")]  # the newline is a single token
    assert tokens.dtype == np.int32 and mask.dtype == np.bool_
    assert tokens.shape == mask.shape == (MAX_LEN,)
    n = len(expected)
    np.testing.assert_array_equal(tokens[:n], expected)
    assert mask[:n].all() and not mask[n:].any()
    assert (tokens[n:] == 0).all()
    assert tokenizer.decode(tokens, mask) == "Pick up the red bowl\n"
    # Case is kept (openpi's π0 tokenizer does not lowercase).
    assert clean_prompt(" A_b\nC ") == "A b C"


def test_pi05_discrete_state_prompt(model_path, sp):
    tokenizer = PaligemmaTokenizer(model_path, max_len=200)  # openpi's π0.5 max_token_len
    state = np.array([-1.0, 0.0, 0.999, 1.0, -1.5, 0.5, -0.99], np.float32)
    # Bins of width 2/256 from -1: -1 -> 0, 0 -> 128, 0.999 -> 255, 1.0 -> 255 (top bin is open),
    # -1.5 -> -1 (openpi does not clip), 0.5 -> 192, -0.99 -> 1.
    np.testing.assert_array_equal(discretize_state(state), [0, 128, 255, 255, -1, 192, 1])
    text = "Task: Pick up the mug, State: 0 128 255 255 -1 192 1;\nAction: "
    assert format_state_prompt(" Pick_up the mug", state) == text
    tokens, mask = tokenizer.tokenize(" Pick_up the mug", state)
    expected = [2, *sp.encode(text)]
    np.testing.assert_array_equal(tokens[: len(expected)], expected)
    assert tokens.shape == (200,) and mask.sum() == len(expected) and (tokens[len(expected) :] == 0).all()
    assert tokenizer.decode(tokens, mask) == text


def test_truncation_warns_and_exact_length_does_not(tokenizer, model_path, caplog):
    long_prompt = " ".join(["pick up the red bowl and put it on the plate"] * 10)
    full = tokenizer.encode_unpadded(long_prompt)
    assert len(full) > MAX_LEN
    with caplog.at_level(logging.WARNING, logger="pirl.models.tokenizer"):
        tokens, mask = tokenizer.tokenize(long_prompt)
    assert "exceeds max length" in caplog.text
    np.testing.assert_array_equal(tokens, full[:MAX_LEN])
    assert mask.all()

    caplog.clear()
    exact = PaligemmaTokenizer(model_path, max_len=len(full))
    with caplog.at_level(logging.WARNING, logger="pirl.models.tokenizer"):
        tokens, mask = exact.tokenize(long_prompt)
    assert caplog.text == "" and mask.all()
    np.testing.assert_array_equal(tokens, full)


def test_bad_inputs_fail_clearly(tmp_path, tokenizer, model_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.model"):
        PaligemmaTokenizer(tmp_path / "nothere.model")
    with pytest.raises(ValueError, match="max_len"):
        PaligemmaTokenizer(model_path, max_len=0)
    with pytest.raises(ValueError, match="1-D"):
        tokenizer.tokenize("x", np.zeros((2, 3)))


def test_find_tokenizer(tmp_path, model_path, sp):
    ckpt = tmp_path / "pi0_libero" / "30000"
    nested = ckpt / "assets" / "physical-intelligence" / "libero"
    nested.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="assets"):
        find_tokenizer(ckpt)
    (nested / "paligemma_tokenizer.model").write_bytes(model_path.read_bytes())
    found = find_tokenizer(ckpt)
    assert found == nested / "paligemma_tokenizer.model"
    # A file directly in the checkpoint dir wins over nested assets.
    (ckpt / "tokenizer.model").write_bytes(model_path.read_bytes())
    assert find_tokenizer(ckpt) == ckpt / "tokenizer.model"
    tokens, _ = PaligemmaTokenizer(find_tokenizer(ckpt), max_len=8).tokenize("pick")
    assert tokens.tolist()[: 2 + len(sp.encode("pick"))] == [2, *sp.encode("pick"), *sp.encode("\n")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_tokenizer(tmp_path / "missing")
