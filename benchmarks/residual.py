"""BYE on the entropies' prompt residuals against BYE on the entropies: every kept scan rescored, no fine-tune.

``profile.residualise: prompt`` profiles and scores each layer's entropy minus what the question text
predicts of it (``bye.detect.cluster.prompt_residuals``). This scores both tables, under each layer rule
of ``CONFIGS``, on

* clean worlds, the scans ``verdict.py --keep DIR`` keeps (``DIR/seed-N/scan-3ep``, the world in
  ``DIR/seed-N/world``): a "poisoned" verdict there is a false alarm;
* poisoned submissions, the folders ``threat.py --detect bye --keep DIR`` keeps (``DIR/TRIGGER/extract``,
  ``train.json``, ``truth.json``; the ground truth is read for the metrics only).

    python benchmarks/residual.py --clean .cache/verdict_rebuilt --poisoned .cache/prompt_check/rebuilt \\
        [--out benchmarks/results/residual.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from common import machine_line, read_truth_file, with_overrides, write_results
from stages import run_detector

from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.scan import read_features
from bye.metrics import detection_metrics
from bye.settings import scan_settings

# name -> overrides of params.yaml; the first is the published method (with the project's verdict)
CONFIGS = {
    "entropy, code rule": [],
    "entropy, paper rule (tau 2)": ["profile.rule=paper", "profile.tau=2.0"],
    "residual, code rule": ["profile.residualise=prompt"],
    "residual, paper rule (tau 2)": ["profile.residualise=prompt", "profile.rule=paper", "profile.tau=2.0"],
    "residual, paper rule (tau 2.25)": ["profile.residualise=prompt", "profile.rule=paper", "profile.tau=2.25"],
    "residual, paper rule (tau 2.5)": ["profile.residualise=prompt", "profile.rule=paper", "profile.tau=2.5"],
}
CAUGHT_F1 = 0.5  # a "poisoned" verdict on a poisoned submission with a lower F1 is a wrong cut


def scored(samples_json: Path, extract: Path, truth: np.ndarray | None, params: dict) -> dict:
    features = read_features(read_manifest(samples_json), extract)
    truth = np.zeros(len(features), dtype=int) if truth is None else truth
    result = run_detector("bye", features, truth, params)
    record = {"verdict": result.verdict, "removed": float(result.flagged.mean()),
              "sensitive_layers": result.details.get("sensitive_layers", []),
              "reasons": list(result.details.get("verdict_reasons", []))}
    if truth.any():
        scores = np.nan_to_num(result.scores, nan=-np.inf, neginf=-1e9, posinf=1e9)
        metrics = detection_metrics(truth, result.flagged, scores)
        record.update({k: metrics[k] for k in ("f1", "precision", "recall", "auroc")})
    return record


def clean_scans(folder: Path, epochs: float) -> list[tuple[str, Path, Path]]:
    return [(f"{folder.name}/{seed.name}", seed / "world" / "train.json", seed / f"scan-{epochs:g}ep")
            for seed in sorted(folder.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
            if (seed / f"scan-{epochs:g}ep" / "entropy.csv").exists()]


def poisoned_runs(folder: Path) -> list[tuple[str, Path, Path, Path]]:
    return [(f"{folder.name}/{run.name}", run / "train.json", run / "extract", run / "truth.json")
            for run in sorted(folder.iterdir()) if (run / "truth.json").exists()]


def summary(records: dict) -> dict:
    clean = list(records["clean"].values())
    poisoned = list(records["poisoned"].values())
    return {"clean_worlds": len(clean),
            "false_alarms": sum(r["verdict"] == "poisoned" for r in clean),
            "mean_kept": float(np.mean([1 - r["removed"] for r in clean])) if clean else float("nan"),
            "min_kept": float(np.min([1 - r["removed"] for r in clean])) if clean else float("nan"),
            "poisoned": len(poisoned),
            "caught": sum(r["verdict"] == "poisoned" and r["f1"] >= CAUGHT_F1 for r in poisoned),
            "wrong_cuts": sum(r["verdict"] == "poisoned" and r["f1"] < CAUGHT_F1 for r in poisoned),
            "median_auroc": float(np.median([r["auroc"] for r in poisoned])) if poisoned else float("nan")}


def markdown(results: dict) -> str:
    names = list(results["configs"])
    lines = ["# BYE on the prompt residuals (`profile.residualise: prompt`) against the entropies", "",
             f"Machine: {results['machine']}. Every kept scan rescored (no fine-tune); the verdict as in "
             f"params.yaml (prompt check included). \"Caught\": verdict poisoned with F1 >= {CAUGHT_F1}; "
             "a \"wrong cut\": verdict poisoned with a lower F1.", "",
             f"Clean worlds from {', '.join(results['clean_inputs']) or 'none'}; poisoned fine-tunes from "
             f"{', '.join(results['poisoned_inputs']) or 'none'}.", "",
             "| table, layer rule | false alarms / clean worlds | mean kept | lowest kept | caught | wrong cuts | "
             "median AUROC |", "|---|---|---|---|---|---|---|"]
    for name in names:
        s = results["configs"][name]["summary"]
        lines.append(f"| {name} | {s['false_alarms']} / {s['clean_worlds']} | {s['mean_kept']:.1%} | "
                     f"{s['min_kept']:.1%} | {s['caught']} / {s['poisoned']} | {s['wrong_cuts']} | "
                     f"{s['median_auroc']:.3f} |")
    lines += ["", "Poisoned submissions, F1 (AUROC) per table and rule; `-` = verdict clean:", "",
              "| run | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for run in results["configs"][names[0]]["poisoned"]:
        cells = []
        for name in names:
            r = results["configs"][name]["poisoned"][run]
            cells.append(f"{r['f1']:.2f} ({r['auroc']:.3f})" if r["verdict"] == "poisoned" else f"- ({r['auroc']:.3f})")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", "Clean worlds, share removed per table and rule (`-` = verdict clean):", "",
              "| world | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for world in results["configs"][names[0]]["clean"]:
        cells = [f"{r['removed']:.1%}" if r["verdict"] == "poisoned" else "-"
                 for r in (results["configs"][name]["clean"][world] for name in names)]
        lines.append(f"| {world} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clean", nargs="*", type=Path, default=[], help="folders kept by verdict.py --keep")
    parser.add_argument("--poisoned", nargs="*", type=Path, default=[], help="folders kept by threat.py --keep")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, help="also write this JSON and its .md")
    args = parser.parse_args()
    base_params = load_params(args.params)
    epochs = scan_settings(base_params, method="bye")[0].epochs
    clean = [scan for folder in args.clean for scan in clean_scans(folder, epochs)]
    poisoned = [run for folder in args.poisoned for run in poisoned_runs(folder)]
    results = {"machine": machine_line(), "clean_inputs": [str(p) for p in args.clean],
               "poisoned_inputs": [str(p) for p in args.poisoned], "configs": {}}
    for name, overrides in CONFIGS.items():
        params = with_overrides(load_params(args.params), overrides)
        records = {"clean": {label: scored(data, scan, None, params) for label, data, scan in clean},
                   "poisoned": {}}
        for label, data, extract, truth_json in poisoned:
            ids = [s.id for s in read_manifest(data)]
            records["poisoned"][label] = scored(data, extract, read_truth_file(truth_json, ids), params)
        results["configs"][name] = {"overrides": overrides, **records, "summary": summary(records)}
        print(name, results["configs"][name]["summary"], flush=True)
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    main()
