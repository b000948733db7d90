"""Prefect tasks: each wraps one library call of the pipeline and passes paths, never models.

Tasks take and return plain values (paths, dicts) so that Prefect can record them; caching is
DVC's job, so no task caches (``cache_policy=NONE``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE


@task(cache_policy=NONE)
def make_world(out_dir: str, settings: dict) -> dict:
    from bye.data.world import write_world

    return write_world(out_dir, **settings, progress=True)


@task(cache_policy=NONE)
def pretrain_base(model_dir: str, spec, pretrain, scene) -> dict:
    from bye.models.tiny import build_base

    return build_base(model_dir, spec, pretrain, scene, progress=True)


@task(cache_policy=NONE)
def poison(data_json: str, images_dir: str, trigger, out_dir: str, truth_json: str, settings: dict) -> dict:
    from bye.attacks.poison import poison_submission

    result = poison_submission(data_json, images_dir, trigger, out_dir=out_dir, truth_json=truth_json, **settings)
    return {"n_samples": result.n_samples, "n_poisoned": result.n_poisoned}  # the ids stay in the truth file


@task(cache_policy=NONE)
def ingest(path: str, out_dir: str, limits) -> dict:
    from bye.data.ingest import ingest as run_ingest

    report = run_ingest(path, out_dir, limits=limits)
    return {"accepted": len(report.accepted), "rejected": len(report.rejected),
            "rejected_fraction": report.rejected_fraction, "fingerprint": report.fingerprint}


@task(cache_policy=NONE)
def finetune(data_json: str, images_dir: str, base_dir: str, out_dir: str, settings, reuse: str | None = None) -> dict:
    from bye.models.finetune import finetune as run_finetune

    return run_finetune(data_json, images_dir, base_dir, out_dir, settings, reuse=reuse)


@task(cache_policy=NONE)
def extract(data_json: str, images_dir: str, base_dir: str, adapter_dir: str | None, out_dir: str, settings) -> dict:
    from bye.detect.scan import extract_submission

    return extract_submission(data_json, images_dir, base_dir, adapter_dir, out_dir, settings=settings)


@task(cache_policy=NONE)
def profile(entropy_csv: str, out_dir: str, settings, data_json: str | None = None) -> dict:
    from bye.detect.scan import profile_submission

    return profile_submission(entropy_csv, out_dir, settings=settings, data_json=data_json)


@task(cache_policy=NONE)
def cluster(data_json: str, extract_dir: str, out_dir: str, profile_json: str | None, method: str,
            detector: dict) -> dict:
    from bye.detect.scan import cluster_submission

    return cluster_submission(data_json, extract_dir, out_dir, profile_json=profile_json, method=method,
                              detector=detector)


@task(cache_policy=NONE)
def score_detection(scores_csv: str, truth_json: str) -> dict:
    from bye.metrics import score_scan

    return score_scan(scores_csv, truth_json)


@task(cache_policy=NONE)
def evaluate(test_json: str, images_dir: str, base_dir: str, adapter_dir: str | None, settings, *,
             trigger=None, target: str | None = None, out_json: str | None = None,
             predictions_csv: str | None = None) -> dict:
    from bye.models.evaluate import run_evaluation

    return run_evaluation(test_json, images_dir, base_dir, adapter_dir, settings, trigger=trigger, target=target,
                          out_json=out_json, predictions_csv=predictions_csv)


@task(cache_policy=NONE)
def report(out_html: str, *, extract_dir: str, profile_json: str, cluster_dir: str, manifest_json: str,
           images_dir: str, metrics: dict, plots_dir: str, seed: int) -> str:
    from bye.report import write_report

    extract_dir, cluster_dir = Path(extract_dir), Path(cluster_dir)
    attention = extract_dir / "attention.npz"
    return str(write_report(out_html, entropy_csv=extract_dir / "entropy.csv", profile_json=profile_json,
                            scores_csv=cluster_dir / "scores.csv", verdict_json=cluster_dir / "verdict.json",
                            manifest_json=manifest_json, images_dir=images_dir,
                            attention_npz=attention if attention.exists() else None, metrics=metrics, seed=seed,
                            plots_dir=plots_dir))
