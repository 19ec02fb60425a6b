"""``transformers.Trainer``, Lightning and ``accelerate`` train a sparse model with RigL through
``rs.RigLOptimizer``: the same topology decisions and weights as the hand-written loop on the same batches
(with gradient accumulation), and a resume from each framework's checkpoint reproduces the uninterrupted run."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import rigl_sparse as rs
from rigl_sparse.integrations import attach

SAMPLES, BATCH, ACCUMULATION, STEPS = 32, 4, 2, 8  # two epochs of four optimizer steps
STEPS_PER_EPOCH = SAMPLES // (BATCH * ACCUMULATION)
T_END = int(0.75 * STEPS)  # what the integrations derive from the trainer's steps


class Net(nn.Module):
    """An MLP that returns its loss, as Hugging Face models do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x, labels=None):
        out = self.body(x)
        return {"logits": out} if labels is None else {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def net(seed=0):
    torch.manual_seed(seed)
    model = Net()
    rs.sparsify(model, density=0.5, block_size=8, first_dense=False, last_dense=True,
                generator=torch.Generator().manual_seed(seed))
    return model


def rigl_optimizer(model, t_end=None):
    inner = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return rs.RigLOptimizer(inner, rs.RigLScheduler(model, inner, delta_t=2, t_end=t_end, alpha=0.5))


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(SAMPLES, 32, generator=g), torch.randn(SAMPLES, 4, generator=g)


def plain_loop():
    """The reference: the batches in order, two epochs, the loss divided by the accumulation count."""
    model = net()
    optimizer = rigl_optimizer(model, t_end=T_END)
    x, y = data()
    micro = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, SAMPLES, BATCH)] * 2
    for step in range(STEPS):
        for xb, yb in micro[step * ACCUMULATION:(step + 1) * ACCUMULATION]:
            (model(xb, yb)["loss"] / ACCUMULATION).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert optimizer.scheduler.stats["updates"] == T_END // 2 and optimizer.scheduler.stats["blocks_moved"] > 0
    return model, optimizer.scheduler


def assert_same_run(model, scheduler, reference, ref_scheduler):
    assert scheduler.step_count == ref_scheduler.step_count == STEPS and scheduler.t_end == T_END
    assert scheduler.stats == ref_scheduler.stats
    sparse = [m for m in model.modules() if isinstance(m, rs.SparseModule)]
    ref_sparse = [m for m in reference.modules() if isinstance(m, rs.SparseModule)]
    for a, b in zip(sparse, ref_sparse):
        assert torch.equal(a.layout.block_row, b.layout.block_row) and torch.equal(a.layout.block_col, b.layout.block_col)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.fixture
def reset_accelerate():
    yield
    state = pytest.importorskip("accelerate.state")
    state.AcceleratorState._reset_state(True)
    state.GradientState._reset_state()


# ------------------------------------------------------------------------------------------- transformers
def hf_train(tmp_path, *, save_steps=None, resume=None):
    transformers = pytest.importorskip("transformers")
    from rigl_sparse.integrations.huggingface import RigLCallback

    class InOrder(transformers.Trainer):  # the plain loop's order: no shuffling
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    x, y = data()
    dataset = [{"x": x[i], "labels": y[i]} for i in range(SAMPLES)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=BATCH, gradient_accumulation_steps=ACCUMULATION,
        max_steps=STEPS, lr_scheduler_type="constant", max_grad_norm=0.0, report_to="none", use_cpu=True,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, logging_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0)
    model = net(seed=5 if resume else 0)  # a resumed run starts from another model: the checkpoint replaces it
    optimizer = rigl_optimizer(model)
    trainer = InOrder(model=model, args=args, train_dataset=dataset, optimizers=(optimizer, None),
                      callbacks=[RigLCallback()])
    trainer.train(resume_from_checkpoint=resume)
    return model, optimizer.scheduler


def test_hugging_face_trainer_takes_the_plain_loops_decisions(tmp_path, reset_accelerate):
    reference, ref_scheduler = plain_loop()
    model, scheduler = hf_train(tmp_path)
    assert_same_run(model, scheduler, reference, ref_scheduler)


def test_hugging_face_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, reset_accelerate):
    reference, ref_scheduler = plain_loop()
    hf_train(tmp_path / "first", save_steps=STEPS_PER_EPOCH)
    checkpoint = tmp_path / "first" / f"checkpoint-{STEPS_PER_EPOCH}"
    assert checkpoint.is_dir()
    model, scheduler = hf_train(tmp_path / "second", resume=str(checkpoint))
    assert_same_run(model, scheduler, reference, ref_scheduler)


