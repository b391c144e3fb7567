"""Fine-tuning from the module, without Qt: the scene's volumes and segments become a training set on disk, and
`samadapt3d train` runs on it in a separate process (Slicer stays responsive, a crash cannot take Slicer down, and
cancel is a signal). The process prints one JSON object per line (`--progress-json`); `TrainingJob.events()` hands
them to the GUI. Tested headless with slicer-core (Testing/test_training_bridge.py).
"""
from __future__ import annotations

import csv
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from SAMAdapt3DSlicerLib import scene_bridge as bridge
from SAMAdapt3DSlicerLib.event_queue import drain
from samadapt3d.errors import InputError

#: the families the module offers to fine-tune (`samadapt3d train --model ...`)
TRAINABLE_MODELS = ("litemedsam-adapter", "sam3d-adapter")


@dataclass
class TrainingCase:
    volume_node: object
    segmentation_node: object
    segment_id: str


def export_training_set(cases: list[TrainingCase], out_dir: str | os.PathLike, target: str | None = None) -> tuple[Path, str]:
    """Write every case as `caseNNN_image.nrrd` + `caseNNN_label.seg.nrrd` (the case's segment, renamed to the
    common target name so that cases whose segments are named differently train one structure) and a `cases.csv`
    (image,label). Returns (csv path, target name). Empty segments are refused: they would teach "nothing here"."""
    from samadapt3d.automatic import save_label_map

    if not cases:
        raise InputError("no segment to train on: choose at least one volume and segment")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    first = cases[0]
    if target is None:
        segment = first.segmentation_node.GetSegmentation().GetSegment(first.segment_id)
        if segment is None:
            raise InputError(f"segment {first.segment_id!r} not found in '{first.segmentation_node.GetName()}'")
        target = segment.GetName() or "target"
    rows = []
    for n, case in enumerate(cases):
        volume = bridge.volume_from_node(case.volume_node)
        mask = bridge.segment_mask(case.segmentation_node, case.segment_id, case.volume_node)
        if not mask.any():
            raise InputError(f"segment {case.segment_id!r} of '{case.segmentation_node.GetName()}' is empty on "
                             f"'{case.volume_node.GetName()}': paint it (or remove it from the training set) first")
        image_path = out / f"case{n:03d}_image.nrrd"
        label_path = out / f"case{n:03d}_label.seg.nrrd"
        volume.save(image_path)
        save_label_map(volume, mask.astype(np.uint8), (target,), label_path)
        rows.append((image_path.name, label_path.name))
    csv_path = out / "cases.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "label"])
        writer.writerows(rows)
    return csv_path, target


def training_command(data: str | os.PathLike, target: str, out_dir: str | os.PathLike, model: str = TRAINABLE_MODELS[0],
                     epochs: int = 20, device: str = "auto", sam_checkpoint: str | os.PathLike | None = None,
                     extra: list[str] | None = None, python: str | None = None) -> list[str]:
    """The command line of `samadapt3d train` with machine-readable progress. 3DSAM-adapter starts from the SAM
    base file and recomputes its encoder blocks in the backward (a full ViT-B step otherwise needs > 16 GiB)."""
    check_training_options(model, epochs, sam_checkpoint)
    options = []
    if model == "sam3d-adapter":
        options = ["--sam-checkpoint", str(sam_checkpoint), "--checkpoint-activations"]
    return [python or _python_executable(), "-m", "samadapt3d", "train", "--data", str(data), "--target", target,
            "--model", model, "--out", str(out_dir), "--epochs", str(int(epochs)), "--device", device,
            "--progress-json", *options, *(extra or [])]


def check_training_options(model: str, epochs: int, sam_checkpoint: str | os.PathLike | None = None) -> None:
    """Refuse a run that cannot start, before anything is exported."""
    if model not in TRAINABLE_MODELS:
        raise InputError(f"cannot fine-tune {model!r}; trainable: {', '.join(TRAINABLE_MODELS)}")
    if int(epochs) < 1:
        raise InputError(f"epochs must be at least 1, got {epochs}")
    if model == "sam3d-adapter" and (not sam_checkpoint or not Path(sam_checkpoint).is_file()):
        raise InputError("fine-tuning 3DSAM-adapter starts from the SAM ViT-B file (sam_vit_b_01ec64.pth): "
                         "set it as the SAM base file in the Model section")


