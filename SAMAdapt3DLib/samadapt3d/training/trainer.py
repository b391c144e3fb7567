"""The training loop: AdamW on the adapter side only, linear warm-up then cosine decay, gradient clipping,
mixed precision on CUDA, validation Dice/NSD per epoch, CSV log, progress events, resumable checkpoints.

Determinism: crop i of epoch e is drawn from its own generator seeded (seed, e, i) and the order of an epoch
comes from DistributedSampler(seed); the checkpoint stores the trainable tensors, the optimiser, the scheduler,
torch's RNG state and the position (epoch, step). A run stopped and resumed therefore repeats the steps an
uninterrupted run would take.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import threading
import time
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..checkpoints import load_weights
from ..errors import InputError
from . import distributed
from .data import Augment, CropDataset, find_cases, load_cases
from .loss import dice_ce_loss
from .tasks import build_task, expected_trainable, frozen_check, network, resolve_crop
from .validate import evaluate

CHECKPOINT_NAME = "checkpoint.pt"
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainConfig:
    data: str
    target: str
    model: str = "litemedsam-adapter"
    out: str = "samadapt3d-train"
    sam_checkpoint: str | None = None
    init: str | None = None
    #: "full" (the real network), "small" / "tiny" (random reduced networks for tests and smoke runs)
    config: str = "full"
    epochs: int = 10
    batch_size: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.01
    #: linear warm-up steps (None: 5% of all steps, at least 1)
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.01
    clip_grad: float = 1.0
    crop: tuple[int, int, int] | None = None
    val_fraction: float = 0.2
    #: crops per epoch (None: 4 per training case, at least one batch)
    samples_per_epoch: int | None = None
    positive_fraction: float = 0.67
    augment: bool = True
    device: str = "auto"
    seed: int = 0
    workers: int = 0
    cache_dir: str | None = None
    amp: bool = True
    #: sam3d-adapter: recompute each encoder block in the backward instead of storing its activations
    #: (much less memory, about one more forward of time)
    checkpoint_activations: bool = False
    nsd_tolerance_mm: float = 2.0
    name: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """The config a checkpoint stores; InputError when it is not one (malformed JSON, missing or mistyped
        fields)."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InputError(f"the stored training config is not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InputError(f"the stored training config is a JSON {type(data).__name__}, not an object")
        known = {f.name: f for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        missing = [name for name in ("data", "target") if not isinstance(values.get(name), str)]
        if missing:
            raise InputError(f"the stored training config has no {' or '.join(missing)}")
        for name, value in values.items():
            default = known[name].default
            expected = float if isinstance(default, float) else type(default)
            if value is None or default is None or default is MISSING:
                continue
            if isinstance(value, bool) != (expected is bool) or not isinstance(value, (int, float) if expected is float
                                                                                   else expected):
                raise InputError(f"the stored training config has {name}={value!r}, expected a {expected.__name__}")
        if values.get("crop") is not None:
            crop = values["crop"]
            if not (isinstance(crop, list) and len(crop) == 3 and all(isinstance(v, int) for v in crop)):
                raise InputError(f"the stored training config has crop={crop!r}, expected 3 whole numbers")
            values["crop"] = tuple(crop)
        return cls(**values)


#: what a resumable checkpoint of ours holds (see _Trainer._save_checkpoint)
RESUME_KEYS = ("trainable", "optimizer", "scheduler", "scaler", "epoch", "step", "torch_rng", "config", "history")


def read_resume_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Any], TrainConfig]:
    """A checkpoint written by `train` and its config; InputError naming the file when it is anything else."""
    state = load_weights(path)  # weights_only=True
    missing = [key for key in RESUME_KEYS if key not in state]
    if missing:
        raise InputError(f"{path} is not a training checkpoint of samadapt3d train (no {', '.join(missing)})")
    if not isinstance(state["trainable"], dict) or not isinstance(state["config"], str):
        raise InputError(f"{path} is not a training checkpoint of samadapt3d train (malformed trainable state or "
                         "config)")
    try:
        config = TrainConfig.from_json(state["config"])
    except InputError as exc:
        raise InputError(f"cannot resume from the checkpoint {path}: {exc}") from None
    try:
        json.loads(state["history"])
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot resume from the checkpoint {path}: its history is not valid JSON ({exc})") from None
    return state, config


@dataclass
class TrainResult:
    model_path: Path | None
    checkpoint_path: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: bool = False
    #: the trained model in memory (this process's copy)
    model: torch.nn.Module | None = None


