"""One training loop for pre-training and LoRA fine-tuning: deterministic, resumable.

The loop trains whatever parameters require gradients. Every ``checkpoint_every`` steps it
writes the trainable weights (safetensors), the optimiser and scheduler state, the random
state and the step into ``checkpoint_dir``; a later call with the same fingerprint resumes
from there and ends exactly where an uninterrupted run would have ended.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from bye.io import atomic_write_json
from bye.models.chat import EncodedSample, collate
from bye.models.loading import to_model


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50  # optimiser steps; 0 disables checkpoints


@dataclass
class TrainResult:
    steps: int
    epoch_losses: list[float]
    seconds: float
    samples_per_second: float
    resumed_from_step: int


def _epoch_order(n: int, seed: int, epoch: int, keys: list[str] | None = None) -> list[int]:
    """One epoch's sample order.

    Without ``keys``, a seeded permutation of ``range(n)``. With ``keys`` (one per sample, e.g. its
    id), the samples sorted by a hash of (seed, epoch, key): every sample's place relative to the
    others depends on its own key only, so removing a few samples (the flagged ones) leaves the
    rest in the same relative order and mostly in the same batches, instead of reshuffling every
    epoch. Ties (repeated keys) keep input order.
    """
    if keys is None:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return torch.randperm(n, generator=generator).tolist()
    if len(keys) != n:
        raise ValueError(f"{len(keys)} order keys for {n} samples")
    digests = [hashlib.sha256(f"{seed}/{epoch}/{key}".encode()).digest() for key in keys]
    return sorted(range(n), key=digests.__getitem__)


def _schedule(n_samples: int, config: TrainConfig, keys: list[str] | None = None) -> list[tuple[int, list[int]]]:
    """Every optimiser step as (epoch, sample indices); a fractional last epoch is truncated."""
    steps_per_epoch = math.ceil(n_samples / config.batch_size)
    total = max(1, round(config.epochs * steps_per_epoch))
    plan = []
    epoch = 0
    while len(plan) < total:
        order = _epoch_order(n_samples, config.seed, epoch, keys)
        for start in range(0, n_samples, config.batch_size):
            plan.append((epoch, order[start:start + config.batch_size]))
            if len(plan) == total:
                break
        epoch += 1
    return plan


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(directory: Path, model, optimizer, scheduler, step: int, fingerprint: str, losses) -> None:
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in _trainable(model).items()}, str(tmp / "trainable.safetensors"))
    # Optimiser state is tensors and numbers only; it is reloaded with weights_only=True.
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    rng = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from its own generator
        rng["cuda_rng"] = torch.stack(torch.cuda.get_rng_state_all())
    save_file(rng, str(tmp / "rng.safetensors"))
    atomic_write_json(tmp / "state.json", {"step": step, "fingerprint": fingerprint, "losses": losses})
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _load_checkpoint(directory: Path, model, optimizer, scheduler, fingerprint: str):
    state_file = directory / "state.json"
    if not state_file.exists():
        return 0, []
    state = json.loads(state_file.read_text())
    if state.get("fingerprint") != fingerprint:
        return 0, []  # a checkpoint of another run: ignore it
    weights = load_file(str(directory / "trainable.safetensors"))
    params = _trainable(model)
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    blob = torch.load(directory / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    rng = load_file(str(directory / "rng.safetensors"))
    torch.set_rng_state(rng["torch_rng"])
    if "cuda_rng" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(rng["cuda_rng"]))
    return int(state["step"]), list(state["losses"])


def optimizer_step(loss: torch.Tensor, params: list, optimizer, scheduler, max_grad_norm: float = 1.0) -> float:
    """Backward, clip (unless ``max_grad_norm`` is 0), step the optimiser and the schedule; the loss."""
    loss.backward()
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def train(
    model: torch.nn.Module,
    samples: list[EncodedSample],
    config: TrainConfig,
    *,
    pad_token_id: int,
    checkpoint_dir: str | Path | None = None,
    fingerprint: str = "",
    progress: bool = True,
    description: str = "train",
    order_keys: list[str] | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``samples`` (loss on labelled tokens only).

    ``order_keys`` (one per sample) make each epoch's order a function of the keys (see
    :func:`_epoch_order`); without them each epoch is a seeded shuffle.
    """
    torch.manual_seed(config.seed)
    model.train()
    params = list(_trainable(model).values())
    if not params:
        raise ValueError("no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    plan = _schedule(len(samples), config, order_keys)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.warmup_ratio * len(plan)), len(plan))
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else None
    start, step_losses = (0, [])
    if checkpoint is not None:
        start, step_losses = _load_checkpoint(checkpoint, model, optimizer, scheduler, fingerprint)
    began = time.perf_counter()
    seen = 0
    bar = tqdm(total=len(plan), initial=start, desc=description, disable=not progress, unit="step")
    for step in range(start, len(plan)):
        _, indices = plan[step]
        batch = to_model(model, collate([samples[i] for i in indices], pad_token_id))
        step_losses.append(optimizer_step(model(**batch).loss, params, optimizer, scheduler, config.max_grad_norm))
        seen += len(indices)
        bar.update(1)
        bar.set_postfix(loss=f"{step_losses[-1]:.3f}")
        if checkpoint is not None and config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 \
                and step + 1 < len(plan):
            _save_checkpoint(checkpoint, model, optimizer, scheduler, step + 1, fingerprint, step_losses)
    bar.close()
    model.eval()
    seconds = time.perf_counter() - began
    epochs = [e for e, _ in plan]
    epoch_losses = []
    for epoch in sorted(set(epochs)):
        values = [loss for loss, e in zip(step_losses, epochs) if e == epoch]
        epoch_losses.append(sum(values) / len(values))
    return TrainResult(
        steps=len(plan),
        epoch_losses=epoch_losses,
        seconds=seconds,
        samples_per_second=seen / seconds if seconds > 0 else float("nan"),
        resumed_from_step=start,
    )
