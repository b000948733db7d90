"""MLflow tracking for pipeline stages: one parent run per pipeline run of a submission, one nested run per stage.

DVC runs every stage in its own process, so the parent cannot be handed over in memory. It is found (or
created) by tags instead: the key is (submission fingerprint, hash of the params in effect, git commit).
A deployment that runs the whole pipeline in one process may pass the parent explicitly, as the
``parent_run_id`` argument or the ``BYE_MLFLOW_PARENT_RUN_ID`` environment variable.

    with stage_run("cluster", fingerprint=fp, params=params, submission="data/submission") as run:
        run.metrics({"silhouette": 0.41, "sizes": {"small": 12, "large": 84}})
        run.table(scores_df, "scores.csv")

mlflow is imported inside the functions: importing it takes about two seconds, which CLI commands that
never track should not pay.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import numbers
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bye.config import flatten

PARENT_ENV = "BYE_MLFLOW_PARENT_RUN_ID"
MAX_KEY, MAX_PARAM_VALUE, MAX_TAG_VALUE = 250, 6000, 8000  # mlflow.utils.validation limits
_SAFE_TAG_VALUE = re.compile(r"[\w.\-]+")


# ---------------------------------------------------------------------------------------------- keys
def tracking_uri(root: str | os.PathLike = ".") -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the SQLite store ``<root>/mlflow.db`` (absolute)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def git_commit(root: str | os.PathLike = ".") -> str:
    """HEAD's commit, with ``-dirty`` when tracked or new files differ; ``unknown`` outside a git work tree.

    ``dvc.lock`` and ``*.dvc`` are left out of the dirty check: DVC rewrites them between stages, and the
    stages of one pipeline run must agree on the key.
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # `git status` must not take the index lock

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return "unknown"
    changes = git("status", "--porcelain", "--", ".", ":(exclude)dvc.lock", ":(exclude)*.dvc")
    return commit + ("-dirty" if changes else "")


