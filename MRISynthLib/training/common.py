"""Helpers shared by the trainers: run set-up, checkpoint save (atomic), resume, the
origin of a run that starts from a shipped model, the cosine learning-rate schedule and
the per-step log/checkpoint cadence."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch

from ..fileutil import atomic_output


def start_run(out_dir, threads: Optional[int], seed: int) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    return out_dir


def save_ckpt(path: Path, **state) -> None:
    with atomic_output(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def resume(ckpt: Path, module: torch.nn.Module, opt) -> int:
    """Load a checkpoint into ``module`` and ``opt`` if there is one; returns its step."""
    if not ckpt.exists():
        return 0
    st = torch.load(ckpt, weights_only=False)
    module.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    return int(st["step"])


def run_origin(ckpt: Path, card) -> dict:
    """The model a run starts from (``card``'s id, SHA256 and training, for the exported
    card's ``continued_from``), written beside the checkpoint when the run starts and read
    back while its checkpoint exists: exporting later, when the shipped card may already
    have been replaced by this run's own export, still names the model it started from."""
    f = Path(ckpt).with_name(Path(ckpt).stem + "_origin.json")
    if f.exists() and Path(ckpt).exists():
        return json.loads(f.read_text())
    info = {"id": card.id, "sha256": card.sha256, "training": card.training}
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(info))
    return info


def cosine_lr(base: float, step: int, total: int, start: int = 0, floor: float = 0.05) -> float:
    """Learning rate at ``step``: ``base`` until ``start``, then a cosine from ``base`` down to
    ``floor * base`` at ``total`` (held there after it)."""
    if step < start:
        return base
    frac = min((step - start) / max(total - start, 1), 1.0)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def log_step(writer, log, row, step: int, every: int, save) -> None:
    """Write one loss-log row; every ``every`` steps save a checkpoint (``save(step + 1)``)
    and flush the log, so a killed run loses at most ``every`` steps and its log agrees."""
    writer.writerow(row)
    if (step + 1) % every == 0:
        save(step + 1)
        log.flush()
