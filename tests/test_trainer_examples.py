"""The trainer examples (``examples/hf_trainer.py``, ``lightning_rigl.py``, ``accelerate_rigl.py``) run at tiny
sizes on a small text and train with RigL: ``t_end`` derived from the trainer's steps, topology updates taken,
a lower validation loss, and a resume that continues the schedule."""

import math
import sys
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--steps", "8", "--width", "32", "--layers", "1", "--length", "16", "--batch-size", "4",
        "--accumulation", "2", "--delta-t", "2", "--block-size", "8", "--lr", "1e-2"]


@pytest.fixture
def example(tmp_path, monkeypatch):
    plays = tmp_path / "plays"
    plays.mkdir()
    for i in range(2):
        (plays / f"play{i}.md").write_text("To be, or not to be, that is the question. " * 200)
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def run(name, *extra):
        module = __import__(name)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = module.main(TINY + ["--plays-dir", str(plays), "--out-dir", str(tmp_path / name), *extra])
        own = [str(w.message) for w in caught if "RigLScheduler" in str(w.message)]
        assert not own, own  # the examples' own defaults say nothing against themselves
        return result

    yield run
    for name in ("hf_trainer", "lightning_rigl", "accelerate_rigl", "char_windows", "gpt2_shakespeare"):
        sys.modules.pop(name, None)
    try:
        from accelerate.state import AcceleratorState, GradientState
    except ImportError:
        return
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def check(result):
    assert result["t_end"] == 6 and result["stats"]["updates"] == 3 and result["stats"]["blocks_moved"] > 0
    assert math.isfinite(result["after"]) and result["after"] < result["before"]


def scalar_tags(directory):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    tags = set()
    for events in Path(directory).rglob("events.out.tfevents.*"):
        reader = accumulator.EventAccumulator(str(events))
        reader.Reload()
        tags |= set(reader.Tags()["scalars"])
    return tags


def test_hf_trainer_example_and_its_resume(example, tmp_path):
    pytest.importorskip("transformers")
    whole = example("hf_trainer")
    check(whole)
    resumed = example("hf_trainer", "--resume", str(tmp_path / "hf_trainer" / "checkpoint-4"))
    check(resumed)
    assert resumed["after"] == pytest.approx(whole["after"], rel=1e-5)  # the checkpoint's weights and schedule


def test_hf_trainer_example_under_bf16(example):
    pytest.importorskip("transformers")
    check(example("hf_trainer", "--bf16"))


def test_lightning_example(example, tmp_path):
    pytest.importorskip("lightning")
    pytest.importorskip("tensorboard")
    check(example("lightning_rigl", "--tensorboard", "--log-every", "1"))
    assert {"rigl/updates", "rigl/blocks_moved"} <= scalar_tags(tmp_path / "lightning_rigl")


def test_lightning_example_under_bf16_mixed(example):
    pytest.importorskip("lightning")
    check(example("lightning_rigl", "--precision", "bf16-mixed"))


def test_accelerate_example_and_its_resume(example, tmp_path):
    pytest.importorskip("accelerate")
    pytest.importorskip("tensorboard")
    whole = example("accelerate_rigl", "--tensorboard")
    check(whole)
    assert {"rigl/blocks.0.q/grown", "rigl/blocks.0.ffn_in/regrown_fraction"} <= \
        scalar_tags(tmp_path / "accelerate_rigl" / "tensorboard")
    again = example("accelerate_rigl", "--resume")  # the saved state: every batch is behind it
    assert again["before"] == pytest.approx(whole["after"], rel=1e-6) and again["stats"] == whole["stats"]
