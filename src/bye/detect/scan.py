"""Scan one submission end to end: provisional fine-tune, attention, entropy, detector, outputs.

Writes into ``out_dir``:

* ``scores.csv``    one row per input sample: ``id, score, flagged, mean_entropy, entropy_l0..``
                    (``score``: higher = more suspicious);
* ``filtered.json`` the submission minus the flagged samples, same LLaVA format;
* ``verdict.json``  ``"verdict": "poisoned" | "clean"``, counts, sensitive layers, thresholds;
* ``provisional_adapter/`` the LoRA adapter the attention was read from.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bye.data.submission import Sample, read_manifest, resolve_image, write_manifest
from bye.detect.api import SampleFeatures, get_detector
from bye.detect.extract import image_attention, layer_entropy
from bye.io import atomic_write_json, atomic_write_text
from bye.models.chat import open_rgb
from bye.models.finetune import LoraSettings, finetune
from bye.models.loading import load_for_inference


@dataclass(frozen=True)
class ScanSettings:
    method: str = "bye"
    detector: dict = field(default_factory=dict)  # settings of the selected detector
    batch_size: int = 16
    chunk_size: int = 256  # images held in memory at once during extraction


def extract_entropy(model, processor, samples: list[Sample], images_dir: str | Path, *, batch_size: int = 16,
                    chunk_size: int = 256, progress: bool = True) -> np.ndarray:
    """``(N, L)`` per-layer entropy of the last prompt position's attention over image tokens."""
    from tqdm.auto import tqdm

    tables = []
    bar = tqdm(total=len(samples), desc="attention", disable=not progress, unit="sample")
    for start in range(0, len(samples), chunk_size):
        chunk = samples[start:start + chunk_size]
        images = [open_rgb(resolve_image(images_dir, s.image)) for s in chunk]
        attention = image_attention(model, processor, images, [s.question for s in chunk], batch_size=batch_size)
        tables.append(layer_entropy(attention.attention))
        bar.update(len(chunk))
    bar.close()
    return np.concatenate(tables) if tables else np.zeros((0, 0))


def scores_table(ids: list[str], scores: np.ndarray, flagged: np.ndarray, entropy: np.ndarray,
                 mean_entropy: np.ndarray | None) -> str:
    import pandas as pd

    frame = pd.DataFrame({"id": ids, "score": scores, "flagged": flagged.astype(bool)})
    if mean_entropy is not None:
        frame["mean_entropy"] = mean_entropy
    for layer in range(entropy.shape[1]):
        frame[f"entropy_l{layer}"] = entropy[:, layer]
    return frame.to_csv(index=False, float_format="%.6g")


def scan_submission(data_json: str | Path, images_dir: str | Path, base_dir: str | Path, out_dir: str | Path, *,
                    finetune_settings: LoraSettings = LoraSettings(), settings: ScanSettings = ScanSettings(),
                    progress: bool = True) -> dict:
    """Run the whole scan; return the verdict record (also written to ``verdict.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_manifest(data_json)
    timings = {}
    began = time.perf_counter()
    adapter = out / "provisional_adapter"
    finetune(data_json, images_dir, base_dir, adapter, finetune_settings, progress=progress, samples=samples)
    timings["provisional_finetune"] = time.perf_counter() - began

    began = time.perf_counter()
    model, processor = load_for_inference(base_dir, adapter)
    entropy = extract_entropy(model, processor, samples, images_dir, batch_size=settings.batch_size,
                              chunk_size=settings.chunk_size, progress=progress)
    timings["extract"] = time.perf_counter() - began

    began = time.perf_counter()
    ids = [s.id for s in samples]
    result = get_detector(settings.method, **settings.detector).detect(SampleFeatures(ids=ids, entropy=entropy))
    timings["detect"] = time.perf_counter() - began

    mean_entropy = result.details.pop("mean_entropy", None)
    atomic_write_text(out / "scores.csv", scores_table(ids, result.scores, result.flagged, entropy, mean_entropy))
    write_manifest([s for s, f in zip(samples, result.flagged) if not f], out / "filtered.json")
    record = {
        "verdict": result.verdict,
        "method": result.detector,
        "n_samples": len(samples),
        "n_flagged": int(result.flagged.sum()),
        "n_kept": int((~result.flagged).sum()),
        "removed_fraction": float(result.flagged.mean()) if len(samples) else 0.0,
        "sensitive_layers": result.details.get("sensitive_layers", []),
        "thresholds": result.details.get("settings", {}),
        "details": result.details,
        "timings_seconds": timings,
        "provisional_finetune": asdict(finetune_settings),
    }
    atomic_write_json(out / "verdict.json", _jsonable(record))
    return record


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else str(float(value))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return value
