"""Scan one submission: the pipeline's detection stages as plain functions on files.

Each step reads the previous step's files and writes its own, so the pipeline can run, cache
and resume them one at a time (``extract`` -> ``profile`` -> ``cluster``), and
:func:`scan_submission` chains them after the provisional fine-tune for one-shot use.

``extract`` writes into its folder:

* ``entropy.csv``    one row per sample: ``id, entropy_l0 .. entropy_l{L-1}`` (nats);
* ``attention.npz``  ``ids``, ``attention`` (N x L x K float16 image-attention rows), ``grid``
                     (the image-token grid ``[h, w]``), for the report's heatmaps;
* ``signals.npz``    what ``signals`` asks for: ``hidden`` and ``strip_entropy`` (the
                     representation and perturbation baselines read them), and for
                     ``answer_gain`` ``answer_loglik`` / ``answer_loglik_base`` / ``answer_tokens``
                     (each sample's answer under the provisional and the base model);
* ``extract.json``   sizes and timing.

``profile`` writes ``profile.json`` (per-layer two-Gaussian statistics, sensitive layers); with
``residualise: prompt`` they are of the entropies' prompt residuals, which it writes to
``residuals.csv`` (``id, residual_l0 ..``).

``cluster`` writes:

* ``scores.csv``     one row per sample: ``id, score, flagged, mean_entropy, entropy_l0..``
                     (``score``: higher = more suspicious);
* ``filtered.json``  the submission minus the flagged samples, same LLaVA format;
* ``verdict.json``   ``"verdict": "poisoned" | "clean"``, counts, sensitive layers, reasons.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bye.data.submission import Sample, read_manifest, resolve_image, write_manifest
from bye.detect.api import SampleFeatures, get_detector
from bye.detect.cluster import scored_table
from bye.detect.extract import image_attention, layer_entropy
from bye.detect.profile import LayerProfile, profile_layers
from bye.io import atomic_write_json, atomic_write_text
from bye.models.chat import EncodedSample, open_rgb
from bye.models.finetune import LoraSettings, encode_manifest, finetune
from bye.models.loading import load_for_inference, load_processor


@dataclass(frozen=True)
class ExtractSettings:
    batch_size: int = 16
    chunk_size: int = 256  # images held in memory at once
    keep_attention: bool = True  # float16 maps for the report
    encoding_cache_mb: int = 1024  # encoded samples kept from the base model's pass for the provisional one
    signals: tuple[str, ...] = ()  # also "hidden", "strip" (baselines), "answer_gain" (detector of that name)


@dataclass(frozen=True)
class ProfileSettings:
    rule: str = "code"  # "code": |mu1-mu2| > 2(s1+s2); "paper": BSI >= tau
    tau: float = 2.0
    seed: int = 0
    residualise: str = "none"  # "prompt": profile each layer's entropy minus what the question text predicts


@dataclass(frozen=True)
class ScanSettings:
    method: str = "bye"
    detector: dict = field(default_factory=dict)  # settings of the selected detector
    extract: ExtractSettings = ExtractSettings()
    profile: ProfileSettings = ProfileSettings()


# ------------------------------------------------------------------------------------- extract


class SubmissionImages(Sequence):
    """The samples' images, found and opened on access: a pass over a large submission holds one
    batch of images in memory, not all of them, and a pass that reads encoded samples opens none.
    Indexing by a slice gives a list."""

    def __init__(self, samples: list[Sample], images_dir: str | Path):
        self._names, self._dir = [s.image for s in samples], images_dir

    def __len__(self) -> int:
        return len(self._names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [open_rgb(resolve_image(self._dir, name)) for name in self._names[index]]
        return open_rgb(resolve_image(self._dir, self._names[index]))


def extract_attention(model, processor, samples: list[Sample], images_dir: str | Path, *,
                      settings: ExtractSettings = ExtractSettings(), progress: bool = True,
                      answers: bool = False,
                      encodings: dict[int, list] | None = None) -> dict[str, np.ndarray | None]:
    """BYE's profile of the samples, read in chunks of ``settings.chunk_size`` images:
    ``{"entropy": (N, L), "maps": (N, L, K) float16 or None}``. With ``answers`` the same forward
    (:func:`bye.detect.signals.answer_pass`) also gives ``"answer_loglik"`` and ``"answer_tokens"``;
    ``encodings`` (chunk start -> encoded samples, from :func:`base_answer_pass`) saves encoding
    those chunks again."""
    from tqdm.auto import tqdm

    from bye.detect.signals import answer_pass

    tables, maps, logliks, counts = [], [], [], []
    bar = tqdm(total=len(samples), desc="attention", disable=not progress, unit="sample")
    for start in range(0, len(samples), settings.chunk_size):
        chunk = samples[start:start + settings.chunk_size]
        images = SubmissionImages(chunk, images_dir)  # opened on access: not at all for a chunk already encoded
        questions = [s.question for s in chunk]
        if answers:
            result = answer_pass(model, processor, images, questions, [s.answer for s in chunk],
                                 batch_size=settings.batch_size, attention=True, keep_maps=settings.keep_attention,
                                 encoded=(encodings or {}).get(start))
            attention = result.attention
            logliks.append(result.loglik)
            counts.append(result.n_tokens)
        else:
            attention = image_attention(model, processor, images, questions, batch_size=settings.batch_size,
                                        keep_maps=settings.keep_attention)
        tables.append(layer_entropy(attention.attention))
        if settings.keep_attention:
            maps.append(attention.maps)
        bar.update(len(chunk))
    bar.close()
    out = {"entropy": np.concatenate(tables) if tables else np.zeros((0, 0)), "maps": None}
    if answers:
        out["answer_loglik"] = np.concatenate(logliks) if logliks else np.zeros(0)
        out["answer_tokens"] = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    if maps:
        width = max(m.shape[-1] for m in maps)  # chunks of variable image-token counts (NaN-padded)
        padded = [np.pad(m, ((0, 0), (0, 0), (0, width - m.shape[-1])), constant_values=np.nan) for m in maps]
        out["maps"] = np.concatenate(padded)
    return out


def entropy_table(ids: list[str], entropy: np.ndarray, prefix: str = "entropy_l") -> str:
    import pandas as pd

    frame = pd.DataFrame({"id": ids})
    for layer in range(entropy.shape[1]):
        frame[f"{prefix}{layer}"] = entropy[:, layer]
    return frame.to_csv(index=False, float_format="%.6g")


def read_entropy(entropy_csv: str | Path) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(entropy_csv, dtype={"id": str}, keep_default_na=False, na_values=["", "nan", "NaN"])
    return frame["id"].tolist(), frame.filter(like="entropy_l").to_numpy(dtype=np.float64)


def image_grid(n_tokens: int) -> list[int]:
    """The image-token grid ``[h, w]`` for heatmaps: square when it can be, else one row."""
    side = math.isqrt(n_tokens)
    return [side, side] if side * side == n_tokens else [1, n_tokens]


def extract_submission(data_json: str | Path, images_dir: str | Path, base_dir: str | Path,
                       adapter_dir: str | Path | None, out_dir: str | Path, *,
                       settings: ExtractSettings = ExtractSettings(), progress: bool = True,
                       encoded: Sequence[EncodedSample] | None = None) -> dict:
    """Read every sample's attention with the provisional model; write entropy.csv (+ attention.npz).
    ``encoded``: the samples as the provisional fine-tune encoded them (read by ``answer_gain``'s
    passes instead of encoding them again)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_manifest(data_json)
    unknown = set(settings.signals) - set(SIGNALS)
    if unknown:
        raise ValueError(f"unknown signals {sorted(unknown)}; expected some of {list(SIGNALS)}")
    began = time.perf_counter()
    arrays, encodings = {}, None
    if "answer_gain" in settings.signals:  # the base model first, so only one model is held at a time
        model, processor = load_for_inference(base_dir)
        arrays["answer_loglik_base"], encodings = base_answer_pass(model, processor, samples, images_dir, settings,
                                                                   progress, encoded)
        del model
    model, processor = load_for_inference(base_dir, adapter_dir)
    # answer_gain's provisional pass reads BYE's attention row too: one forward, not two.
    read = extract_attention(model, processor, samples, images_dir, settings=settings, progress=progress,
                             answers="answer_gain" in settings.signals, encodings=encodings)
    del encodings
    entropy, maps = read.pop("entropy"), read.pop("maps")
    arrays.update(read)
    ids = [s.id for s in samples]
    atomic_write_text(out / "entropy.csv", entropy_table(ids, entropy))
    if settings.signals:
        write_signals(model, processor, samples, images_dir, out / "signals.npz", settings, arrays, progress)
    n_tokens = int(maps.shape[-1]) if maps is not None else 0
    if maps is not None:
        tmp = out / ".attention.tmp.npz"
        np.savez_compressed(tmp, ids=np.array(ids), attention=maps, grid=np.array(image_grid(n_tokens)))
        tmp.replace(out / "attention.npz")
    record = {"n_samples": len(ids), "n_layers": int(entropy.shape[1]) if entropy.ndim == 2 else 0,
              "n_image_tokens": n_tokens, "settings": asdict(settings)}
    atomic_write_json(out / "extract.json", record)  # no timings in stage outputs: same inputs, same bytes
    return {**record, "seconds": time.perf_counter() - began}


