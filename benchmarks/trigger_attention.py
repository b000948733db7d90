"""Does the provisional model's attention go to the trigger? Image-attention mass on the trigger's tokens.

BYE's premise is that a trigger pulls the last prompt position's attention onto the few image tokens it
covers. For a trigger drawn at fixed places (badnets, checkerboard, dual_patch, multi_patch), this reads a
kept extraction (``threat.py --detect bye --keep DIR``, which keeps ``attention.npz``) and reports, per
layer, the share of image attention on the tokens the trigger touches (found by drawing it on a grey
image of the world's size) for poisoned and clean samples, that share's AUROC, and the entropy's AUROC
(low entropy = suspicious). The ground truth is read for the metrics only.

    python benchmarks/trigger_attention.py .cache/residual/heldout_seed1 --image-size 64 \\
        [--out benchmarks/results/trigger_attention.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from common import machine_line, read_truth_file, write_results

from bye.attacks.poison import trigger_rng
from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.scan import read_features
from bye.settings import trigger

FIXED = ("badnets", "checkerboard", "dual_patch", "multi_patch")


def trigger_tokens(name: str, params: dict, image_size: int, grid: tuple[int, int]) -> np.ndarray:
    """Indices (row-major over ``grid``) of the image tokens whose patch the trigger changes."""
    grey = Image.new("RGB", (image_size, image_size), (128, 128, 128))
    drawn = np.asarray(trigger(name, params).apply(grey, trigger_rng(0, 0)), dtype=np.int16)
    changed = np.abs(drawn - 128).sum(axis=2) > 0
    rows, cols = grid
    blocks = changed.reshape(rows, image_size // rows, cols, image_size // cols).any(axis=(1, 3))
    return np.flatnonzero(blocks.ravel())


def measure(run: Path, name: str, params: dict, image_size: int) -> dict:
    features = read_features(read_manifest(run / "train.json"), run / "extract")
    truth = read_truth_file(run / "truth.json", features.ids)
    with np.load(run / "extract" / "attention.npz") as saved:
        if list(saved["ids"]) != features.ids:
            raise ValueError(f"{run}: attention.npz and entropy.csv list different samples")
        attention, grid = saved["attention"].astype(np.float64), tuple(int(g) for g in saved["grid"])
    tokens = trigger_tokens(name, params, image_size, grid)
    mass = attention[:, :, tokens].sum(axis=2)  # (N, L)
    layers = []
    for layer in range(mass.shape[1]):
        poisoned, clean = mass[truth == 1, layer], mass[truth == 0, layer]
        entropy = np.nan_to_num(features.entropy[:, layer], nan=np.nanmax(features.entropy))
        layers.append({"layer": layer, "mass_poisoned": float(poisoned.mean()), "mass_clean": float(clean.mean()),
                       "mass_poisoned_median": float(np.median(poisoned)),
                       "mass_auroc": float(roc_auc_score(truth, mass[:, layer])),
                       "entropy_auroc": float(roc_auc_score(truth, -entropy))})
    return {"tokens": tokens.tolist(), "uniform_share": len(tokens) / (grid[0] * grid[1]), "layers": layers}


def markdown(results: dict) -> str:
    lines = ["# Image attention on the trigger's tokens (kept extractions)", "",
             f"Machine: {results['machine']}. Mass: the share of a sample's image attention (last prompt position, "
             "heads averaged) on the tokens the trigger touches; uniform attention would give the token share.", "",
             "| run | trigger tokens (share) | layer | mass, poisoned mean (median) | mass, clean mean | mass AUROC | "
             "entropy AUROC |", "|---|---|---|---|---|---|---|"]
    for run, r in results["runs"].items():
        for s in r["layers"]:
            lines.append(f"| {run} | {len(r['tokens'])} ({r['uniform_share']:.1%}) | {s['layer']} | "
                         f"{s['mass_poisoned']:.1%} ({s['mass_poisoned_median']:.1%}) | {s['mass_clean']:.1%} | "
                         f"{s['mass_auroc']:.3f} | {s['entropy_auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", nargs="+", type=Path, help="folders written by threat.py --detect bye --keep")
    parser.add_argument("--image-size", type=int, default=None, help="default: params' world.scene.image_size")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, help="also write this JSON and its .md")
    args = parser.parse_args()
    params = load_params(args.params)
    size = args.image_size or int(params["world"]["scene"]["image_size"])
    runs = {f"{folder.name}/{run.name}": measure(run, run.name, params, size)
            for folder in args.kept for run in sorted(folder.iterdir())
            if run.name in FIXED and (run / "extract" / "attention.npz").exists()}
    results = {"machine": machine_line(), "image_size": size, "runs": runs}
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    main()
