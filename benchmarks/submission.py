"""The matrix's first stage: one poisoned submission per (trigger, rate) and its ground truth.

The world's train split poisoned as ``bye poison`` would (``attack`` params, the cell's trigger and
rate), written to ``benchmarks/submissions/<trigger>-<rate>/submission/`` with the truth beside it
(``truth.json``, never inside the submission folder). Every later stage reads it: the shared
provisional model (``cell.py``), a detector's own (``stages.py own``), the oracle.

    python benchmarks/submission.py --trigger badnets --rate 0.1     # what DVC runs

Kept apart from the stages that train, so that editing them does not re-poison anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import cell_arguments, read_truth_file

from bye.config import load_params
from bye.settings import attack_settings, trigger

SUBMISSIONS = Path(__file__).parent / "submissions"


def submission_dir(trigger_name: str, rate: float) -> Path:
    return SUBMISSIONS / f"{trigger_name}-{rate:g}"


def submission_files(trigger_name: str, rate: float) -> tuple[Path, Path]:
    """``(train.json, images/)`` of the poisoned submission."""
    folder = submission_dir(trigger_name, rate) / "submission"
    return folder / "train.json", folder / "images"


def read_truth(trigger_name: str, rate: float, ids: list[str]) -> np.ndarray:
    """The ground truth (1 = poisoned) of ``ids``: for evaluation and the oracle only."""
    return read_truth_file(submission_dir(trigger_name, rate) / "truth.json", ids)


def build_submission(trigger_name: str, rate: float, *, world: Path, params: dict) -> Path:
    from bye.attacks.poison import poison_submission

    out = submission_dir(trigger_name, rate)
    out.mkdir(parents=True, exist_ok=True)
    poison_submission(world / "train.json", world / "images", trigger(trigger_name, params), out_dir=out / "submission",
                      truth_json=out / "truth.json", **attack_settings(params, rate=rate))
    return out


def main() -> None:
    args = cell_arguments(__doc__.splitlines()[0])
    print(build_submission(args.trigger, args.rate, world=args.world, params=load_params(args.params)))


if __name__ == "__main__":
    main()
