"""One cell of the benchmark matrix: the provisional model every detector shares, and its signals.

On the cell's poisoned submission (``benchmarks/submission.py``), fine-tune the provisional model
every detector shares (``provisional`` without its ``by_method`` entries), and keep every
per-sample signal a detector may read (attention entropy and maps, the decision position's hidden
state, STRIP entropy, each answer's log-likelihood under the base and the provisional model). The
provisional model here is also the undefended fine-tune whenever ``provisional`` changes nothing
in ``finetune`` (``benchmarks/stages.py after`` checks that by fingerprint).

    python benchmarks/cell.py --trigger badnets --rate 0.1     # what DVC runs (benchmarks/dvc.yaml)

Kept apart from ``matrix.py`` so that editing how cells are summarised does not invalidate them.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import cell_arguments
from submission import read_truth, submission_files

from bye.config import load_params
from bye.data.submission import read_manifest
from bye.detect.api import SampleFeatures
from bye.detect.scan import extract_submission, read_features
from bye.io import atomic_write_json
from bye.models.finetune import finetune
from bye.settings import lora_settings, scan_settings

CELLS = Path(__file__).parent / "cells"


def cell_dir(trigger_name: str, rate: float) -> Path:
    return CELLS / f"{trigger_name}-{rate:g}"


def build_cell(trigger_name: str, rate: float, *, base: Path, params: dict) -> Path:
    out = cell_dir(trigger_name, rate)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    data, images = submission_files(trigger_name, rate)
    _, scan = scan_settings(params)
    summary = finetune(data, images, base, out / "adapter", lora_settings(params, provisional=True))
    extract_submission(data, images, base, out / "adapter", out / "extract",
                       settings=replace(scan.extract, signals=("answer_gain", "hidden", "strip"), keep_attention=True))
    atomic_write_json(out / "cell.json", {"trigger": trigger_name, "rate": rate, "seconds": time.perf_counter() - began,
                                          "provisional_finetune_seconds": summary["train_seconds"]})
    return out


def features_of(trigger_name: str, rate: float, extract: Path | None = None) -> tuple[SampleFeatures, np.ndarray]:
    """The features a provisional model gave on a submission (from ``extract``, default the shared
    cell's) and its ground truth, kept apart: only the oracle may be handed the truth."""
    extract = extract or cell_dir(trigger_name, rate) / "extract"
    features = read_features(read_manifest(submission_files(trigger_name, rate)[0]), extract)
    if (extract / "attention.npz").exists():
        with np.load(extract / "attention.npz") as saved:
            features.attention = saved["attention"].astype(np.float32)
    return features, read_truth(trigger_name, rate, features.ids)


def main() -> None:
    args = cell_arguments(__doc__.splitlines()[0])
    print(build_cell(args.trigger, args.rate, base=args.base, params=load_params(args.params)))


if __name__ == "__main__":
    main()
