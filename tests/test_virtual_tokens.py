"""labs.virtual_tokens: the glue prefix and prompt tuning share."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from labs.virtual_tokens import bind_inputs, check_context, init_token_ids, positions_from_mask


def config(init: str, P: int = 4, text: str = "a b c", seed: int = 0):
    return SimpleNamespace(init=init, num_virtual_tokens=P, init_text=text, seed=seed)


def tokenizer(text: str) -> dict:
    return {"input_ids": [10 + len(word) for word in text.split()]}


def test_text_ids_are_repeated_or_cut_to_p():
    assert init_token_ids(config("text", 7, "a bb ccc"), 100, tokenizer).tolist() == [11, 12, 13, 11, 12, 13, 11]
    assert init_token_ids(config("text", 2, "a bb ccc"), 100, tokenizer).tolist() == [11, 12]
    with pytest.raises(ValueError, match="no tokens"):
        init_token_ids(config("text", 3, "   "), 100, tokenizer)
    with pytest.raises(ValueError, match="tokenizer"):
        init_token_ids(config("text"), 100, None)


def test_vocab_ids_are_seeded_common_tokens():
    a, b = init_token_ids(config("vocab", 50), 100_000), init_token_ids(config("vocab", 50), 100_000)
    assert torch.equal(a, b) and not torch.equal(a, init_token_ids(config("vocab", 50, seed=1), 100_000))
    assert int(a.max()) < 5000 and int(init_token_ids(config("vocab", 50), 30).max()) < 30
    with pytest.raises(ValueError, match="random"):
        init_token_ids(config("random"), 100)


def test_hook_helpers():
    assert positions_from_mask(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])).tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    ids = torch.tensor([[1, 2]])
    assert bind_inputs((ids,), {"past_key_values": "c"}) == {"input_ids": ids, "cache": "c"}
    with pytest.raises(TypeError, match="by name"):
        bind_inputs((ids, ids), {})
    check_context(SimpleNamespace(max_position_embeddings=8), 8)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        check_context(SimpleNamespace(max_position_embeddings=8), 9)