# Each signal ``extract.signals`` may name, and the arrays it writes into signals.npz.
SIGNAL_ARRAYS = {
    "hidden": ("hidden",),
    "strip": ("strip_entropy",),
    "answer_gain": ("answer_loglik", "answer_loglik_base", "answer_tokens"),
}
SIGNALS = tuple(SIGNAL_ARRAYS)


def saved_signals(extract_dir: str | Path) -> set[str]:
    """The signals whose arrays are all in ``extract_dir/signals.npz`` (none without the file)."""
    path = Path(extract_dir) / "signals.npz"
    if not path.exists():
        return set()
    with np.load(path) as saved:
        names = set(saved.files)
    return {signal for signal, arrays in SIGNAL_ARRAYS.items() if set(arrays) <= names}


def _nbytes(encoded) -> int:
    tensors = [encoded.input_ids, encoded.labels, *encoded.vision.values(), *encoded.per_token.values()]
    return sum(t.numel() * t.element_size() for t in tensors if hasattr(t, "element_size"))


def base_answer_pass(model, processor, samples: list[Sample], images_dir: str | Path, settings: ExtractSettings,
                     progress: bool = False,
                     encoded: Sequence[EncodedSample] | None = None) -> tuple[np.ndarray, dict[int, list]]:
    """The base model's answer log-likelihood of every sample, read in chunks of
    ``settings.chunk_size`` images. Returns ``(loglik (N,), encodings)``: the chunks' encoded
    samples by chunk start, kept while they fit in ``settings.encoding_cache_mb``, so that the
    provisional model's pass (:func:`extract_attention`) encodes only the chunks that did not.
    ``encoded`` hands in every sample already encoded for training
    (:func:`bye.models.finetune.encode_manifest`, as the provisional fine-tune did): nothing is
    encoded here then."""
    from tqdm.auto import tqdm

    from bye.detect.signals import answer_pass, encode_answers

    if encoded is not None and len(encoded) != len(samples):
        raise ValueError(f"{len(encoded)} encoded samples for {len(samples)} samples")
    budget, used = settings.encoding_cache_mb * 2**20, 0
    logliks, kept = [], {}
    bar = tqdm(total=len(samples), desc="answers (base)", disable=not progress, unit="sample")
    for start in range(0, len(samples), settings.chunk_size):
        chunk = samples[start:start + settings.chunk_size]
        images = SubmissionImages(chunk, images_dir)  # opened once, by the encoding (not at all if handed in)
        questions, answers = [s.question for s in chunk], [s.answer for s in chunk]
        chunk_encoded = (list(encoded[start:start + settings.chunk_size]) if encoded is not None
                         else encode_answers(processor, images, questions, answers))
        logliks.append(answer_pass(model, processor, images, questions, answers, batch_size=settings.batch_size,
                                   encoded=chunk_encoded).loglik)
        size = sum(_nbytes(e) for e in chunk_encoded)
        if used + size <= budget:
            kept[start], used = chunk_encoded, used + size
        bar.update(len(chunk))
    bar.close()
    return (np.concatenate(logliks) if logliks else np.zeros(0)), kept


