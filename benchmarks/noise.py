"""The noise floor of "clean accuracy within one point of the oracle": how far the clean fine-tune's
accuracy moves when the oracle's training set (every clean sample of a poisoned submission) loses one
more clean sample, drawn at random.

    python benchmarks/noise.py --trigger badnets --rate 0.1 --drops 4 [--seed 0] [--order keyed|shuffle]

A detector that removes every poisoned sample and a few clean ones trains on such a set. Each
fine-tune is the product's (``finetune`` params, 3 epochs; ``--order`` overrides ``finetune.order``),
evaluated on the world's test split (accuracy, and the ASR of the submission's trigger). With the
shuffled order, dropping one sample reshuffles every epoch; with the keyed order the others keep
their places. Writes ``benchmarks/results/noise_ORDER.json`` and ``noise_ORDER.md``; the machine is
described inside. Adapters go to a temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from common import machine_line, world_arguments
from stages import finetune_and_evaluate
from submission import read_truth, submission_files

from bye.config import load_params
from bye.data.submission import Sample, read_manifest, write_manifest
from bye.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).parent / "results"


def oracle_and_drops(trigger_name: str, rate: float, drops: int, seed: int) -> tuple[list[Sample], list[int | None]]:
    """The oracle's set (every clean sample of the poisoned submission) and the clean samples to drop,
    one per run: ``[None, i1, i2, ...]`` (None: the oracle's set itself), drawn with ``seed``."""
    samples = read_manifest(submission_files(trigger_name, rate)[0])
    clean = [s for s, poisoned in zip(samples, read_truth(trigger_name, rate, [s.id for s in samples])) if not poisoned]
    rng = np.random.default_rng(seed)
    return clean, [None, *(int(i) for i in rng.choice(len(clean), size=drops, replace=False))]


def fine_tune_and_score(kept: list[Sample], work: Path, args: argparse.Namespace, params: dict) -> dict:
    """The product's clean fine-tune on ``kept`` (adapter under ``work``), then accuracy and ASR on the test split."""
    manifest = work / "train.json"
    write_manifest(kept, manifest)
    _, metrics = finetune_and_evaluate(manifest, submission_files(args.trigger, args.rate)[1], work / "adapter",
                                       args.trigger, world=args.world, base=args.base, params=params)
    return {"n_train": len(kept), "accuracy": metrics["accuracy"], "asr": metrics["asr"]}


def drop_arguments(description: str) -> argparse.Namespace:
    parser = world_arguments(argparse.ArgumentParser(description=description))
    parser.add_argument("--trigger", default="badnets")
    parser.add_argument("--drops", type=int, default=4, help="fine-tunes, each without one more random clean sample")
    parser.add_argument("--seed", type=int, default=0, help="which clean samples are dropped")
    parser.add_argument("--order", choices=("keyed", "shuffle"), default=None, help="default: params' finetune.order")
    return parser.parse_args()


def main() -> None:
    args = drop_arguments(__doc__.splitlines()[0])
    params = load_params(args.params)
    order = args.order or params.get("finetune", {}).get("order", "keyed")
    params["finetune"] = {**params.get("finetune", {}), "order": order}
    clean, dropped = oracle_and_drops(args.trigger, args.rate, args.drops, args.seed)
    rows = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for n, drop in enumerate(dropped):
            kept = [s for i, s in enumerate(clean) if i != drop]
            rows.append({"dropped": None if drop is None else clean[drop].id,
                         **fine_tune_and_score(kept, Path(tmp) / f"run-{n}", args, params)})
            print(rows[-1], flush=True)
    accuracies = np.array([r["accuracy"] for r in rows])
    record = {"trigger": args.trigger, "rate": args.rate, "seed": args.seed, "order": order, "runs": rows,
              "oracle_accuracy": rows[0]["accuracy"],
              "max_deviation_points": float(100 * np.abs(accuracies[1:] - accuracies[0]).max()) if len(rows) > 1
              else 0.0,
              "spread_points": float(100 * np.ptp(accuracies)), "seconds": time.perf_counter() - began,
              "machine": machine_line()}
    atomic_write_json(RESULTS / f"noise_{order}.json", record)
    lines = [f"# Clean fine-tune accuracy with one more clean sample dropped ({args.trigger}, {args.rate:.0%} poison, "
             f"{order} epoch order)",
             "", f"Machine: {record['machine']}. Total {record['seconds'] / 60:.1f} min. The first row is the oracle's "
             "set (every clean sample); each other row drops one more, drawn with seed "
             f"{args.seed}. Largest move from the oracle: {record['max_deviation_points']:.1f} points; "
             f"spread {record['spread_points']:.1f} points.", "",
             "| dropped sample | training samples | accuracy | ASR |", "|---|---|---|---|"]
    lines += [f"| {r['dropped'] or '— (oracle)'} | {r['n_train']} | {r['accuracy']:.1%} | {r['asr']:.1%} |" for r in rows]
    atomic_write_text(RESULTS / f"noise_{order}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
