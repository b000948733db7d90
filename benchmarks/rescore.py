"""Rescore kept extractions: detector settings against the same provisional models, without fine-tuning again.

``threat.py --detect … --keep DIR`` keeps each trigger's extraction, manifest and ground truth under
``DIR/TRIGGER/``. This scores them again with ``--set`` overrides of ``params.yaml`` (the layer
profile's rule, the verdict's thresholds), and reports per trigger: F1, AUROC, verdict, the sensitive
layers, and per layer the AUROC of its entropy alone, the code rule's margin
(``|mu1-mu2| - 2(s1+s2)``, > 0 passes) and the paper's BSI (>= tau passes).

    python benchmarks/rescore.py .cache/keep/seed3 .cache/keep/seed4 --set profile.rule=paper \\
        [--out benchmarks/results/rescore_NAME.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from common import machine_line, read_truth_file, with_overrides, write_results
from stages import run_detector

from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.scan import read_features
from bye.metrics import detection_metrics


def rescore(folder: Path, detector: str, params: dict) -> dict:
    """``detector`` on one kept trigger folder (``extract/``, ``train.json``, ``truth.json``)."""
    features = read_features(read_manifest(folder / "train.json"), folder / "extract")
    ids, entropy = features.ids, features.entropy
    truth = read_truth_file(folder / "truth.json", ids)
    result = run_detector(detector, features, truth, params)
    scores = np.nan_to_num(result.scores, nan=-np.inf, neginf=-1e9, posinf=1e9)
    metrics = detection_metrics(truth, result.flagged, scores)
    record = {**{k: metrics[k] for k in ("f1", "precision", "recall", "auroc", "removed")}, "verdict": result.verdict,
              "sensitive_layers": result.details.get("sensitive_layers", []),
              "evidence": result.details.get("evidence", {}),
              "reasons": list(result.details.get("verdict_reasons", [])),
              "layer_auroc": [float(roc_auc_score(truth, -np.nan_to_num(entropy[:, layer], nan=np.nanmax(entropy))))
                              for layer in range(entropy.shape[1])]}
    for key in ("code_margin", "bsi"):
        record[f"layer_{key}"] = [layer[key] for layer in result.details.get("layers", [])]
    return record


def markdown(results: dict, overrides: list[str], detector: str) -> str:
    lines = [f"# Rescored extractions: `{detector}`" + (f", {', '.join(f'`{o}`' for o in overrides)}" if overrides else ""),
             "", f"Machine: {machine_line()}.", "",
             "| draw | trigger | F1 | AUROC | removed | verdict | sensitive layers | prompt AUROC | per-layer AUROC | "
             "code margin | BSI |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for draw, triggers in results.items():
        for trigger, r in triggers.items():
            def row(values):
                return " ".join(f"{v:.2f}" for v in values)
            prompt = r["evidence"].get("prompt_auroc")
            lines.append(f"| {draw} | {trigger} | {r['f1']:.2f} | {r['auroc']:.3f} | {r['removed']:.1%} | {r['verdict']} | "
                         f"{r['sensitive_layers'] or '—'} | {'—' if prompt is None else f'{prompt:.3f}'} | "
                         f"{row(r['layer_auroc'])} | {row(r['layer_code_margin'])} | {row(r['layer_bsi'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", nargs="+", type=Path, help="folders written by threat.py --keep")
    parser.add_argument("--detector", default="bye")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="also write this JSON and its .md")
    args = parser.parse_args()
    params = with_overrides(load_params(args.params), args.overrides)
    results = {str(draw): {t.name: rescore(t, args.detector, params) for t in sorted(draw.iterdir())
                           if (t / "truth.json").exists()} for draw in args.kept}
    write_results(args.out, {"detector": args.detector, "overrides": args.overrides, "draws": results,
                             "machine": machine_line()}, markdown(results, args.overrides, args.detector))


if __name__ == "__main__":
    main()
