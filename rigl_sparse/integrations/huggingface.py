"""RigL under ``transformers.Trainer``: pass a ``rs.RigLOptimizer`` as the Trainer's optimizer and add
``RigLCallback``::

    inner = torch.optim.AdamW(model.parameters(), lr=1e-3)
    optimizer = rs.RigLOptimizer(inner, rs.RigLScheduler(model, inner, delta_t=100, t_end=None))
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(optimizer, None),
                      callbacks=[RigLCallback()])

The Trainer calls ``optimizer.step()`` once per optimizer step (after its gradient accumulation), so the
scheduler counts the same steps as ``state.global_step``; its ``save_steps`` checkpoints hold the scheduler's
state in ``optimizer.pt`` and the topology in the model's weights, so ``resume_from_checkpoint`` continues the
same schedule.  The callback sets ``t_end`` to 3/4 of the Trainer's ``max_steps`` when the scheduler has
none, gives the optimizer accelerate's ``GradScaler`` under ``fp16`` (the Trainer unscales before clipping),
and adds the scheduler's counters (``rigl/updates``, ``rigl/blocks_moved``, ...) to the printed logs and
``state.log_history``; for TensorBoard give the ``RigLOptimizer`` a ``writer=``.  Under ``fp16`` an
overflowed step is reported as skipped, so the Trainer's LR schedule waits as RigL's does.

A sparsified model's ``save_pretrained`` folder holds its sparse layers as they are (values, topology and
geometry in ``model.safetensors``); ``transformers``' own ``from_pretrained`` would build the model dense and
leave those layers at random initial values, so load it with ``from_pretrained`` of this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file
from transformers import AutoConfig, PreTrainedModel, TrainerCallback

from rigl_sparse.checkpoint import load_sparse
from rigl_sparse.integrations.common import T_END_FRACTION, attach

SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


def from_pretrained(model_class, path) -> PreTrainedModel:
    """Load a folder written by ``save_pretrained`` of a sparsified model back with its sparse layers.

    ``model_class`` is the model's class (``GPT2LMHeadModel``) or an auto class (``AutoModelForCausalLM``);
    the model is built from the folder's config, each layer that the weights hold sparse becomes the
    ``SparseLinear`` / ``SparseConv2d`` of that topology (``rs.load_sparse``: all or nothing, no density or
    seed needed) and every weight is loaded; weights that ``save_pretrained`` left out because they are tied
    to another (a language model's head and its embedding) are taken from the one they share.  The model is
    returned in eval mode on the CPU, in the dtype its class builds (``.to()`` it as needed).  ``path`` is a
    local folder (one ``model.safetensors`` or shards with their index); a dense folder loads too.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a folder written by save_pretrained (for a model on the hub, "
                                "download it first: huggingface_hub.snapshot_download)")
    if (folder / SINGLE).is_file():
        files = [folder / SINGLE]
    elif (folder / INDEX).is_file():
        files = [folder / name for name in sorted(set(json.loads((folder / INDEX).read_text())["weight_map"].values()))]
    else:
        raise FileNotFoundError(f"{str(folder)!r} holds neither {SINGLE} nor {INDEX}: save the model with "
                                "save_pretrained (safetensors)")
    state_dict = {}
    for file in files:
        state_dict.update(load_file(file))
    config = AutoConfig.from_pretrained(folder)
    model = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)
    tied = {}  # one tensor under several names: those save_pretrained left out come from the one it kept
    for name, tensor in model.state_dict(keep_vars=True).items():
        tied.setdefault(id(tensor), []).append(name)
    for names in tied.values():
        kept = [name for name in names if name in state_dict]
        for name in names:
            if kept and name not in state_dict:
                state_dict[name] = state_dict[kept[0]]
    return load_sparse(model, state_dict).eval()


class RigLCallback(TrainerCallback):
    """Connects a ``rs.RigLOptimizer`` given as ``Trainer(optimizers=(optimizer, None))`` to the Trainer.

    Args:
        t_end_fraction: ``t_end`` as a fraction of the Trainer's ``max_steps``, used when the scheduler was
            built with ``t_end=None`` (default 0.75, as in the paper).
    """

    def __init__(self, *, t_end_fraction: float = T_END_FRACTION):
        self.t_end_fraction = t_end_fraction
        self.rigl = None

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.rigl = attach(optimizer, total_steps=state.max_steps, t_end_fraction=self.t_end_fraction)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Adds the counters to the logs and to ``state.log_history`` (the reporting callbacks, which the
        Trainer calls first, do not see them: give ``rs.RigLOptimizer`` a ``writer=`` for TensorBoard)."""
        if self.rigl is None or logs is None:
            return
        counters = {f"rigl/{name}": value for name, value in self.rigl.scheduler.stats.items()}
        logs.update(counters)
        if state.log_history:
            state.log_history[-1].update(counters)
