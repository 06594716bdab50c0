"""A batch mixing LoRA adapters row by row (labs.serving.MultiAdapterServer): every row's logits
equal its adapter loaded alone and peft's `adapter_names=[...]` mixed batch on the same adapter
files; rows naming None equal the base; the base's weights never change; bad input is refused.
Four adapters on a tiny Llama, with different ranks (2, 4, 8) and targets (q, v / q, k, v, o)."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_llama  # V x 64, MLP 128, 2 layers, 4 heads, 2 kv heads

from labs.peft_format import load_adapter, save_adapter
from labs.serving import MultiAdapterServer

V = 100
TOLERANCE = 1e-5  # float32: the mixed batch sums the same products in another order (bmm, batch shape)
ROWS = ["b", None, "a", "d", "c", "b", None, "a"]  # (N = 8): repeats, base rows, every adapter


def ids(rows: int = len(ROWS), tokens: int = 6) -> torch.Tensor:
    return torch.randint(0, V, (rows, tokens), generator=torch.Generator().manual_seed(1))  # (N, T)


@pytest.fixture
def impl_name(request) -> str:
    return request.config.getoption("--impl")


def save_lora(lora, folder, seed: int, r: int, targets=("q_proj", "v_proj"), hidden: int = 64):
    """A LoRA adapter whose B factors are non-zero (as after training)."""
    model = lora.apply(tiny_llama(hidden=hidden), lora.LoRAConfig(r=r, alpha=2 * r + seed, target_modules=targets))
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(seed))
    return save_adapter(model, folder)


@pytest.fixture
def folders(impl, tmp_path):
    lora = impl("lora")
    return {"a": save_lora(lora, tmp_path / "a", 1, r=4), "b": save_lora(lora, tmp_path / "b", 2, r=8),
            "c": save_lora(lora, tmp_path / "c", 3, r=2, targets=("q_proj", "k_proj", "v_proj", "o_proj")),
            "d": save_lora(lora, tmp_path / "d", 4, r=4)}


def server_for(folders, impl_name, mode: str) -> MultiAdapterServer:
    server = MultiAdapterServer(tiny_llama(), impl=impl_name, mode=mode)
    for name, folder in folders.items():
        server.add(name, folder)
    return server


def alone(folder, x) -> torch.Tensor:
    """The logits of one adapter loaded on its own base, as if it were the only fine-tuned model."""
    with torch.no_grad():
        model = tiny_llama() if folder is None else load_adapter(tiny_llama(), folder)
        return model(x).logits


@pytest.mark.parametrize("mode", ["gather", "group"])
def test_each_row_equals_its_adapter_loaded_alone(folders, impl_name, mode):
    server, x = server_for(folders, impl_name, mode), ids()
    mixed = server(ROWS, input_ids=x).logits                                  # (N, T, V): one forward
    for n, name in enumerate(ROWS):
        want = alone(folders.get(name), x[n:n + 1])[0]
        assert (mixed[n] - want).abs().max() <= TOLERANCE, f"{mode}: row {n} (adapter {name!r})"
    assert (mixed[0] - alone(None, x[:1])[0]).abs().max() > 100 * TOLERANCE  # the adapters really act


@pytest.mark.parametrize("mode", ["gather", "group"])
def test_the_mixed_batch_equals_peft_adapter_names(folders, impl_name, mode):
    from peft import PeftModel
    x = ids()
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(folders["a"]), adapter_name="a")
    for name in ("b", "c", "d"):
        peft_model.load_adapter(str(folders[name]), adapter_name=name)
    peft_model.eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=x, adapter_names=[n or "__base__" for n in ROWS]).logits
    ours = server_for(folders, impl_name, mode)(ROWS, input_ids=x).logits
    assert (ours - theirs).abs().max() <= TOLERANCE
    with torch.no_grad():  # and the check can fail: peft with every row on "a" differs
        all_a = peft_model(input_ids=x, adapter_names=["a"] * len(ROWS)).logits
    assert (ours - all_a).abs().max() > 100 * TOLERANCE


def test_the_base_is_untouched(folders, impl_name):
    server, x = server_for(folders, impl_name, "gather"), ids()
    server(ROWS, input_ids=x)
    server(["a"] * len(ROWS), input_ids=x)
    base = dict(tiny_llama().named_parameters())
    served = {n.replace(".base_layer", ""): p for n, p in server.model.named_parameters()}
    assert served.keys() == base.keys() and all(torch.equal(served[n], base[n]) for n in base)
    assert not any(p.requires_grad for p in server.model.parameters())
    only_base = server([None] * len(ROWS), input_ids=x).logits
    assert (only_base - alone(None, x)).abs().max() <= TOLERANCE


def test_every_plan_lasts_until_the_next(folders, impl_name):
    """A plan holds for the token-by-token forwards that follow the prompt (the cache's rows)."""
    server, x = server_for(folders, impl_name, "group"), ids()
    out = server(ROWS, input_ids=x[:, :4], use_cache=True)
    with torch.no_grad():
        step = server.model(input_ids=x[:, 4:5], cache=out.cache).logits[:, -1]
    for n, name in enumerate(ROWS):
        want = alone(folders.get(name), x[n:n + 1, :5])[0, -1]
        assert (step[n] - want).abs().max() <= TOLERANCE, f"row {n} (adapter {name!r})"


def test_memory_is_counted_per_adapter(folders, impl_name):
    sizes = server_for(folders, impl_name, "gather").adapter_bytes()
    assert list(sizes) == ["a", "b", "c", "d"]
    assert sizes["b"] == 2 * sizes["a"] == 2 * sizes["d"] > 0  # rank 8 vs 4 on the same layers


def test_bad_input_is_refused(folders, impl, impl_name, tmp_path):
    server = server_for(folders, impl_name, "gather")
    with pytest.raises(KeyError, match=r"'nope'.*'a', 'b', 'c', 'd'"):
        server(["a", "nope"], input_ids=ids(2))
    with pytest.raises(ValueError, match="3 adapter names for a batch of 2 rows"):
        server(["a", "b", None], input_ids=ids(2))
    with pytest.raises(ValueError, match="already served"):
        server.add("a", folders["b"])
    with pytest.raises(ValueError, match=r"another base model|do not fit"):
        server.add("wide", save_lora(impl("lora"), tmp_path / "wide", 5, r=4, hidden=96))
    with pytest.raises(ValueError, match="mode 'fast'.*gather, group"):
        MultiAdapterServer(tiny_llama(), impl=impl_name, mode="fast")


def test_adapter_prompt_pairs_become_one_left_padded_batch():
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    from labs.serving import encode_pairs
    core = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "define": 2, "the": 3, "word": 4}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    names, inputs = encode_pairs(tok, [("a", "define the word"), (None, "word")])
    assert names == ["a", None]
    assert inputs["input_ids"].tolist() == [[2, 3, 4], [0, 0, 4]] and inputs["attention_mask"][1].tolist() == [0, 0, 1]
    assert tok.padding_side == "right"  # the tokenizer is left as it was
    with pytest.raises(ValueError, match="pairs"):
        encode_pairs(tok, ["define the word"])
