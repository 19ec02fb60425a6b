"""The worked examples (``examples/finetune_hf.py``, ``sparse_cnn.py``, ``resume_checkpoint.py``) run at tiny
sizes: a saved GPT-2 fine-tuned sparse and reloaded both ways, a sparse CNN that learns synthetic images, and a
resumed run equal to the uninterrupted one."""

import math
import sys
from pathlib import Path

import pytest
import torch

import rigl_sparse as rs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TEXT = "To be, or not to be, that is the question. " * 200


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield lambda name: __import__(name)
    for name in ("finetune_hf", "sparse_cnn", "resume_checkpoint", "char_windows", "gpt2_shakespeare"):
        sys.modules.pop(name, None)


@pytest.fixture
def tiny_gpt2(tmp_path):
    """A saved 2-block GPT-2 whose vocabulary is bytes, and a folder of text."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=32, bos_token_id=0,
                                     eos_token_id=0)
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "model")
    (tmp_path / "plays").mkdir()
    (tmp_path / "plays" / "play.md").write_text(TEXT)
    return tmp_path


def finetune(example, folder: Path, *extra) -> dict:
    return example("finetune_hf").main(["--model", str(folder / "model"), "--plays-dir", str(folder / "plays"),
                                        "--out-dir", str(folder / "out"), "--steps", "12", "--length", "16",
                                        "--batch-size", "8", "--block-size", "8", "--lr", "1e-2", "--delta-t", "3",
                                        *extra])


def test_finetune_hf_example_trains_sparse_and_both_saved_models_reload(example, tiny_gpt2, capsys):
    transformers = pytest.importorskip("transformers")
    result = finetune(example, tiny_gpt2, "--tokenizer", "bytes")
    assert "validation loss" in capsys.readouterr().out
    assert all(math.isfinite(result[k]) for k in ("dense", "random_blocks", "largest_blocks", "after"))
    assert result["after"] < result["before"] - 0.5 and result["before"] == result["largest_blocks"]
    assert result["kept"] == result["total"] // 2  # density 0.5 over the 8 projections
    assert result["stats"]["updates"] == 3 and result["stats"]["blocks_moved"] > 0
    assert result["reloaded"] == pytest.approx(result["after"], rel=1e-4)  # the dense export computes the same

    assert result["reloaded_sparse"] == pytest.approx(result["after"], rel=1e-4)

    # the sparse folder loads back sparse, and computes what the dense export computes
    from rigl_sparse.integrations.huggingface import from_pretrained

    model = from_pretrained(transformers.AutoModelForCausalLM, tiny_gpt2 / "out" / "sparse")
    dense = transformers.AutoModelForCausalLM.from_pretrained(tiny_gpt2 / "out" / "dense").eval()
    assert sum(isinstance(m, rs.SparseLinear) for m in model.modules()) == 8
    tokens = torch.randint(256, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(input_ids=tokens).logits, dense(input_ids=tokens).logits, rtol=1e-4, atol=1e-4)


def test_finetune_hf_example_reads_the_model_folder_tokenizer_and_keeps_random_blocks(example, tiny_gpt2):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocabulary = {word: i for i, word in enumerate(["[UNK]"] + sorted(set(TEXT.replace(",", " ").split())))}
    words = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="[UNK]"))
    words.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]").save_pretrained(
        tiny_gpt2 / "model")
    result = finetune(example, tiny_gpt2, "--blocks", "random")
    assert result["largest_blocks"] is None and result["before"] == result["random_blocks"]
    assert result["after"] < result["before"]
    saved = transformers.AutoTokenizer.from_pretrained(tiny_gpt2 / "out" / "dense")
    assert len(saved) == len(vocabulary)


def test_sparse_cnn_example_learns_synthetic_images_with_sparse_convolutions(example, capsys):
    result = example("sparse_cnn").main(["--fake-data", "1024", "--epochs", "2", "--batch-size", "64", "--channels",
                                         "8", "16", "--hidden", "32", "--density", "0.3", "--delta-t", "4"])
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "SparseConv2d" in printed and "FLOPs per image" in printed
    assert result["accuracies"][-1] > 0.5  # ten classes: chance is 0.1
    assert result["stats"]["updates"] > 0 and result["stats"]["blocks_moved"] > 0
    conv = result["layers"]["3"]
    assert conv["block_size"] == 8 and conv["density"] < 0.5
    assert result["flops_ratio"] < 0.6


@pytest.mark.parametrize("stop_at", [12, 13])  # right before the update at step 12, and right after it
def test_resume_checkpoint_example_resumes_bitwise(example, tmp_path, capsys, stop_at):
    argv = ["--steps", "30", "--stop-at", str(stop_at), "--delta-t", "4",
            "--checkpoint", str(tmp_path / "checkpoint.pt")]
    result = example("resume_checkpoint").main(argv)
    assert result["identical"] and result["losses"] == result["expected"]
    assert result["stats"]["updates"] == 5 and result["stats"]["blocks_moved"] > 0
    assert "equals the uninterrupted one bitwise" in capsys.readouterr().out


def test_resume_checkpoint_example_notices_a_resume_that_differs(example, tmp_path, monkeypatch):
    """A checkpoint that loses the LR schedule's state resumes to other losses, and the example says so."""
    monkeypatch.setattr(torch.optim.lr_scheduler.CosineAnnealingLR, "load_state_dict", lambda self, state: None)
    with pytest.raises(SystemExit, match="differs from the uninterrupted one"):
        example("resume_checkpoint").main(["--steps", "30", "--stop-at", "13", "--delta-t", "4",
                                           "--checkpoint", str(tmp_path / "checkpoint.pt")])


def test_finetune_hf_keeps_in_every_block_row_its_largest_blocks(example):
    pytest.importorskip("transformers")
    norms = torch.tensor([[9.0, 8.0, 7.0], [1.0, 3.0, 2.0], [0.5, 0.1, 0.2]])  # row 0 holds the 3 largest
    weight = norms.repeat_interleave(2, 0).repeat_interleave(2, 1) / 2  # 2x2 blocks of these Frobenius norms
    largest_blocks = example("finetune_hf").largest_blocks
    assert largest_blocks(weight, 3, 2).tolist() == [0, 4, 6]  # each row's largest: (0, 0), (1, 1), (2, 0)
    assert largest_blocks(weight, 5, 2).tolist() == [0, 1, 4, 5, 6]  # then the larger second ones: rows 0 and 1
