"""The benchmark matrix: every trigger x poison rate x detector, and the clean fine-tune after each.

Its cached DVC stages (``benchmarks/dvc.yaml``; a rerun computes only what changed):

* ``submission`` (``benchmarks/submission.py``): one poisoned submission per (trigger, rate);
* ``cell`` (``benchmarks/cell.py``): on it, the provisional model every detector shares and every
  signal a detector may read;
* ``own`` (``benchmarks/stages.py``): for a detector with its own provisional length
  (``provisional.by_method``), that model and its signals on the same submission;
* ``after_reference`` / ``after`` (``benchmarks/stages.py``, 10 % poison): each detector's filtered
  submission fine-tuned as the product would, with clean accuracy and attack success rate.

This file is the ``summarise`` stage (seconds): every registered detector on every cell, and the
``after`` results, into ``benchmarks/results/matrix.json`` / ``matrix.md`` / ``matrix.png``. A
detector with its own provisional model appears twice: under its name (its own model, what the
product runs) and as ``<name>@shared`` (the shared model).

Entries are merged into the committed ``matrix.json``: what the stages present here computed
replaces its entry, and every entry computed here is stamped with the base model it was measured
on (``base``: the first 12 hex digits of the md5 of ``model.safetensors``) and with the epoch
order of the fine-tune it rests on (``order``: ``keyed`` or ``shuffle``, from the adapter's
``training.json``), so a matrix filled over several runs says which entries share a base model
and a training order.

    python benchmarks/matrix.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from cell import cell_dir, features_of
from common import machine_line
from stages import AFTER, AFTER_RATE, detector_features, own_dir, own_methods, run_detector
from submission import SUBMISSIONS

from bye.config import load_params
from bye.detect.api import DETECTORS
from bye.io import atomic_write_json, atomic_write_text
from bye.metrics import detection_metrics
from bye.settings import lora_settings

RESULTS = Path(__file__).parent / "results"


def base_stamp(base: Path) -> str:
    """The first 12 hex digits of the md5 of the base model's weights."""
    digest = hashlib.md5()
    with open(base / "model.safetensors", "rb") as weights:
        for block in iter(lambda: weights.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def epoch_order(adapter: Path) -> str | None:
    """The epoch order an adapter was trained with (``finetune.order``); adapters older than the
    setting were shuffled. None when the adapter is not there."""
    try:
        return json.loads((adapter / "training.json").read_text())["settings"].get("order", "shuffle")
    except (OSError, ValueError, KeyError):
        return None


def summarise(params: dict, base: Path = Path("models/base"), results: Path = RESULTS) -> dict:
    previous = json.loads((results / "matrix.json").read_text()) if (results / "matrix.json").exists() else {}
    matrix: dict = previous.get("matrix", {})
    stamp = base_stamp(base)
    own = own_methods(params)
    submissions = sorted(p for p in SUBMISSIONS.glob("*-*") if (p / "truth.json").exists())
    cells = []
    for folder in submissions:
        trigger_name, rate = folder.name.rsplit("-", 1)
        shared = features_of(trigger_name, float(rate)) if (cell_dir(trigger_name, float(rate)) / "cell.json").exists() \
            else None
        if shared is not None:
            cells.append(folder.name)
        for name in sorted(DETECTORS):
            if name in own:
                runs = [(name, detector_features(trigger_name, float(rate), name, params)), (f"{name}@shared", shared)]
            else:
                runs = [(name, shared)]
            for key, found in runs:
                if found is None:
                    continue
                adapter = own_dir(trigger_name, float(rate)) / name / "adapter" if key == name and name in own \
                    else cell_dir(trigger_name, float(rate)) / "adapter"
                features, truth = found
                try:
                    result = run_detector(name, features, truth, params)
                except ValueError as error:  # a feature this cell lacks
                    print(f"{folder.name} {key}: skipped ({error})")
                    continue
                scores = np.nan_to_num(result.scores, nan=-np.inf, neginf=-1e9, posinf=1e9)
                metrics = detection_metrics(truth, result.flagged, scores)
                matrix.setdefault(key, {}).setdefault(trigger_name, {})[f"{float(rate):g}"] = {
                    "f1": metrics["f1"], "precision": metrics["precision"], "recall": metrics["recall"],
                    "auroc": metrics["auroc"], "removed": metrics["removed"], "verdict": result.verdict, "base": stamp,
                    "order": epoch_order(adapter)}
    after: dict = previous.get("after_finetune", {}).get("results", {})
    for path in sorted(AFTER.glob("*/after.json")):
        entry = json.loads(path.read_text())
        if entry["detector"] in own and entry.get("provisional_epochs") != own[entry["detector"]].epochs:
            continue  # filtered by a provisional model of another length than params asks for
        after.setdefault(entry["detector"], {})[entry["trigger"]] = {
            **{k: entry[k] for k in ("accuracy", "asr", "removed", "f1", "verdict", "reused_from")}, "base": stamp,
            "order": epoch_order(path.parent / "adapter")}
    record = {"matrix": matrix, "after_finetune": {"rate": AFTER_RATE, "results": after},
              "cells": sorted(set(previous.get("cells", [])) | set(cells)),
              "own_provisional": {m: s.epochs for m, s in own.items()},
              "shared_provisional_epochs": lora_settings(params, provisional=True).epochs,
              "machine": machine_line()}
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(results / "matrix.json", record)
    atomic_write_text(results / "matrix.md", markdown(matrix) + "\n" + after_markdown(after))
    figure(matrix, results / "matrix.png")
    return record


def figure(matrix: dict, path: Path) -> None:
    """F1 (and AUROC) per trigger per detector, one row of heatmaps per poison rate."""
    from matplotlib.figure import Figure

    detectors = sorted(matrix)
    triggers = sorted({t for per in matrix.values() for t in per})
    rates = sorted({r for per in matrix.values() for rates in per.values() for r in rates}, key=float)
    fig = Figure(figsize=(2 + 0.75 * len(triggers) * 2, 1 + 0.45 * len(detectors) * len(rates)), layout="constrained")
    axes = fig.subplots(len(rates), 2, squeeze=False)
    for row, rate in enumerate(rates):
        for col, key in enumerate(("f1", "auroc")):
            values = np.array([[matrix[d].get(t, {}).get(rate, {}).get(key, np.nan) for t in triggers]
                               for d in detectors], dtype=float)
            ax = axes[row, col]
            ax.imshow(values, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, "—" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(v) or v < 0.6 else "black")
            ax.set_xticks(range(len(triggers)), triggers, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(detectors)), detectors, fontsize=8)
            ax.set_title(f"{key.upper()} at {float(rate):.0%} poison", fontsize=9)
    fig.savefig(path, dpi=110, metadata={"Software": None})