# ---------------------------------------------------------------------------------------------- Lightning
def lightning_train(tmp_path, *, epochs=STEPS // STEPS_PER_EPOCH, t_end=None, save_to=None, resume=None):
    pl = pytest.importorskip("lightning.pytorch")
    from rigl_sparse.integrations.lightning import RigLCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = net(seed=5 if resume else 0)

        def training_step(self, batch, batch_idx):
            return self.net(*batch)["loss"]

        def configure_optimizers(self):
            self.rigl = rigl_optimizer(self.net, t_end=t_end)
            return self.rigl

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, accumulate_grad_batches=ACCUMULATION,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[RigLCallback()],
                         default_root_dir=tmp_path)
    module = Module()
    trainer.fit(module, DataLoader(TensorDataset(*data()), batch_size=BATCH, shuffle=False), ckpt_path=resume)
    if save_to is not None:
        trainer.save_checkpoint(save_to)
    return module.net, module.rigl.scheduler


def test_lightning_takes_the_plain_loops_decisions(tmp_path):
    reference, ref_scheduler = plain_loop()
    model, scheduler = lightning_train(tmp_path)
    assert_same_run(model, scheduler, reference, ref_scheduler)


def test_lightning_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    """The first run stops after the first epoch and saves a checkpoint (its scheduler planned for the whole
    run: t_end given); the second resumes from it."""
    reference, ref_scheduler = plain_loop()
    checkpoint = tmp_path / "epoch1.ckpt"
    lightning_train(tmp_path / "first", epochs=1, t_end=T_END, save_to=checkpoint)
    model, scheduler = lightning_train(tmp_path / "second", resume=str(checkpoint))
    assert_same_run(model, scheduler, reference, ref_scheduler)


# --------------------------------------------------------------------------------------------- accelerate
def accelerate_train(*, epochs=(0, 1), save=None, load=None):
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATION)
    model = net(seed=5 if load else 0)
    optimizer = rigl_optimizer(model)
    loader = DataLoader(TensorDataset(*data()), batch_size=BATCH, shuffle=False)
    model, prepared, loader = accelerator.prepare(model, optimizer, loader)
    assert attach(prepared, total_steps=STEPS) is optimizer
    if load:
        accelerator.load_state(load)
    for _ in epochs:
        for x, y in loader:
            with accelerator.accumulate(model):
                accelerator.backward(model(x, y)["loss"])
                prepared.step()
                prepared.zero_grad()
        if save:
            accelerator.save_state(save)
    return accelerator.unwrap_model(model), optimizer.scheduler


def test_accelerate_takes_the_plain_loops_decisions(reset_accelerate):
    reference, ref_scheduler = plain_loop()
    model, scheduler = accelerate_train()
    assert_same_run(model, scheduler, reference, ref_scheduler)


def test_accelerate_state_resumes_to_the_uninterrupted_run(tmp_path, reset_accelerate):
    reference, ref_scheduler = plain_loop()
    accelerate_train(epochs=(0,), save=str(tmp_path / "state"))
    accelerate = pytest.importorskip("accelerate.state")
    accelerate.AcceleratorState._reset_state(True)
    accelerate.GradientState._reset_state()
    model, scheduler = accelerate_train(epochs=(1,), load=str(tmp_path / "state"))
    assert_same_run(model, scheduler, reference, ref_scheduler)


def test_attach_refuses_what_is_not_a_rigl_optimizer():
    model = net()
    with pytest.raises(TypeError, match="RigLOptimizer"):
        attach(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="no t_end"):
        attach(rigl_optimizer(model))


def test_accelerate_reports_an_overflowed_step_as_skipped(reset_accelerate):
    """A RigLOptimizer's step is always called inside ``scaler.step``; ``attach`` makes the prepared
    optimizer's ``step_was_skipped`` (which the Hugging Face Trainer reads) say whether it overflowed."""
    accelerate = pytest.importorskip("accelerate")
    from accelerate.optimizer import AcceleratedOptimizer

    accelerate.Accelerator(cpu=True)  # the state an AcceleratedOptimizer reads
    model = net()
    optimizer = rigl_optimizer(model, t_end=T_END)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    prepared = AcceleratedOptimizer(optimizer, device_placement=False, scaler=scaler)
    assert attach(prepared) is optimizer and optimizer.scaler is scaler
    x, y = data()
    for poison, skipped in ((float("inf"), True), (1.0, False)):
        scaler.scale(model(x[:BATCH] * poison, y[:BATCH])["loss"]).backward()
        prepared.step()
        prepared.zero_grad()
        assert prepared.step_was_skipped is skipped and optimizer.last_step_overflowed is skipped
    assert optimizer.scheduler.step_count == 1 and optimizer.scheduler.stats["skipped_overflow"] == 1


def test_find_rigl_optimizer_unwraps_lightnings_optimizer():
    pl = pytest.importorskip("lightning.pytorch")
    from rigl_sparse.integrations import find_rigl_optimizer

    optimizer = rigl_optimizer(net(), t_end=T_END)
    wrapped = pl.core.optimizer.LightningOptimizer(optimizer)
    assert isinstance(wrapped, rs.RigLOptimizer)  # Lightning subclasses the class it wraps ...
    assert find_rigl_optimizer(wrapped) is optimizer  # ... and the real one is found
