"""One Prefect flow per pipeline stage; ``dvc.yaml`` runs each as ``python -m flows STAGE``.

Every flow reads its knobs from ``params.yaml`` (through :mod:`bye.settings`, as the CLI does),
runs its library calls as tasks, opens a nested MLflow run under the submission's pipeline run
(:mod:`tasks.tracking`), gates its hand-off with a Great Expectations suite
(:mod:`tasks.expectations`) and logs what a reviewer needs: params, metrics, expectation
results, tables, manifests, adapters and plots. Paths follow :class:`Layout`, relative to a
root: the repository for ``dvc repro``, a per-submission folder for the deployment.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from bye.config import load_params
from bye.io import atomic_write_json
from bye.runtime import configure as configure_runtime
from bye.settings import (
    attack_settings,
    base_settings,
    eval_settings,
    ingest_settings,
    lora_settings,
    scan_settings,
    trigger,
    world_settings,
)
from tasks import stages as t

SETUP = "setup"  # the fingerprint under which the demo's world-building stages are logged


class Layout:
    """Where each stage reads and writes: ``Layout(root).ingested`` is ``root/data/ingested``.

    The demo's own stages write ``world``, ``embedded_base`` and ``submission`` (with its ground truth).
    The stages that scan and evaluate read ``base`` (the checkpoint), ``upload`` (what ingest reads: a
    folder, ``.zip`` or ``.tar.gz``) and ``test`` (a folder holding ``test.json`` and ``images/``): those
    three by default, or what params ``pipeline`` names (relative to the root, or absolute), or, for
    ``base``, the argument (the deployment's checkpoint). The demo's stages never write there.
    """

    PIPELINE_KEYS = ("base", "submission", "test")

    RELATIVE = {
        "world": "data/world", "base": "models/base", "submission": "data/submission",
        "truth": "data/truth/submission.json", "ingested": "data/ingested",
        "provisional": "models/adapters/provisional", "adapters": "models/adapters", "extract": "reports/extract",
        "profile": "reports/profile", "cluster": "reports/cluster", "report": "reports/report", "gx": "reports/gx",
        "metrics": "metrics",
    }

    def __init__(self, root: str | Path = ".", base: str | Path | None = None, pipeline: dict | None = None):
        self.root = Path(root)
        for name, relative in self.RELATIVE.items():
            setattr(self, name, self.root / relative)
        configured = dict(pipeline or {})
        unknown = set(configured) - set(self.PIPELINE_KEYS)
        if unknown:
            raise ValueError(f"params pipeline: unknown keys {sorted(unknown)} (known: {', '.join(self.PIPELINE_KEYS)})")

        def where(key: str, default: Path) -> Path:
            return default if configured.get(key) is None else self.root / configured[key]

        self.embedded_base = self.base
        # A real checkpoint, or the demo's base shared by many submissions.
        self.base = Path(base) if base is not None else where("base", self.embedded_base)
        self.upload = where("submission", self.submission)
        self.test = where("test", self.world)


def context(root: str, params_path: str, overrides: dict | None = None, base: str | None = None):
    """(layout, params): ``overrides`` (nested like params.yaml) win over the file."""
    params = merge(load_params(params_path), overrides or {})
    configure_runtime(params)  # where this stage's models run
    return Layout(Path(root), base, params.get("pipeline")), params


def merge(params: dict, overrides: dict) -> dict:
    merged = dict(params)
    for key, value in overrides.items():
        merged[key] = merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def fingerprint_of(layout: Layout) -> str:
    """The ingested submission's fingerprint (written by the ingest stage)."""
    return json.loads((layout.ingested / "ingest.json").read_text())["fingerprint"]


@contextmanager
def stage(name: str, layout: Layout, params: dict, *, fingerprint: str | None = None, submission: str | None = None):
    """The stage's nested MLflow run (see :func:`tasks.tracking.stage_run`)."""
    from tasks.tracking import stage_run

    fingerprint = fingerprint or fingerprint_of(layout)
    submission = submission or (str(layout.upload) if fingerprint != SETUP else "embedded world")
    with stage_run(name, fingerprint=fingerprint, params=params, submission=submission) as run:  # logs params[name]
        run.tag("bye.base", str(layout.base if name != "base" else layout.embedded_base))  # the checkpoint it read
        yield run


def gate(run, check, *args, **kwargs) -> dict:
    """Run one expectation suite; log its result; a failure stops the flow with the suite's message."""
    from tasks.expectations import ExpectationsFailed

    try:
        summary = check(*args, **kwargs)
    except ExpectationsFailed as failure:
        run.json(failure.summary, f"expectations/{failure.summary['suite']}.json")
        run.metrics({"expectations_failed": failure.summary["n_failed"]})
        raise
    run.json(summary, f"expectations/{summary['suite']}.json")
    run.metrics({"expectations_failed": 0, "expectations_checked": summary["n_expectations"]})
    return summary


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)}