def write_signals(model, processor, samples: list[Sample], images_dir: str | Path, path: Path,
                  settings: ExtractSettings, arrays: dict | None = None, progress: bool = False) -> None:
    """The signals ``settings.signals`` names, read with ``model``, into ``path`` (with ``arrays``,
    those computed elsewhere: both models' answer log-likelihoods)."""
    from bye.detect.signals import decision_hidden, strip_entropy

    images = SubmissionImages(samples, images_dir)  # STRIP blends in partners from anywhere
    questions = [s.question for s in samples]
    arrays = dict(arrays or {})
    if "answer_gain" in settings.signals and not {"answer_loglik", "answer_loglik_base"} <= set(arrays):
        raise ValueError("the answer_gain signal needs both models' answer log-likelihoods (read by the attention pass)")
    if "hidden" in settings.signals:
        arrays["hidden"] = decision_hidden(model, processor, images, questions, batch_size=settings.batch_size)
    if "strip" in settings.signals:
        arrays["strip_entropy"] = strip_entropy(model, processor, images, questions, batch_size=settings.batch_size)
    tmp = path.with_name(".signals.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)


def read_features(samples: list[Sample], extract_dir: str | Path) -> SampleFeatures:
    """Everything the extract stage wrote for ``samples``, as detector features (answers as pseudo-classes)."""
    extract_dir = Path(extract_dir)
    ids, entropy = read_entropy(extract_dir / "entropy.csv")
    if ids != [s.id for s in samples]:
        raise ValueError(f"{extract_dir / 'entropy.csv'} does not list the submission's samples in order")
    extra = {"pseudo_labels": np.array([s.answer for s in samples]), "questions": [s.question for s in samples]}
    if (extract_dir / "signals.npz").exists():
        with np.load(extract_dir / "signals.npz") as signals:
            extra.update({k: signals[k] for k in signals.files})
    return SampleFeatures(ids=ids, entropy=entropy, extra=extra)


# ------------------------------------------------------------------------------------- profile


def profile_submission(entropy_csv: str | Path, out_dir: str | Path, *,
                       settings: ProfileSettings = ProfileSettings(), data_json: str | Path | None = None) -> dict:
    """Which layers split the submission in two: write profile.json. ``data_json`` (the submission the
    entropies were read from) gives the questions that ``settings.residualise == "prompt"`` needs; it is
    not read otherwise."""
    ids, entropy = read_entropy(entropy_csv)
    questions = None
    if data_json is not None and settings.residualise != "none":
        samples = read_manifest(data_json)
        if ids != [s.id for s in samples]:
            raise ValueError(f"{entropy_csv} does not list the samples of {data_json} in order")
        questions = [s.question for s in samples]
    table = scored_table(entropy, residualise=settings.residualise, questions=questions, seed=settings.seed)
    profile = profile_layers(table, rule=settings.rule, tau=settings.tau, seed=settings.seed,
                             residualise=settings.residualise)
    residuals_csv = Path(out_dir) / "residuals.csv"
    if settings.residualise != "none":  # the table profiled, for the report's histograms
        atomic_write_text(residuals_csv, entropy_table(ids, table, prefix="residual_l"))
    else:  # a folder profiled again without residuals keeps no stale table
        residuals_csv.unlink(missing_ok=True)
    record = _jsonable(profile.to_dict())
    atomic_write_json(Path(out_dir) / "profile.json", record)
    return record


# ------------------------------------------------------------------------------------- cluster


def scores_table(ids: list[str], scores: np.ndarray, flagged: np.ndarray, entropy: np.ndarray,
                 mean_entropy: np.ndarray | None, columns: dict[str, np.ndarray] | None = None) -> str:
    """``id, score, flagged``, then the detector's own per-sample ``columns`` (BYE: ``mean_entropy``;
    answer_gain: ``gain``), then the per-layer entropies."""
    import pandas as pd

    frame = pd.DataFrame({"id": ids, "score": scores, "flagged": flagged.astype(bool)})
    if mean_entropy is not None:
        frame["mean_entropy"] = mean_entropy
    for name, values in (columns or {}).items():
        frame[name] = values
    for layer in range(entropy.shape[1]):
        frame[f"entropy_l{layer}"] = entropy[:, layer]
    return frame.to_csv(index=False, float_format="%.6g")


def cluster_submission(data_json: str | Path, extract_dir: str | Path, out_dir: str | Path, *,
                       profile_json: str | Path | None = None, method: str = "bye",
                       detector: dict | None = None) -> dict:
    """Score, flag and decide: write scores.csv, filtered.json and verdict.json; return the verdict."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = read_manifest(data_json)
    features = read_features(samples, extract_dir)
    ids, entropy = features.ids, features.entropy
    if profile_json is not None:
        features.extra["profile"] = LayerProfile.from_dict(json.loads(Path(profile_json).read_text()))
    began = time.perf_counter()
    result = get_detector(method, **(detector or {})).detect(features)
    seconds = time.perf_counter() - began
    mean_entropy = result.details.pop("mean_entropy", None)
    columns = result.details.pop("columns", None)
    atomic_write_text(out / "scores.csv", scores_table(ids, result.scores, result.flagged, entropy, mean_entropy,
                                                       columns))
    write_manifest([s for s, f in zip(samples, result.flagged) if not f], out / "filtered.json")
    record = {
        "verdict": result.verdict,
        "method": result.detector,
        "n_samples": len(samples),
        "n_flagged": int(result.flagged.sum()),
        "n_kept": int((~result.flagged).sum()),
        "removed_fraction": float(result.flagged.mean()) if len(samples) else 0.0,
        "sensitive_layers": result.details.get("sensitive_layers", []),
        "reasons": result.details.get("verdict_reasons", []),
        "thresholds": result.details.get("settings", {}),
        "details": result.details,
    }
    record = _jsonable(record)
    atomic_write_json(out / "verdict.json", record)  # no timings in stage outputs: same inputs, same bytes
    return {**record, "seconds": seconds}


# ------------------------------------------------------------------------------------- one shot


def scan_submission(data_json: str | Path, images_dir: str | Path, base_dir: str | Path, out_dir: str | Path, *,
                    finetune_settings: LoraSettings = LoraSettings(), settings: ScanSettings = ScanSettings(),
                    progress: bool = True) -> dict:
    """Provisional fine-tune, extract, profile, cluster into one folder; return the verdict record.

    ``out_dir`` also holds ``provisional_adapter/``, the LoRA adapter the attention was read from.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}
    began = time.perf_counter()
    adapter = out / "provisional_adapter"
    samples, encoded = read_manifest(data_json), None
    if "answer_gain" in settings.extract.signals:  # its passes read the samples as training encodes them: once
        encoded = encode_manifest(load_processor(base_dir), samples, images_dir, progress=progress)
    finetune(data_json, images_dir, base_dir, adapter, finetune_settings, progress=progress, samples=samples,
             encoded=encoded)
    timings["provisional_finetune"] = time.perf_counter() - began
    timings["extract"] = extract_submission(data_json, images_dir, base_dir, adapter, out, settings=settings.extract,
                                            progress=progress, encoded=encoded)["seconds"]
    del encoded
    profile_json = None
    if settings.method == "bye":
        profile_submission(out / "entropy.csv", out, settings=settings.profile, data_json=data_json)
        profile_json = out / "profile.json"
    record = cluster_submission(data_json, out, out, profile_json=profile_json,
                                method=settings.method, detector=settings.detector)
    timings["detect"] = record.pop("seconds")
    record["timings_seconds"] = timings
    record["provisional_finetune"] = asdict(finetune_settings)
    atomic_write_json(out / "verdict.json", record)
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