def markdown(matrix: dict) -> str:
    cells = sorted({(t, r) for per in matrix.values() for t, rates in per.items() for r in rates})
    header = "| detector | " + " | ".join(f"{t} {float(r):.0%}" for t, r in cells) + " |"
    lines = [header, "|---|" + "---|" * len(cells)]
    for name, per in sorted(matrix.items()):
        row = []
        for t, r in cells:
            m = per.get(t, {}).get(r)
            row.append("—" if m is None else f"F1 {m['f1']:.2f} / AUROC {m['auroc']:.2f} / rm {m['removed']:.0%}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def after_markdown(after: dict) -> str:
    """Accuracy / ASR of the clean fine-tune after each detector, one row per detector."""
    triggers = sorted({t for per in after.values() for t in per})
    if not triggers:
        return ""
    lines = [f"Clean fine-tune after filtering, {AFTER_RATE:.0%} poison: clean accuracy / ASR (removed)\n",
             "| detector | " + " | ".join(triggers) + " |", "|---|" + "---|" * len(triggers)]
    for name, per in sorted(after.items()):
        row = ["—" if t not in per else f"{per[t]['accuracy']:.1%} / {per[t]['asr']:.1%} ({per[t]['removed']:.0%})"
               for t in triggers]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where matrix.json (read back and merged into), matrix.md and matrix.png go")
    args = parser.parse_args()
    print(json.dumps(summarise(load_params(args.params), args.base, args.results)["matrix"], indent=1))


if __name__ == "__main__":
    main()