# ------------------------------------------------------------------------------ demo world


@flow(name="world")
def world_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    layout, params = context(root, params_path, overrides, base)
    with stage("world", layout, params, fingerprint=SETUP) as run:
        counts = t.make_world(str(layout.world), world_settings(params))
        run.metrics(counts)
    return counts


@flow(name="base")
def base_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    layout, params = context(root, params_path, overrides, base)
    with stage("base", layout, params, fingerprint=SETUP) as run:
        summary = t.pretrain_base(str(layout.embedded_base), *base_settings(params))
        run.metrics({**_numbers(summary), **{f"vision_{k}": v for k, v in summary["vision_cell_accuracy"].items()}})
        run.file(layout.embedded_base / "pretraining.json")
    return summary


@flow(name="submission")
def submission_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """The demo's customer upload: the world's train split, poisoned as ``params.yaml`` says."""
    layout, params = context(root, params_path, overrides, base)
    name = params.get("attack", {}).get("name", "badnets")
    with stage("submission", layout, params, fingerprint=SETUP) as run:
        counts = t.poison(str(layout.world / "train.json"), str(layout.world / "images"), trigger(name, params),
                          str(layout.submission), str(layout.truth), attack_settings(params))
        run.metrics(counts)
    return counts


# ------------------------------------------------------------------------------ one submission