def _python_executable() -> str:
    """Slicer's sys.executable is the Slicer binary on some platforms; PythonSlicer runs plain Python there."""
    exe = Path(sys.executable)
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = exe.with_name(name)
        if candidate.is_file():
            return str(candidate)
    return str(exe)


class TrainingJob:
    """One training process. `events()` returns what it printed since the last call: dicts from its JSON lines,
    {"event": "log", "text": ...} for other lines, and finally {"event": "exit", "returncode": ...}."""

    def __init__(self, command: list[str], log_path: str | os.PathLike | None = None, env: dict | None = None):
        self.command = list(command)
        self.log_path = Path(log_path) if log_path else None
        self.env = env
        self.process: subprocess.Popen | None = None
        self.cancelled = False
        self._events: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        if self.process is not None:
            raise RuntimeError("this training job was already started")
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        bufsize=1, env=env, **kwargs)
        self._reader = threading.Thread(target=self._read, name="SAMAdapt3D-training-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        log = open(self.log_path, "a") if self.log_path else None
        try:
            for line in self.process.stdout:
                if log:
                    log.write(line)
                    log.flush()
                self._events.put(parse_progress_line(line))
        finally:
            if log:
                log.close()
            self._events.put({"event": "exit", "returncode": self.process.wait(), "cancelled": self.cancelled})

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def events(self) -> list[dict]:
        return drain(self._events)

    def cancel(self, timeout: float = 60.0) -> None:
        """Ask the trainer to stop (it saves a resumable checkpoint on SIGINT/SIGTERM), kill it if it does not."""
        if not self.running:
            return
        self.cancelled = True
        if os.name == "nt":
            self.process.send_signal(signal.CTRL_BREAK_EVENT)
        else:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def wait(self, timeout: float | None = None) -> int:
        code = self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        return code


def parse_progress_line(line: str) -> dict:
    text = line.strip()
    if text.startswith("{"):
        try:
            event = json.loads(text)
            if isinstance(event, dict):
                return event
        except json.JSONDecodeError:
            pass
    return {"event": "log", "text": text}


def failure_detail(events: list[dict]) -> str:
    """Why a run failed, for the status line: the trainer's own error message, else its last printed line."""
    for event in reversed(events):
        if event.get("event") == "error" and event.get("message"):
            return str(event["message"])
    for event in reversed(events):
        if event.get("event") == "log" and event.get("text"):
            return str(event["text"])
    return "see training.log"


def describe_progress(event: dict) -> str:
    """One status line from a progress event, whatever fields the trainer put in it."""
    parts = []
    if "epoch" in event:
        parts.append(f"epoch {event['epoch']}" + (f"/{event['epochs']}" if "epochs" in event else ""))
    if "step" in event:
        parts.append(f"step {event['step']}" + (f"/{event['steps']}" if "steps" in event else ""))
    for key in ("loss", "train_loss", "val_dice", "dice", "val_nsd"):
        if isinstance(event.get(key), (int, float)):
            parts.append(f"{key.replace('_', ' ')} {event[key]:.3f}")
    return ", ".join(parts) or event.get("text", "") or event.get("event", "")


def find_trained_model(out_dir: str | os.PathLike, events: list[dict] = ()) -> Path | None:
    """The model file a finished run wrote: the path its last events name, else the newest .safetensors in
    `out_dir` (the trainer's own format, which the model selector loads like any other file)."""
    for event in reversed(list(events)):
        for key in ("model", "model_path", "output", "path"):
            value = event.get(key)
            if isinstance(value, str) and value.endswith(".safetensors") and Path(value).is_file():
                return Path(value)
    found = sorted(Path(out_dir).glob("**/*.safetensors"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
