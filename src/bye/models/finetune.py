"""LoRA fine-tuning of an image-text model on a submission (peft, answer tokens only).

One module for every checkpoint: LoRA goes on the language model's linear layers named in
``target_modules`` (matched under ``language_model``), optionally the projector is trained in
full, and the adapter is saved with ``save_pretrained``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bye.data.submission import Sample, read_manifest, resolve_image
from bye.io import atomic_directory, atomic_write_json, reproducible
from bye.models.chat import EncodedSample, encode_for_training, open_rgb
from bye.models.loading import load_base
from bye.runtime import current as current_runtime
from bye.models.training import TrainConfig, train


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    language_model_pattern: str = "language_model"
    train_projector: bool = False
    projector_modules: tuple[str, ...] = ("multi_modal_projector",)
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    seed: int = 0
    order: str = "keyed"  # keyed: each epoch sorts the samples by a hash of (seed, epoch, id) | shuffle
    checkpoint_every: int = 50

    def __post_init__(self):
        if self.order not in ("keyed", "shuffle"):
            raise ValueError(f"finetune.order must be 'keyed' or 'shuffle', not {self.order!r}")

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, learning_rate=self.learning_rate,
                           weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio, seed=self.seed,
                           checkpoint_every=self.checkpoint_every)


def add_lora(model, settings: LoraSettings):
    from peft import LoraConfig, get_peft_model

    names = "|".join(settings.target_modules)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        # Only the language model's layers: vision towers often reuse names like q_proj.
        target_modules=rf".*{settings.language_model_pattern}.*\.({names})$",
        modules_to_save=list(settings.projector_modules) if settings.train_projector else None,
    )
    torch.manual_seed(settings.seed)  # LoRA's A matrices are drawn at random
    return get_peft_model(model, config)


def encode_manifest(processor, samples: list[Sample], images_dir: str | Path, *, progress: bool = True,
                    with_answers: bool = True) -> list[EncodedSample]:
    encoded = []
    for sample in tqdm(samples, desc="encode", disable=not progress):
        image = open_rgb(resolve_image(images_dir, sample.image))
        encoded.append(encode_for_training(processor, image, sample.question, sample.answer if with_answers else None))
    return encoded


def training_fingerprint(settings: LoraSettings, data_json: str | Path, images_dir: str | Path, base_dir: str | Path,
                         samples: list[Sample] | None = None) -> str:
    """What an adapter is a function of: the settings, the manifest, the bytes of every image it names and
    the base checkpoint's config and weights, and the device and dtype when they are not the CPU's
    defaults (:mod:`bye.runtime`). Equal fingerprints, equal adapters (training is deterministic per
    seed): a resumed run checks it, and an adapter trained on the same inputs can be reused."""
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(settings), sort_keys=True).encode())
    digest.update(Path(data_json).read_bytes())
    for sample in read_manifest(data_json) if samples is None else samples:
        digest.update(hashlib.sha256(resolve_image(images_dir, sample.image).read_bytes()).digest())
    base = Path(base_dir)
    for path in [base / "config.json", *sorted(base.glob("*.safetensors"))]:
        with path.open("rb") as handle:
            digest.update(path.name.encode() + hashlib.file_digest(handle, "sha256").digest())
    runtime = current_runtime()
    device = runtime.torch_device()
    if device.type != "cpu" or runtime.dtype != "auto":  # on the CPU in the checkpoint's dtype: as before
        digest.update(f"{device.type}/{runtime.torch_dtype(device)}".encode())
    return digest.hexdigest()


def _fingerprint_of(adapter_dir: str | Path) -> str | None:
    try:
        return json.loads((Path(adapter_dir) / "training.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def default_checkpoint_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    return out.with_name(f".{out.name}.checkpoints")


def finetune(data_json: str | Path, images_dir: str | Path, base_dir: str | Path, out_dir: str | Path,
             settings: LoraSettings = LoraSettings(), *, checkpoint_dir: str | Path | None = None,
             progress: bool = True, samples: list[Sample] | None = None,
             reuse: str | Path | list[str | Path] | None = None,
             encoded: list[EncodedSample] | None = None) -> dict:
    """Fine-tune a LoRA adapter on ``data_json`` and save it to ``out_dir``; return a summary.

    ``reuse`` names an adapter folder (or several) that may already be this very result: when one's
    recorded fingerprint equals this call's (same settings, manifest bytes, images and base), it is
    copied instead of trained again, and the summary says ``reused_from``.

    Interrupted runs resume from ``checkpoint_dir`` (default: a hidden sibling of ``out_dir``),
    which is removed once the adapter is written.

    ``encoded`` hands in the samples already encoded by :func:`encode_manifest` with this base's
    processor (a caller that reads them again afterwards, like the scan, encodes them once).
    """
    data_json, base_dir = Path(data_json), Path(base_dir)
    samples = read_manifest(data_json) if samples is None else samples
    fingerprint = training_fingerprint(settings, data_json, images_dir, base_dir, samples)
    candidates = [] if reuse is None else [reuse] if isinstance(reuse, (str, Path)) else list(reuse)
    for candidate in candidates:
        if _fingerprint_of(candidate) == fingerprint:
            with atomic_directory(out_dir) as tmp:
                shutil.copytree(candidate, tmp, dirs_exist_ok=True)
            return {**json.loads((Path(out_dir) / "training.json").read_text()), "reused_from": str(candidate)}
    model, processor = load_base(base_dir)
    model = add_lora(model, settings)
    if encoded is None:
        encoded = encode_manifest(processor, samples, images_dir, progress=progress)
    elif len(encoded) != len(samples):
        raise ValueError(f"{len(encoded)} encoded samples for the {len(samples)} of {data_json}")
    checkpoint = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out_dir)
    result = train(model, encoded, settings.train_config(), pad_token_id=processor.tokenizer.pad_token_id,
                   checkpoint_dir=checkpoint, fingerprint=fingerprint,
                   progress=progress, description="LoRA fine-tune",
                   order_keys=[s.id for s in samples] if settings.order == "keyed" else None)
    trainable, total = model.get_nb_trainable_parameters()
    summary = {
        "n_samples": len(samples),
        "steps": result.steps,
        "epoch_losses": result.epoch_losses,
        "train_seconds": result.seconds,
        "samples_per_second": result.samples_per_second,
        "resumed_from_step": result.resumed_from_step,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "settings": asdict(settings),
        "fingerprint": fingerprint,
    }
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        atomic_write_json(tmp / "training.json", reproducible(summary))
    shutil.rmtree(checkpoint, ignore_errors=True)
    return summary