def params_hash(params: Mapping[str, Any]) -> str:
    """First 12 hex digits of the sha256 of the params as canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _key(name: str) -> str:
    """A name MLflow accepts for a param or metric."""
    return re.sub(r"[^/\w.\- :]", "_", name)[:MAX_KEY]


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(
        value, (list, tuple, dict, bool, type(None))) else str(value)
    return text[:MAX_PARAM_VALUE]


# ---------------------------------------------------------------------------------------------- store
def _client(root: str | os.PathLike = "."):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(root))


def ensure_experiment(name: str = "bye", root: str | os.PathLike = ".") -> str:
    """The experiment's id; creates it with artifacts under ``<root>/mlruns`` when the store is local."""
    from mlflow.exceptions import MlflowException

    client = _client(root)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        local = tracking_uri(root).split(":", 1)[0] in {"sqlite", "file"}
        location = (Path(root) / "mlruns").resolve().as_uri() if local else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # another process created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _log_batch(client, run_id: str, *, params: Mapping[str, Any] = {}, metrics: Mapping[str, float] = {},
               step: int = 0) -> None:
    """Log params and metrics in chunks within MLflow's batch limits (100 params, 1000 metrics)."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    ps = [Param(_key(k), _param_value(v)) for k, v in params.items()]
    ms = [Metric(_key(k), float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(ps), 100):
        client.log_batch(run_id, params=ps[i:i + 100], synchronous=True)
    for i in range(0, len(ms), 1000):
        client.log_batch(run_id, metrics=ms[i:i + 1000], synchronous=True)


@contextlib.contextmanager
def _lock(root: str | os.PathLike) -> Iterator[None]:
    """An exclusive file lock, so that concurrent stage processes on this machine never both create a parent."""
    path = Path(root) / "mlruns" / ".parent.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def parent_run(fingerprint: str, params: Mapping[str, Any], *, submission: str | os.PathLike,
               experiment: str = "bye", root: str | os.PathLike = ".") -> str:
    """Find or create the parent run keyed by (fingerprint, params hash, git commit); returns its id.

    The flattened params are logged once, when the parent is created.
    """
    if not _SAFE_TAG_VALUE.fullmatch(fingerprint):
        raise ValueError(f"fingerprint must be letters, digits, '.', '_' or '-': {fingerprint!r}")
    key = {"bye.submission_fingerprint": fingerprint, "bye.params_hash": params_hash(params),
           "bye.git_commit": git_commit(root)}
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in {"bye.kind": "pipeline", **key}.items())
    client, experiment_id = _client(root), ensure_experiment(experiment, root)
    with _lock(root):
        found = client.search_runs([experiment_id], query, max_results=1,
                                   order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        name = Path(submission).name
        run = client.create_run(experiment_id, run_name=f"scan {name} {fingerprint[:8]}",
                                tags={"bye.kind": "pipeline", **key, "bye.submission": str(submission),
                                      "bye.status": "created"})
        _log_batch(client, run.info.run_id, params=flatten(params))
        return run.info.run_id


# ---------------------------------------------------------------------------------------------- stages
@dataclass
class StageRun:
    """Helpers that log into one stage's nested run (by id, so they never depend on mlflow's active run)."""

    run_id: str
    parent_run_id: str
    client: Any

    def metrics(self, values: Mapping[str, Any], step: int = 0) -> dict[str, float]:
        """Log the finite numbers among ``values`` (nested dicts flattened); returns what was logged."""
        kept = {k: float(v) for k, v in flatten(values).items()
                if isinstance(v, numbers.Real) and math.isfinite(float(v))}
        _log_batch(self.client, self.run_id, metrics=kept, step=step)
        return kept

    def params(self, values: Mapping[str, Any]) -> None:
        _log_batch(self.client, self.run_id, params=flatten(values))

    def json(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def file(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def folder(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a directory's contents (a LoRA adapter, a report) under ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(path), artifact_path)

    def table(self, frame, artifact_file: str = "table.csv", *, mlflow_table: bool = False) -> None:
        """Log a DataFrame as a CSV artifact; with ``mlflow_table`` also through mlflow's ``log_table`` (a JSON
        table with the same name, ``.json``, next to it)."""
        directory, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            frame.to_csv(Path(tmp) / name, index=False)
            self.client.log_artifact(self.run_id, str(Path(tmp) / name), directory or None)
        if mlflow_table:
            self.client.log_table(self.run_id, frame, str(Path(artifact_file).with_suffix(".json")))

    def tag(self, key: str, value: Any) -> None:
        self.client.set_tag(self.run_id, key, str(value)[:MAX_TAG_VALUE])


@contextlib.contextmanager
def _fluent_at(uri: str) -> Iterator[None]:
    """Point mlflow's fluent API at ``uri`` for a while, then put things back.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI`` (which would leak into later
    ``tracking_uri()`` calls), and ``mlflow.start_run`` would resume ``$MLFLOW_RUN_ID`` instead of starting
    a nested run, so both variables are restored afterwards and the latter is hidden meanwhile.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous = utils._tracking_uri
    saved = {name: os.environ.pop(name, None) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = previous
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


@contextlib.contextmanager
def stage_run(stage: str, *, fingerprint: str, params: Mapping[str, Any], submission: str | os.PathLike,
              experiment: str = "bye", root: str | os.PathLike = ".", parent_run_id: str | None = None,
              stage_params: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
    """A nested run for ``stage`` under the pipeline's parent run; yields a :class:`StageRun`.

    The parent is ``parent_run_id``, else ``$BYE_MLFLOW_PARENT_RUN_ID``, else :func:`parent_run`. The stage's
    own params (``stage_params``, by default ``params[stage]`` when that is a dict) are logged on the nested
    run as ``<stage>.<key>``, the names they have on the parent. The run is mlflow's active run inside the block, so code that logs with ``mlflow.log_*`` lands in
    it too. On an exception the run ends FAILED (KILLED on Ctrl-C), the parent's ``bye.status`` says
    ``failed at <stage>``, and the exception propagates. A parent found or created here is marked
    FINISHED/FAILED with its last stage; an explicit parent's status is left to its owner.
    """
    import mlflow

    explicit = parent_run_id or os.environ.get(PARENT_ENV) or None
    parent = explicit or parent_run(fingerprint, params, submission=submission, experiment=experiment, root=root)
    uri, client = tracking_uri(root), _client(root)
    experiment_id = client.get_run(parent).info.experiment_id
    tags = {"bye.kind": "stage", "bye.stage": stage, "bye.submission_fingerprint": fingerprint,
            "bye.git_commit": git_commit(root), "bye.params_hash": params_hash(params)}
    own = stage_params if stage_params is not None else params.get(stage)
    client.set_tag(parent, "bye.last_stage", stage)
    client.set_tag(parent, "bye.status", f"running {stage}")
    if not explicit:
        client.update_run(parent, status="RUNNING")

    with _fluent_at(uri):
        active = mlflow.start_run(experiment_id=experiment_id, run_name=stage, parent_run_id=parent,
                                  nested=True, tags=tags)
        run = StageRun(active.info.run_id, parent, client)
        try:
            if isinstance(own, Mapping) and own:
                run.params({stage: own})  # the same keys as the parent's flattened params
            yield run
        except BaseException as error:
            mlflow.end_run("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
            client.set_tag(parent, "bye.status", f"failed at {stage}")
            if not explicit:
                client.set_terminated(parent, "FAILED")
            raise
        mlflow.end_run("FINISHED")
    client.set_tag(parent, "bye.status", f"finished {stage}")
    if not explicit:
        client.set_terminated(parent, "FINISHED")


def summarise(run_id: str, root: str | os.PathLike = ".") -> dict[str, Any]:
    """The parent run and its stage runs: name, status, ``bye.*`` tags, params and metrics of each.

    ``runs`` lists every stage run, oldest first; ``stages`` maps each stage's name to its latest run (a
    stage that failed and was run again appears once there, twice in ``runs``).
    """
    client = _client(root)
    parent = client.get_run(run_id)

    def brief(run) -> dict[str, Any]:
        return {"run_id": run.info.run_id, "name": run.info.run_name, "status": run.info.status,
                "tags": {k: v for k, v in run.data.tags.items() if k.startswith("bye.")},
                "params": dict(run.data.params), "metrics": dict(run.data.metrics)}

    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run_id}'",
                                  order_by=["attributes.start_time ASC"])
    runs = [{**brief(r), "stage": r.data.tags.get("bye.stage", r.info.run_name)} for r in children]
    return {**brief(parent), "stages": {r["stage"]: r for r in runs}, "runs": runs}
