"""Training machinery shared by ``ntk pretrain`` and ``ntk finetune``: one loop, one checkpoint format.

- :mod:`.loop` — :class:`TrainConfig`, :class:`Trainer` (the generic loop; read its docstring for the contract)
- :mod:`.checkpointing` — run directory layout, checkpoints (HF layout + ``trainer_state.pt``), resume
- :mod:`.optim` — AdamW and learning-rate schedules
- :mod:`.distributed` — torchrun/DDP and torch-xla setup
- :mod:`.curves` — ``training_curves.png``
- :mod:`.corpus`, :mod:`.masking` — the masked-LM data stream of ``ntk pretrain``
"""
from .checkpointing import latest_checkpoint, load_checkpoint, prepare_run_dir, save_checkpoint
from .loop import TrainConfig, Trainer, TrainingInterrupted, unwrap

__all__ = ["TrainConfig", "Trainer", "TrainingInterrupted", "unwrap", "prepare_run_dir", "latest_checkpoint",
           "load_checkpoint", "save_checkpoint"]
