"""False alarms of the verdict: scan clean worlds (no poison at all) and count what is removed.

    python benchmarks/verdict.py --base models/base --seeds 1,2,3 [--n-train 2000] [--method answer_gain] \
        [--set finetune.train_projector=true --name projector]

Writes ``benchmarks/results/verdict.json`` and ``verdict.md`` (``verdict_METHOD.*`` for another
detector than the default, ``_NAME`` appended with ``--name``: a run with ``--set`` overrides of
``params.yaml``): per world the verdict, the removed fraction, the sensitive layers and the evidence,
next to what the detector without its verdict (the published method: always remove the low-entropy
cluster) would have removed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bye.config import build, load_params
from bye.data.submission import read_manifest
from bye.data.world import WorldConfig, write_world
from bye.detect.api import get_detector
from bye.detect.cluster import robust_scale
from bye.detect.scan import cluster_submission, profile_submission, read_features, saved_signals, scan_submission
from bye.models.finetune import training_fingerprint
from bye.settings import scan_settings
from common import with_overrides

RESULTS = Path(__file__).parent / "results"


def same_provisional(scan: Path, lora, base: Path) -> bool:
    """Whether a kept scan's provisional adapter was trained with ``lora`` on the kept world and ``base``."""
    try:
        saved = json.loads((scan / "provisional_adapter" / "training.json").read_text())["fingerprint"]
    except (OSError, ValueError, KeyError):
        return False
    world = scan.parent / "world"
    return saved == training_fingerprint(lora, world / "train.json", world / "images", base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--seeds", type=str, default="1,2,3")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--method", default=None, help="detector (default: params' cluster.method)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="keep each world and scan under this folder; a rerun reuses them and only re-clusters")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", help="appended to the result files' names (a run with --set overrides)")
    args = parser.parse_args()
    params = with_overrides(load_params(args.params), args.overrides)
    lora, settings = scan_settings(params, method=args.method)
    name = ("verdict" if settings.method == "bye" else f"verdict_{settings.method}") + (f"_{args.name}" if args.name else "")
    scene = build(WorldConfig, params.get("world", {}).get("scene"))
    task = params.get("world", {}).get("task", "mixed")  # --set world.task=vqa|mcq: other submission types
    rows = []
    rescored = False
    began = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp) if args.keep is None else args.keep / f"seed-{seed}"
            data = tmp / "world" / "train.json"
            scan = tmp / f"scan-{lora.epochs:g}ep"  # one kept scan per provisional length (detectors differ)
            if (scan / "verdict.json").exists() and set(settings.extract.signals) <= saved_signals(scan) \
                    and same_provisional(scan, lora, args.base):
                profile, rescored = None, True
                if settings.method == "bye":
                    profile_submission(scan / "entropy.csv", scan, settings=settings.profile, data_json=data)
                    profile = scan / "profile.json"
                record = cluster_submission(data, scan, scan, profile_json=profile,
                                            method=settings.method, detector=settings.detector)
            else:
                write_world(tmp / "world", n_train=args.n_train, n_test=0, seed=seed, task=task, config=scene)
                record = scan_submission(data, tmp / "world" / "images", args.base, scan,
                                         finetune_settings=lora, settings=settings, progress=False)
            features = read_features(read_manifest(data), scan)
            forced = get_detector(settings.method, **{**settings.detector, "use_verdict": False}).detect(features)
            scores = forced.scores[np.isfinite(forced.scores)]
            top = float((scores.max() - np.median(scores)) / robust_scale(scores))
            rows.append({
                "seed": seed,
                "verdict": record["verdict"],
                "removed_fraction": record["removed_fraction"],
                "published_removed_fraction": float(forced.flagged.mean()),
                "sensitive_layers": record["sensitive_layers"],
                "evidence": record["details"]["evidence"],
                "max_robust_z": top,  # the highest score, in robust sigmas (1.4826 MAD) above the median
                "reasons": record["details"]["verdict_reasons"],
            })
            print(rows[-1], flush=True)
    summary = {
        "method": settings.method,
        "task": task,
        "overrides": args.overrides,
        "worlds": rows,
        "false_alarm_rate": float(np.mean([r["verdict"] == "poisoned" for r in rows])),
        "mean_kept_fraction": float(1 - np.mean([r["removed_fraction"] for r in rows])),
        "seconds": time.perf_counter() - began,
        "rescored_from_kept_scans": rescored,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    lines = ["| world seed | verdict | removed | without the verdict would remove (BYE: the published method; all "
             "layers when none is sensitive, where the published code crashes) | sensitive layers | evidence | "
             "highest score (robust sigmas above the median) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['verdict']} | {r['removed_fraction']:.1%} | {r['published_removed_fraction']:.1%} "
              f"| {r['sensitive_layers']} | " + ", ".join(f"{k} {v:.3g}" for k, v in r["evidence"].items()
                                                       if isinstance(v, (int, float)))
              + f" | {r['max_robust_z']:.2f} |" for r in rows]
    overrides = f", {', '.join(f'`{o}`' for o in args.overrides)}" if args.overrides else ""
    (RESULTS / f"{name}.md").write_text(
        f"# Verdict on clean worlds ({settings.method}{overrides})\n\nFalse-alarm rate {summary['false_alarm_rate']:.0%}, "
        f"mean kept {summary['mean_kept_fraction']:.1%} ({args.n_train} samples each).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
