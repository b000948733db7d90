"""One cell of the benchmark matrix: a poisoned submission, its shared provisional model, its signals.

Poison the world's train split at one (trigger, rate), fine-tune the provisional model every
detector shares (``provisional`` without its ``by_method`` entries), and keep every per-sample
signal a detector may read (attention entropy and maps, the decision position's hidden state,
STRIP entropy, each answer's log-likelihood under the base and the provisional model). The
provisional model here is also the undefended fine-tune whenever ``provisional`` changes nothing
in ``finetune`` (``benchmarks/matrix.py after`` checks that by fingerprint).

    python benchmarks/cell.py --trigger badnets --rate 0.1     # what DVC runs (benchmarks/dvc.yaml)

Kept apart from ``matrix.py`` so that editing how cells are summarised does not invalidate them.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import world_arguments

from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.api import SampleFeatures
from bye.detect.scan import extract_submission, read_features
from bye.io import atomic_write_json
from bye.models.finetune import finetune
from bye.settings import attack_settings, lora_settings, scan_settings, trigger

CELLS = Path(__file__).parent / "cells"


def cell_dir(trigger_name: str, rate: float) -> Path:
    return CELLS / f"{trigger_name}-{rate:g}"


def build_cell(trigger_name: str, rate: float, *, world: Path, base: Path, params: dict) -> Path:
    from bye.attacks.poison import poison_submission

    out = cell_dir(trigger_name, rate)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    settings = {**attack_settings(params), "rate": rate}
    poison_submission(world / "train.json", world / "images", trigger(trigger_name, params), out_dir=out / "submission",
                      truth_json=out / "truth.json", **settings)
    data = out / "submission" / "train.json"
    _, scan = scan_settings(params)
    summary = finetune(data, out / "submission" / "images", base, out / "adapter", lora_settings(params, provisional=True))
    extract_submission(data, out / "submission" / "images", base, out / "adapter", out / "extract",
                       settings=replace(scan.extract, signals=("answer_gain", "hidden", "strip"), keep_attention=True))
    atomic_write_json(out / "cell.json", {"trigger": trigger_name, "rate": rate, "seconds": time.perf_counter() - began,
                                          "provisional_finetune_seconds": summary["train_seconds"]})
    return out


def features_of(cell: Path, extract: Path | None = None) -> tuple[SampleFeatures, np.ndarray]:
    """A cell's features (from ``extract``, default the cell's own) and its ground truth, kept apart:
    only the oracle may be handed the truth."""
    extract = extract or cell / "extract"
    features = read_features(read_manifest(cell / "submission" / "train.json"), extract)
    truth_map = json.loads((cell / "truth.json").read_text())
    if (extract / "attention.npz").exists():
        with np.load(extract / "attention.npz") as saved:
            features.attention = saved["attention"].astype(np.float32)
    return features, np.array([truth_map[i] for i in features.ids])


def main() -> None:
    parser = world_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), rate=None)
    parser.add_argument("--trigger", required=True)
    parser.add_argument("--rate", type=float, required=True)
    args = parser.parse_args()
    print(build_cell(args.trigger, args.rate, world=args.world, base=args.base, params=load_params(args.params)))


if __name__ == "__main__":
    main()
