"""labs export (labs/export.py): a merged run reloads in plain transformers with the tuned model's
logits; QLoRA merges onto its dequantized base and reports the 4-bit rounding; methods that cannot
merge say why and write nothing; the GGUF file reads back (transformers' GGUF loader) with logits
close to the merged model's, its chat template and tokenizer travel, and a Modelfile sits beside it.

Tolerances (largest absolute logit difference on SmolLM2, logits of order 10-30): merged vs tuned
1e-3 (float rounding of W + B A); GGUF f16 0.5, q8_0 1.5 (the weights' own rounding)."""
from __future__ import annotations

import pytest
import torch

from test_generate import embedded, impl_name, make_run  # noqa: F401 (fixtures: the model, --impl)

from labs.export import export_merged, logits, write_gguf
from labs.generate import load_tuned

MERGED_ATOL = 1e-3
GGUF_ATOL = {"f16": 0.5, "q8_0": 1.5}


def plain_logits(folder, tokenizer_folder=None, **kwargs) -> torch.Tensor:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
    return logits(model, AutoTokenizer.from_pretrained(tokenizer_folder or folder))


@pytest.mark.parametrize("method", ["lora", "qlora", "bitfit", "full"])
def test_merged_folder_reloads_in_plain_transformers_with_the_tuned_logits(tmp_path, method, impl_name):
    make_run(method, tmp_path / "run", impl_name)
    tuned = load_tuned(tmp_path / "run", impl=impl_name)
    want = logits(tuned.model, tuned.tokenizer)                                  # (1, T, V)
    del tuned
    report = export_merged(tmp_path / "run", tmp_path / "merged", impl_name)
    names = {p.name for p in (tmp_path / "merged").iterdir()}
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in (tmp_path / "merged").iterdir())
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    got = plain_logits(tmp_path / "merged")
    assert (got - want).abs().max() < MERGED_ATOL
    assert report["max_logit_diff"] < MERGED_ATOL
    assert method in (tmp_path / "merged" / "README.md").read_text()
    if method == "qlora":
        assert report["max_logit_diff_vs_fp32_base"] > report["max_logit_diff"], "the 4-bit rounding shows"


@pytest.mark.parametrize("method", ["prefix", "prompt", "adapter"])
def test_methods_that_cannot_merge_say_why_and_write_nothing(tmp_path, method, impl_name):
    make_run(method, tmp_path / "run", impl_name)
    with pytest.raises(ValueError, match=rf"cannot merge a {method} run: .*labs generate RUN"):
        export_merged(tmp_path / "run", tmp_path / "merged", impl_name)
    assert not (tmp_path / "merged").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"], "no temporary folder left behind"


def test_gguf_reads_back_close_to_the_merged_model_with_its_chat_template(tmp_path, impl_name):
    import gguf
    from transformers import AutoTokenizer
    make_run("lora", tmp_path / "run", impl_name)
    export_merged(tmp_path / "run", tmp_path / "merged", impl_name)
    merged = plain_logits(tmp_path / "merged")
    template = AutoTokenizer.from_pretrained(tmp_path / "merged").chat_template
    for qtype in ("f16", "q8_0"):
        out = tmp_path / qtype / "model.gguf"
        written = write_gguf(tmp_path / "merged", out, qtype)
        assert written["bytes"] == out.stat().st_size
        got = plain_logits(out.parent, tmp_path / "merged", gguf_file=out.name)
        assert (got - merged).abs().max() < GGUF_ATOL[qtype], (qtype, (got - merged).abs().max())
        assert got.argmax(-1).eq(merged.argmax(-1)).float().mean() > 0.9
        fields = gguf.GGUFReader(out).fields
        assert fields["tokenizer.chat_template"].contents() == template
        if qtype == "f16":      # the same metadata in both files: building the tokenizer once is enough
            from_file = AutoTokenizer.from_pretrained(out.parent, gguf_file=out.name)
            assert from_file.chat_template == template
            assert from_file("3 hours = 180 minutes")["input_ids"] == \
                AutoTokenizer.from_pretrained(tmp_path / "merged")("3 hours = 180 minutes")["input_ids"]
        modelfile = (out.parent / "Modelfile").read_text()
        assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_cli_export_refuses_prefix_in_one_line(tmp_path, impl_name, capsys):
    from labs import cli
    make_run("prefix", tmp_path / "run", impl_name)
    capsys.readouterr()     # the loading bars of make_run
    assert cli.main(["export", str(tmp_path / "run"), "--merged", str(tmp_path / "out"), "--impl", impl_name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("labs export: error: cannot merge a prefix run")
    assert not any(line.startswith("Traceback") for line in err)
    assert not (tmp_path / "out").exists()


def test_cli_gguf_alone_leaves_only_the_file_and_its_modelfile(tmp_path, impl_name, capsys):
    from labs import cli
    make_run("lora", tmp_path / "run", impl_name)
    out = tmp_path / "shipped" / "model.gguf"
    assert cli.main(["export", str(tmp_path / "run"), "--gguf", str(out), "--type", "q8_0", "--impl", impl_name]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "model.gguf"]
    assert "q8_0" in capsys.readouterr().out
    assert cli.main(["export", str(tmp_path / "run")]) == 2