def _lr_lambda(total: int, warmup: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def _train_mode(net: torch.nn.Module) -> None:
    """Training mode, except frozen BatchNorms (TinyViT's): their statistics are part of the frozen base."""
    net.train()
    for m in net.modules():
        if isinstance(m, _BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    order = list(np.random.default_rng(seed).permutation(n))
    n_val = int(round(n * fraction)) if n > 1 else 0
    n_val = min(max(n_val, 1 if fraction > 0 and n > 1 else 0), n - 1)
    return sorted(int(i) for i in order[n_val:]), sorted(int(i) for i in order[:n_val])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def train(config: TrainConfig, progress: ProgressFn | None = None, stop: threading.Event | None = None,
          resume: str | os.PathLike | None = None, show_bar: bool = True) -> TrainResult:
    """Fine-tune the adapters of `config.model` on `config.data`; returns where the model and checkpoint are.

    `progress` receives dicts (event "start", "step", "epoch", "done", "stopped"); setting `stop` ends the run
    after the current step with a resumable checkpoint; `resume` is a checkpoint (or its folder) to continue."""
    info = distributed.setup(config.device)
    try:
        return _Trainer(config, info, progress, stop, show_bar).run(resume)
    finally:
        distributed.cleanup(info)


class _Trainer:
    def __init__(self, config: TrainConfig, info: distributed.DistInfo, progress: ProgressFn | None,
                 stop: threading.Event | None, show_bar: bool) -> None:
        self.cfg = config
        self.info = info
        self.emit = (progress if info.is_main else None) or (lambda event: None)
        self.stop = stop or threading.Event()
        self.show_bar = show_bar and info.is_main
        self.out = Path(config.out).expanduser().resolve()  # events name absolute paths

    # ---- setup ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
            raise InputError("epochs and batch size must be at least 1 and the learning rate positive")
        cases = find_cases(cfg.data)
        self.task = build_task(cfg.model, cfg.init, cfg.sam_checkpoint, cfg.config, cfg.crop, cfg.seed)
        if cfg.checkpoint_activations:
            encoder = getattr(self.task.model, "image_encoder", None)
            if not hasattr(encoder, "checkpoint_blocks"):
                raise InputError(f"--checkpoint-activations is not available for {cfg.model}")
            encoder.checkpoint_blocks = True
        model = self.task.model.to(info.device)
        frozen_check(model, expected_trainable(self.task))
        cache = cfg.cache_dir or str(self.out / "cache")
        train_idx, val_idx = _split(len(cases), cfg.val_fraction, cfg.seed)
        if info.is_main:  # one process fills the cache, the others read it
            arrays = load_cases(cases, cfg.target, model.preset, cache)
        distributed.barrier(info)
        if not info.is_main:
            arrays = load_cases(cases, cfg.target, model.preset, cache)
        self.train_cases = [arrays[i] for i in train_idx]
        # no held-out case (a single case): validate on the training case, and say so; val_fraction 0: none
        self.val_on_train = not val_idx and cfg.val_fraction > 0
        self.val_cases = [arrays[i] for i in val_idx] or (self.train_cases if self.val_on_train else [])
        size = resolve_crop(self.task, [a.image.shape for a in self.train_cases])
        self.task.crop_size = size
        samples = cfg.samples_per_epoch or max(4 * len(self.train_cases), cfg.batch_size * info.world_size)
        self.dataset = CropDataset(self.train_cases, size, samples, cfg.seed, cfg.positive_fraction,
                                   Augment() if cfg.augment else Augment.none(), self.task.need_foreground)
        self.sampler = DistributedSampler(self.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                                          seed=cfg.seed)
        self.steps_per_epoch = math.ceil(len(self.sampler) / cfg.batch_size)
        self.net = network(self.task).to(info.device)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        if not self.params:
            raise AssertionError("nothing to train: no adapter-side parameter requires a gradient")
        self.ddp = self.net
        if info.distributed:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * self.steps_per_epoch
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, total // 20)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(total, warmup, cfg.min_lr_ratio))
        use_amp = cfg.amp and info.device.type == "cuda"
        self.amp_dtype = (torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_amp and self.amp_dtype == torch.float16)
        self.history: list[dict[str, Any]] = []
        self.epoch, self.step = 0, 0

    # ---- checkpoints ------------------------------------------------------------------------
    def _save_checkpoint(self) -> Path:
        path = self.out / CHECKPOINT_NAME
        state = {"trainable": trainable_state(self.task.model), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": self.epoch, "step": self.step, "torch_rng": torch.get_rng_state(),
                 "config": self.cfg.to_json(), "history": json.dumps(self.history)}
        if torch.cuda.is_available() and self.info.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.info.device)
        tmp = path.with_name(path.name + ".partial")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    def _load_checkpoint(self, path: Path) -> None:
        state, _ = read_resume_checkpoint(path)
        own = self.task.model.state_dict()
        missing = set(trainable_state(self.task.model)) - set(state["trainable"])
        if missing:
            raise InputError(f"{path} does not match this model: no values for {sorted(missing)[:5]}")
        with torch.no_grad():
            for k, v in state["trainable"].items():
                own[k].copy_(v)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.info.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.info.device)
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = json.loads(state["history"])

    # ---- loop -------------------------------------------------------------------------------
    def run(self, resume: str | os.PathLike | None) -> TrainResult:
        self.out.mkdir(parents=True, exist_ok=True)
        self._prepare()
        if resume is not None:
            path = Path(resume)
            self._load_checkpoint(path / CHECKPOINT_NAME if path.is_dir() else path)
        if self.info.is_main:
            (self.out / "train_config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        model = self.task.model
        self.emit({"event": "start", "model": self.cfg.model, "epochs": self.cfg.epochs, "steps": self.steps_per_epoch,
                   "train_cases": len(self.train_cases), "val_cases": 0 if self.val_on_train else len(self.val_cases),
                   "val_on_train": self.val_on_train,
                   "crop": list(self.task.crop_size), "device": str(self.info.device),
                   "world_size": self.info.world_size, "trainable": sum(p.numel() for p in self.params),
                   "parameters": sum(p.numel() for p in model.parameters()), "resumed_epoch": self.epoch})
        stopped = False
        while self.epoch < self.cfg.epochs and not stopped:
            stopped = self._epoch()
        ckpt = self._save_checkpoint() if self.info.is_main else self.out / CHECKPOINT_NAME
        distributed.barrier(self.info)
        if stopped:
            self.emit({"event": "stopped", "epoch": self.epoch, "step": self.step, "checkpoint": str(ckpt)})
            return TrainResult(None, ckpt, self.history, stopped=True, model=self.task.model)
        model_path = self.out / f"{self.cfg.name or self.cfg.model}.safetensors"
        if self.info.is_main:
            self.task.export(model_path)
        distributed.barrier(self.info)
        self.emit({"event": "done", "model": str(model_path), "checkpoint": str(ckpt),
                   "val_dice": self.history[-1].get("val_dice") if self.history else None})
        return TrainResult(model_path, ckpt, self.history, model=self.task.model)

    def _epoch(self) -> bool:
        """One epoch from `self.step`; True when stopped early (checkpoint position kept mid-epoch)."""
        cfg, info = self.cfg, self.info
        started = time.perf_counter()
        self.dataset.epoch = self.epoch
        self.sampler.set_epoch(self.epoch)
        indices = list(self.sampler)[self.step * cfg.batch_size:]
        loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=indices, num_workers=cfg.workers)
        bar = None
        if self.show_bar:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                       unit="step", leave=False)
        _train_mode(self.ddp)
        losses = []
        for image, mask, _spacing in loader:
            if distributed.any_rank(self.stop.is_set(), info):
                if bar is not None:
                    bar.close()
                return True
            rng = np.random.default_rng([cfg.seed, self.epoch, self.step, info.rank, 7])  # prompts of this step
            loss = self._step(image.to(info.device), mask.to(info.device), rng)
            losses.append(loss)
            self.step += 1
            lr = self.sched.get_last_lr()[0]
            self.emit({"event": "step", "epoch": self.epoch + 1, "epochs": cfg.epochs, "step": self.step,
                       "steps": self.steps_per_epoch, "loss": loss, "lr": lr})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
        if bar is not None:
            bar.close()
        train_loss = distributed.mean_over_ranks(float(np.mean(losses)) if losses else float("nan"), info)
        record: dict[str, Any] = {"epoch": self.epoch + 1, "train_loss": train_loss, "lr": self.sched.get_last_lr()[0]}
        if info.is_main and self.val_cases:
            scores = evaluate(self.task, self.net, self.val_cases, info.device, cfg.nsd_tolerance_mm)
            record.update(val_dice=scores["dice"], val_nsd=scores["nsd"], val_on_train=self.val_on_train)
        record["seconds"] = time.perf_counter() - started
        self.history.append(record)
        self.epoch += 1
        self.step = 0
        if info.is_main:
            self._log_csv(record)
            self._save_checkpoint()
            self.emit({"event": "epoch", "epochs": cfg.epochs, **record})
        distributed.barrier(info)
        return False

    def _step(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator) -> float:
        amp = (torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())  # (a disabled CUDA autocast warns on CPU-only machines)
        with amp:
            logits, target = self.task.logits(self.ddp, image, mask, rng)
            loss = dice_ce_loss(logits, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}; "
                                     f"lower the learning rate (--lr)")
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return float(loss.item())

    def _log_csv(self, record: dict[str, Any]) -> None:
        path = self.out / "log.csv"
        columns = ["epoch", "train_loss", "val_dice", "val_nsd", "lr", "seconds"]
        new = not path.exists() or record["epoch"] == 1
        with open(path, "w" if new else "a", newline="") as f:
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(record)