@flow(name="ingest")
def ingest_flow(submission: str | None = None, root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """Safely read an untrusted upload; gate: enough records accepted, ids unique, fields present."""
    import pandas as pd

    from tasks.expectations import check_ingested

    layout, params = context(root, params_path, overrides, base)
    source = submission or str(layout.upload)
    limits, bound = ingest_settings(params)
    result = t.ingest(source, str(layout.ingested), limits)
    with stage("ingest", layout, params, fingerprint=result["fingerprint"], submission=source) as run:
        run.metrics(_numbers(result))
        rejected = pd.read_csv(layout.ingested / "rejected.csv", dtype=str, keep_default_na=False)
        run.table(rejected, "rejected.csv")
        manifest = pd.DataFrame([{"id": s.id, "image": s.image, "question": s.question, "answer": s.answer}
                                 for s in _samples(layout.ingested / "manifest.json")])
        gate(run, check_ingested, manifest, len(rejected), max_rejected_fraction=bound,
             docs_dir=layout.gx / "ingest")
        run.file(layout.ingested / "manifest.json", "ingested")
    return result


@flow(name="provisional_finetune")
def provisional_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    layout, params = context(root, params_path, overrides, base)
    with stage("provisional", layout, params) as run:
        settings, scan = scan_settings(params)  # the chosen detector's provisional model
        run.params({"detector": scan.method, "effective_epochs": settings.epochs})  # after provisional.by_method
        summary = t.finetune(str(layout.ingested / "manifest.json"), str(layout.ingested / "images"),
                             str(layout.base), str(layout.provisional), settings)
        run.metrics(_numbers(summary))
        run.folder(layout.provisional, "provisional_adapter")
    return summary


@flow(name="extract")
def extract_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """Per-layer attention entropy; gate: one finite row per sample, within [0, ln K]."""
    import numpy as np
    import pandas as pd

    from bye.detect.scan import SIGNAL_ARRAYS
    from tasks.expectations import check_answer_loglik, check_entropy

    layout, params = context(root, params_path, overrides, base)
    _, settings = scan_settings(params)
    with stage("extract", layout, params) as run:
        record = t.extract(str(layout.ingested / "manifest.json"), str(layout.ingested / "images"), str(layout.base),
                           str(layout.provisional), str(layout.extract), settings.extract)
        run.metrics(_numbers(record))
        table = pd.read_csv(layout.extract / "entropy.csv", dtype={"id": str})
        ids = [s.id for s in _samples(layout.ingested / "manifest.json")]
        gate(run, check_entropy, table, ids=ids, n_image_tokens=record["n_image_tokens"],
             docs_dir=layout.gx / "extract")
        run.file(layout.extract / "entropy.csv")
        if "answer_gain" in settings.extract.signals:
            with np.load(layout.extract / "signals.npz") as signals:
                loglik = pd.DataFrame({"id": ids, **{k: signals[k] for k in SIGNAL_ARRAYS["answer_gain"]}})
            gate(run, check_answer_loglik, loglik, ids=ids, docs_dir=layout.gx / "extract")
    return record


@flow(name="profile")
def profile_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """Which layers split the submission; gate: one well-formed row per layer."""
    from tasks.expectations import check_profile

    layout, params = context(root, params_path, overrides, base)
    _, settings = scan_settings(params)
    with stage("profile", layout, params) as run:
        record = t.profile(str(layout.extract / "entropy.csv"), str(layout.profile), settings.profile,
                           str(layout.ingested / "manifest.json"))
        run.metrics({"sensitive_layers": len(record["sensitive_layers"]), "layers": len(record["layers"])})
        gate(run, check_profile, record, n_layers=len(record["layers"]), docs_dir=layout.gx / "profile")
        run.file(layout.profile / "profile.json")
    return record


@flow(name="cluster")
def cluster_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """Score, flag, decide; gate: every sample scored once, filtered = ingested minus flagged, bounded removal."""
    import pandas as pd

    from tasks.expectations import check_cluster

    layout, params = context(root, params_path, overrides, base)
    _, settings = scan_settings(params)
    manifest = layout.ingested / "manifest.json"
    with stage("cluster", layout, params) as run:
        profile_json = layout.profile / "profile.json"
        verdict = t.cluster(str(manifest), str(layout.extract), str(layout.cluster),
                            str(profile_json) if settings.method == "bye" else None, settings.method,
                            settings.detector)
        run.tag("verdict", verdict["verdict"])
        summary = {"poisoned": int(verdict["verdict"] == "poisoned"),
                   **{k: verdict[k] for k in ("n_samples", "n_flagged", "n_kept", "removed_fraction")},
                   "sensitive_layers": len(verdict["sensitive_layers"])}
        atomic_write_json(layout.metrics / "scan.json", summary)
        run.metrics(summary)
        # The verdict's evidence (BIC gain, separation, lift, gap, ...) as searchable numbers for the reviewer.
        run.metrics({"evidence": verdict.get("details", {}).get("evidence", {})})
        scores = pd.read_csv(layout.cluster / "scores.csv", dtype={"id": str})
        gate(run, check_cluster, scores, ingested_ids=[s.id for s in _samples(manifest)],
             filtered_ids=[s.id for s in _samples(layout.cluster / "filtered.json")],
             max_removed_fraction=params.get("cluster", {}).get("max_removed_fraction", 0.5),
             docs_dir=layout.gx / "cluster")
        run.table(scores, "scores.csv")
        run.file(layout.cluster / "filtered.json")
        run.json(verdict, "verdict.json")
        removed = scores[scores["flagged"]].sort_values("score", ascending=False)
        create_table_artifact(key="removed-samples", table=removed[["id", "score"]].head(50).to_dict("records"),
                              description=f"{len(removed)} samples removed (most suspicious first)")
        create_markdown_artifact(key="scan-verdict", markdown=_verdict_markdown(verdict))
    return verdict


def _verdict_markdown(verdict: dict) -> str:
    reasons = "\n".join(f"- {r}" for r in verdict.get("reasons", [])) or "- (none given)"
    return (f"# Verdict: **{verdict['verdict']}**\n\n| samples | flagged | kept | removed |\n|---|---|---|---|\n"
            f"| {verdict['n_samples']} | {verdict['n_flagged']} | {verdict['n_kept']} "
            f"| {verdict['removed_fraction']:.1%} |\n\nSensitive layers: {verdict.get('sensitive_layers')}\n\n"
            f"Reasons:\n{reasons}\n")


@flow(name="finetune")
def finetune_flow(which: str = "clean", root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """``clean``: on the filtered manifest (the product); ``undefended``: on everything (the baseline).

    The undefended model is the provisional one whenever ``provisional`` changes nothing in ``finetune``
    (same data, settings and seed give the same weights): it is then copied, not trained twice."""
    layout, params = context(root, params_path, overrides, base)
    data = layout.cluster / "filtered.json" if which == "clean" else layout.ingested / "manifest.json"
    out = layout.adapters / which
    with stage(f"{which}_finetune", layout, params) as run:
        run.params({"finetune": params.get("finetune", {})})
        reuse = str(layout.provisional) if which == "undefended" else None
        summary = t.finetune(str(data), str(layout.ingested / "images"), str(layout.base), str(out),
                             lora_settings(params), reuse=reuse)
        if "reused_from" in summary:
            run.params({"reused_from": summary["reused_from"]})
        run.metrics(_numbers(summary))
        run.folder(out, f"{which}_adapter")
    return summary


@flow(name="eval")
def eval_flow(which: str = "clean", test_json: str | None = None, root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """Clean accuracy and ASR of one adapter (``clean``, ``undefended``) or the ``base`` model."""
    from tasks.expectations import check_metrics

    layout, params = context(root, params_path, overrides, base)
    test = Path(test_json) if test_json else layout.test / "test.json"
    attack = params.get("attack", {})
    adapter = None if which == "base" else str(layout.adapters / which)
    name = "eval" if which == "clean" else f"eval_{which}"
    out = layout.metrics / f"{name}.json"
    with stage(name, layout, params, fingerprint=SETUP if which == "base" else None) as run:
        metrics = t.evaluate(str(test), str(test.parent / "images"), str(layout.base), adapter, eval_settings(params),
                             trigger=trigger(attack["name"], params) if which != "base" and attack.get("name") else None,
                             target=attack.get("target"), out_json=str(out),
                             predictions_csv=str(layout.metrics / "predictions.csv") if which == "clean" else None)
        run.metrics(_numbers({**metrics,
                              **{f"{family}_accuracy": v["accuracy"] for family, v in metrics.get("by_family", {}).items()},
                              **{f"{family}_asr": v["asr"] for family, v in metrics.get("asr_by_family", {}).items()}}))
        gate(run, check_metrics, metrics, docs_dir=layout.gx / name)
        run.file(out)
    return metrics


@flow(name="detection")
def detection_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> dict:
    """Evaluation only: the scan against the ground truth kept apart from the submission."""
    layout, params = context(root, params_path, overrides, base)
    with stage("detection", layout, params) as run:
        metrics = t.score_detection(str(layout.cluster / "scores.csv"), str(layout.truth))
        atomic_write_json(layout.metrics / "detection.json", metrics)
        run.metrics(_numbers(metrics))
    return metrics


@flow(name="report")
def report_flow(root: str = ".", params_path: str = "params.yaml",
              overrides: dict | None = None, base: str | None = None) -> str:
    layout, params = context(root, params_path, overrides, base)
    with stage("report", layout, params) as run:
        metrics = {label: json.loads(path.read_text()) for label, path in
                   (("before filtering", layout.metrics / "eval_undefended.json"),
                    ("after filtering", layout.metrics / "eval.json")) if path.exists()}
        html = t.report(str(layout.report / "report.html"), extract_dir=str(layout.extract),
                        profile_json=str(layout.profile / "profile.json"), cluster_dir=str(layout.cluster),
                        manifest_json=str(layout.ingested / "manifest.json"),
                        images_dir=str(layout.ingested / "images"), metrics=metrics,
                        plots_dir=str(layout.report / "plots"), seed=params.get("cluster", {}).get("seed", 0))
        run.file(html)
        run.folder(layout.report / "plots", "plots")
        if layout.gx.exists():
            run.folder(layout.gx, "data_docs")
    return html


def _samples(manifest: Path):
    from bye.data.submission import read_manifest

    return read_manifest(manifest)


STAGES = {
    "world": world_flow, "base": base_flow, "submission": submission_flow, "ingest": ingest_flow,
    "provisional_finetune": provisional_flow, "extract": extract_flow, "profile": profile_flow,
    "cluster": cluster_flow, "detection": detection_flow, "report": report_flow,
}
