"""The end-to-end flow for one submission, and the inbox flow a scheduled deployment runs.

``scan_submission_flow`` chains the stage flows of :mod:`flows.stages` in one process for one
upload, under one MLflow parent run: ingest -> provisional fine-tune -> extract -> profile ->
cluster -> clean fine-tune -> (eval, when a test set is given) -> report. Every submission gets
its own working folder (``<workdir>/<fingerprint of the upload>``), laid out like the repository.

``scan_inbox`` looks at an inbox folder and scans each upload (a folder, ``.zip`` or ``.tar.gz``)
it has not seen before, exactly once: a ledger (``<workdir>/ledger.json``, keyed by the sha256 of
the upload's bytes, guarded by a file lock) records every upload, done or failed, so a rerun, an
overlapping schedule or a renamed copy of the same upload does nothing. Delete an entry to rescan.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from bye.io import atomic_write_json
from flows import stages

ARCHIVES = (".zip", ".tar.gz", ".tgz")


def upload_key(path: Path) -> str:
    """sha256 over an upload's bytes: an archive's content, or a folder's (relative name, content) pairs.
    Links are not followed (ingest rejects what they point to anyway)."""
    digest = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()):
        digest.update(str(file.relative_to(path)).encode("utf-8", "surrogateescape") + b"\0")
        digest.update(file.read_bytes())
    return digest.hexdigest()


def uploads(inbox: Path) -> list[Path]:
    return sorted(p for p in inbox.iterdir() if not p.name.startswith(".") and not p.is_symlink()
                  and (p.is_dir() or p.name.endswith(ARCHIVES)))


@flow(name="scan-submission")
def scan_submission_flow(submission: str, base: str = "models/base", workdir: str = "runs",
                         params_path: str = "params.yaml", overrides: dict | None = None,
                         test_json: str | None = None) -> dict:
    """Scan one upload end to end; return the verdict record (and the eval metrics when tested)."""
    root = Path(workdir) / upload_key(Path(submission))[:16]
    common = {"root": str(root), "params_path": params_path, "overrides": overrides, "base": base}
    stages.ingest_flow(submission=submission, **common)
    stages.provisional_flow(**common)
    stages.extract_flow(**common)
    stages.profile_flow(**common)
    verdict = stages.cluster_flow(**common)
    stages.finetune_flow(which="clean", **common)
    result = {"submission": submission, "root": str(root), "fingerprint": stages.fingerprint_of(stages.Layout(root)),
              "verdict": verdict["verdict"], "n_samples": verdict["n_samples"], "n_flagged": verdict["n_flagged"]}
    if test_json:
        metrics = stages.eval_flow(which="clean", test_json=test_json, **common)
        result.update(accuracy=metrics.get("accuracy"), asr=metrics.get("asr"))
    result["report"] = stages.report_flow(**common)
    return result


@contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@flow(name="scan-inbox")
def scan_inbox(inbox: str = "inbox", workdir: str = "runs", base: str = "models/base",
               params_path: str = "params.yaml", overrides: dict | None = None,
               test_json: str | None = None) -> list[dict]:
    """Scan every upload in ``inbox`` not yet in the ledger; return what this run processed."""
    logger = get_run_logger()
    ledger_path = Path(workdir) / "ledger.json"
    processed = []
    with locked(ledger_path):
        ledger = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
        for upload in uploads(Path(inbox)):
            key = upload_key(upload)
            if key in ledger:
                continue
            logger.info("scanning %s", upload.name)
            try:
                record = {"status": "done", **scan_submission_flow(str(upload), base, workdir, params_path, overrides,
                                                                   test_json)}
            except Exception as error:  # one bad upload must not stop the others; it is recorded, not retried
                logger.error("%s failed: %s", upload.name, error)
                record = {"status": "failed", "submission": str(upload), "error": f"{type(error).__name__}: {error}"}
            ledger[key] = record
            atomic_write_json(ledger_path, ledger)
            processed.append(record)
    if processed:
        create_table_artifact(key="inbox-scans", table=[{k: r.get(k) for k in ("submission", "status", "verdict",
                                                                                 "n_flagged", "n_samples")}
                                                        for r in processed])
    return processed
