"""Hugging Face models: Conv1D layers, GPT-2 and Llama trained with RigL (needs the `hf` extra: transformers)."""

import pytest
import torch
from torch import nn

import rigl_sparse as rs

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed: pip install transformers accelerate (the [hf] extra)")


def _sparse_names(model):
    return sorted(name for name, m in model.named_modules() if isinstance(m, rs.SparseModule))


def _train_lm(model, tokens, *, steps, delta_t, t_end):
    """RigL with AdamW on one memorised batch of a Hugging Face causal LM; (scheduler, losses)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=delta_t, t_end=t_end, alpha=0.3)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        if scheduler.step():
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return scheduler, losses


def test_hf_conv1d_becomes_an_equivalent_sparse_linear():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(48, 32)  # nf=48 outputs, nx=32 inputs: weight [32, 48]
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    model = rs.sparsify(nn.Sequential(conv), density=0.5, distribution="uniform", first_dense=False, block_size=16,
                        generator=torch.Generator().manual_seed(0))
    layer = model[0]
    assert isinstance(layer, rs.SparseLinear) and (layer.in_features, layer.out_features) == (32, 48)
    dense = layer.to_dense()  # [out, in], the kept blocks of conv.weight.T
    kept = dense != 0
    assert torch.equal(dense[kept], conv.weight.T[kept]) and kept.float().mean() == 0.5
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(layer(x), x @ dense.T + conv.bias, rtol=1e-5, atol=1e-5)


def test_gpt2_from_a_config_trains_with_rigl():
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=64, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    with pytest.raises(ValueError, match="lm_head"):  # tied to the token embedding
        rs.sparsify(model, density=0.25, block_size=16)
    rs.sparsify(model, density=0.25, block_size=16, exclude="lm_head")
    assert _sparse_names(model) == sorted(f"transformer.h.{i}.{n}" for i in range(2)
                                          for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert model.lm_head.weight is model.transformer.wte.weight
    scheduler, losses = _train_lm(model, torch.randint(40, (4, 16), generator=torch.Generator().manual_seed(0)),
                                  steps=12, delta_t=3, t_end=9)
    assert scheduler.stats["updates"] == 3 and scheduler.stats["blocks_moved"] > 0
    assert losses[-1] < losses[0] - 0.5


def test_gpt2_shakespeare_example_runs_on_a_small_text(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "gpt2_shakespeare.py"
    spec = importlib.util.spec_from_file_location("gpt2_shakespeare", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    plays = tmp_path / "plays"
    plays.mkdir()
    (plays / "a.md").write_text("To be, or not to be, that is the question.\n" * 40)
    (plays / "b.md").write_text("Now is the winter of our discontent.\n" * 40)
    result = example.main(["--plays-dir", str(plays), "--layers", "1", "--width", "32", "--heads", "2",
                           "--length", "16", "--steps", "30", "--delta-t", "5", "--block-size", "8",
                           "--lr", "1e-2", "--no-progress", "--plot", str(tmp_path / "loss.png")])
    out = capsys.readouterr().out
    assert result["stats"]["updates"] == 4 and "sample:" in out  # t = 5, 10, 15, 20 (t_end 22)
    assert result["val_losses"][-1] < result["val_losses"][0] - 0.5
    assert (tmp_path / "loss.png").exists() or "no plot drawn" in out


def test_a_linear_based_hf_model_trains_with_rigl():
    config = transformers.LlamaConfig(vocab_size=48, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    rs.sparsify(model, density=0.3, block_size=16, distribution="erk", exclude="lm_head")
    names = _sparse_names(model)
    assert len(names) == 2 * 7 and "model.layers.0.self_attn.k_proj" in names  # q k v o, gate up down
    scheduler, losses = _train_lm(model, torch.randint(48, (2, 16), generator=torch.Generator().manual_seed(0)),
                                  steps=8, delta_t=2, t_end=6)
    assert scheduler.stats["updates"] == 3 and losses[-1] < losses[0]


def test_flops_of_gpt2_count_its_conv1d_layers_dense_and_sparse():
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=64, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    rows = 2 * 8
    per_layer = 64 * 192 + 64 * 64 + 64 * 256 + 256 * 64  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    dense = rs.flops(model, (2, 8), dtype=torch.long)
    assert dense.forward == dense.dense_forward == 2 * rows * (2 * per_layer + 40 * 64)  # + the tied head
    rs.sparsify(model, density=0.25, block_size=16, distribution="uniform", first_dense=False, exclude="lm_head")
    sparse = rs.flops(model, (2, 8), dtype=torch.long)
    assert sparse.dense_forward == dense.dense_forward
    assert sparse.forward == 2 * rows * (2 * per_layer // 4 + 40 * 64)


def test_the_finetune_example_says_how_to_work_offline(monkeypatch):
    import pathlib
    import sys

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
    import finetune_hf

    try:
        with pytest.raises(SystemExit, match=r"cannot load the model 'no-such-model-here' .*pass --model DIR, a "
                                             r"folder written by save_pretrained"):
            finetune_hf.main(["--model", "no-such-model-here"])
    finally:
        sys.modules.pop("finetune_hf", None)


def _tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=2, bos_token_id=0,
                                     eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    return rs.sparsify(model, density=0.5, block_size=16, include="transformer.h.*",
                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("shards", [False, True])
@pytest.mark.parametrize("auto", [False, True])
def test_save_pretrained_of_a_sparse_model_loads_back_sparse(tmp_path, shards, auto):
    from rigl_sparse.integrations.huggingface import from_pretrained

    model = _tiny_gpt2()
    model.save_pretrained(tmp_path, **({"max_shard_size": "20KB"} if shards else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == shards
    loaded = from_pretrained(transformers.AutoModelForCausalLM if auto else transformers.GPT2LMHeadModel, tmp_path)
    assert _sparse_names(loaded) == _sparse_names(model) and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.lm_head.weight is loaded.transformer.wte.weight  # the tie save_pretrained relies on
    tokens = torch.randint(64, (2, 16))
    assert torch.equal(loaded(tokens).logits, model(tokens).logits)


def test_from_pretrained_names_what_it_cannot_load(tmp_path):
    from rigl_sparse.integrations.huggingface import from_pretrained

    with pytest.raises(FileNotFoundError, match="snapshot_download"):
        from_pretrained(transformers.GPT2LMHeadModel, tmp_path / "gpt2")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        from_pretrained(transformers.GPT2LMHeadModel, tmp_path)
    _tiny_gpt2().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="does not have"):  # another architecture's config would be refused too
        from_pretrained(transformers.GPT2Model, tmp_path)
