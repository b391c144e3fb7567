"""Parameter-efficient fine-tuning of the adapter families on labelled volumes (`samadapt3d train`).

    from samadapt3d.training import TrainConfig, train
    result = train(TrainConfig(data="cases.csv", target="liver", model="litemedsam-adapter", out="run1"))
    model = samadapt3d.load_model(result.model_path)

Files: data.py (cases, cache, crops, augmentation), clicks.py (simulated prompts), loss.py (DiceCE, Dice,
NSD), tasks.py (per-family model building, prompting, export), trainer.py (loop, checkpoints),
validate.py, distributed.py (torchrun / DDP), cli.py (`samadapt3d train`).
"""
from .data import Case, find_cases, load_case
from .tasks import MODEL_NAMES, build_task
from .trainer import CHECKPOINT_NAME, TrainConfig, TrainResult, train

__all__ = ["Case", "find_cases", "load_case", "MODEL_NAMES", "build_task", "CHECKPOINT_NAME", "TrainConfig",
           "TrainResult", "train"]
