"""RigL inside the trainers people already use, through ``rs.RigLOptimizer``.

- ``rigl_sparse.integrations.huggingface.RigLCallback``: ``transformers.Trainer`` (extra ``hf``), and its
  ``from_pretrained``, which loads a sparsified model's ``save_pretrained`` folder back sparse.
- ``rigl_sparse.integrations.lightning.RigLCallback``: Lightning (extra ``lightning``).
- ``accelerate`` needs no callback: ``Accelerator.prepare`` the ``RigLOptimizer`` like any optimizer, and
  ``attach(prepared_optimizer)`` hands it the accelerator's ``GradScaler``.

Importing this package imports no framework: each module imports its own only when it is imported.
"""

from rigl_sparse.integrations.common import attach, find_rigl_optimizer

__all__ = ["attach", "find_rigl_optimizer"]
