"""Great Expectations gates at every hand-off of the pipeline.

`validate` turns a list of GX expectation objects into a suite, runs it on a dataframe and returns a
JSON-serialisable summary; it raises `ExpectationsFailed` (naming the suite and every failed expectation)
when something fails. One `check_*` function per hand-off builds the frame and the expectations.

Great Expectations is imported lazily (it takes seconds to import). Each `validate` call builds its own
ephemeral context: that costs milliseconds and keeps calls independent of each other. When `docs_dir` is
given, the validation results are stored as JSON under `docs_dir/_results` and the Data Docs site is built
in `docs_dir` (`index.html`). The results must persist because GX rebuilds the index from the results
store and deletes pages it cannot find there, so an in-memory store would wipe the pages of earlier checks.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SITE_NAME = "bye"
RESULTS_SUBDIR = "_results"
MAX_LIST = 20  # lists longer than this are shortened in summaries and messages
ENTROPY_COLUMN = re.compile(r"^entropy_l(\d+)$")


class ExpectationsFailed(RuntimeError):
    """A suite had failed expectations. `.summary` is the summary `validate` would have returned."""

    def __init__(self, summary: dict):
        self.summary = summary
        failed = [r for r in summary["results"] if not r["success"]]
        lines = [f"GX suite {summary['suite']!r}: {len(failed)} of {summary['n_expectations']} expectations failed"]
        lines += [f"  - {_describe(r)}" for r in failed]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------------------------- core


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx


def _context(docs_dir: Path | None):
    """An ephemeral context, no progress bars or analytics; with a file-backed results store and a
    Data Docs site at `docs_dir` when given."""
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = InMemoryStoreBackendDefaults()  # also: no data docs sites (the default one is a random temp dir)
    stores, sites = defaults.stores, {}
    if docs_dir is not None:
        stores[defaults.validation_results_store_name]["store_backend"] = {
            "class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir / RESULTS_SUBDIR)}
        sites[SITE_NAME] = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            # suites live in memory only; each validation page shows its expectations anyway
            "site_section_builders": {"expectations": "0"},
        }
    config = DataContextConfig(store_backend_defaults=defaults, stores=stores, data_docs_sites=sites,
                               analytics_enabled=False, progress_bars=ProgressBarsConfig(globally=False))
    return gx.get_context(mode="ephemeral", project_config=config)


def validate(suite_name: str, frame: pd.DataFrame, expectations: list, *, docs_dir: str | Path | None = None,
             raise_on_failure: bool = True, index_column: str | None = "id") -> dict:
    """Run `expectations` (GX expectation objects) as suite `suite_name` on `frame`.

    Returns {"suite", "success", "n_expectations", "n_failed", "results": [{"expectation", "kwargs",
    "success", "observed", ("description")}], "docs_index"}, results in the order of `expectations` and
    lists longer than MAX_LIST shortened. `observed` is GX's observed
    value when it gives one, else a dict of unexpected/missing counts and examples (with the offending
    rows' `index_column` values as "unexpected_<index_column>" when the frame has that column), or
    {"exception": message} when GX could not evaluate it.
    Raises ExpectationsFailed (with `.summary`) if any expectation failed and `raise_on_failure`.
    """
    gx = _gx()
    docs = Path(docs_dir).resolve() if docs_dir is not None else None
    ctx = _context(docs)
    batch = (ctx.data_sources.add_pandas("bye").add_dataframe_asset(suite_name)
             .add_batch_definition_whole_dataframe("whole"))
    suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name,
                                               expectations=[e.copy(deep=True) for e in expectations]))
    definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite))
    result_format: Any = "SUMMARY"
    if index_column is not None and index_column in frame.columns:
        result_format = {"result_format": "SUMMARY", "unexpected_index_column_names": [index_column]}
    actions = [gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[SITE_NAME])] if docs else []
    checkpoint = ctx.checkpoints.add(gx.Checkpoint(name=suite_name, validation_definitions=[definition],
                                                   actions=actions, result_format=result_format))
    run = checkpoint.run(batch_parameters={"dataframe": frame})
    (suite_result,) = run.run_results.values()

    # GX reorders results (e.g. expectations that raised come first); restore the suite's order.
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    ordered = sorted(suite_result.results, key=lambda r: order.get(r.expectation_config.id, len(order)))
    results = [{"expectation": r.expectation_config.type,
                "kwargs": _jsonable({k: v for k, v in r.expectation_config.kwargs.items() if k != "batch_id"}),
                "success": bool(r.success),
                "observed": _observed(r, index_column),
                **({"description": r.expectation_config.description} if r.expectation_config.description else {})}
               for r in ordered]
    n_failed = sum(not r["success"] for r in results)
    summary = {"suite": suite_name, "success": n_failed == 0, "n_expectations": len(results), "n_failed": n_failed,
               "results": results, "docs_index": str(docs / "index.html") if docs else None}
    if n_failed and raise_on_failure:
        raise ExpectationsFailed(summary)
    return summary


def _observed(r, index_column: str | None) -> Any:
    info = r.exception_info or {}
    # a flat {"raised_exception", "exception_message", ...} or one such dict per metric that raised
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    errors = [i.get("exception_message") for i in infos if i.get("raised_exception")]
    if errors:
        return {"exception": errors[0]}
    res = r.result or {}
    if res.get("observed_value") is not None:
        return _jsonable(res["observed_value"])
    out = {k: res[k] for k in ("unexpected_count", "partial_unexpected_list") if k in res}
    if "partial_missing_list" in res:  # set expectations: values of the set missing from the column
        out.update(missing_count=res.get("missing_count"), partial_missing_list=res["partial_missing_list"])
    rows = [row[index_column] for row in res.get("partial_unexpected_index_list") or []
            if isinstance(row, dict) and index_column in row]
    if rows:
        out[f"unexpected_{index_column}"] = rows
    return _jsonable(out) if out else None


def _jsonable(x: Any) -> Any:
    """Plain JSON types: numpy scalars unwrapped, tuples/sets as lists (long ones shortened), non-finite
    floats as the strings "nan"/"inf"/"-inf", anything else unknown as its str()."""
    if isinstance(x, np.generic):
        x = x.item()
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else str(x)
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        items = sorted(x, key=str) if isinstance(x, (set, frozenset)) else list(x)
        head = [_jsonable(v) for v in items[:MAX_LIST]]
        return head + [f"... (+{len(items) - MAX_LIST} more)"] if len(items) > MAX_LIST else head
    return str(x)


def _describe(r: dict) -> str:
    """One line per failed expectation: type, its column(s), what was observed and the description."""
    kw = r["kwargs"]
    where = ", ".join(f"{k}={kw[k]!r}" for k in ("column", "column_A", "column_B", "column_list") if k in kw)
    text = f"{r['expectation']}({where or 'table'})"
    bounds = {k: kw[k] for k in ("value", "min_value", "max_value") if kw.get(k) is not None}
    if bounds:
        text += " " + " ".join(f"{k}={v}" for k, v in bounds.items())
    obs = r["observed"]
    text += ": " + (", ".join(f"{k}={v}" for k, v in obs.items()) if isinstance(obs, dict) else f"observed={obs}")
    if r.get("description"):
        text += f"  [{r['description']}]"
    return text if len(text) <= 600 else text[:597] + "..."


# ------------------------------------------------------------------------------------------- hand-offs


def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def check_ingested(manifest: pd.DataFrame, n_rejected: int, *, max_rejected_fraction: float,
                   docs_dir: str | Path | None = None) -> dict:
    """The ingested manifest (id, image, question, answer): non-empty, unique non-null ids, no missing
    fields, non-empty answers, and not too many submissions rejected at ingestion."""
    gxe = _gx().expectations
    submitted = n_rejected + len(manifest)
    frame = manifest.assign(rejected_fraction=_fraction(n_rejected, submitted))
    return validate("ingested", frame, [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", "image", "question", "answer"], exact_match=False),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        *[gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("image", "question", "answer")],
        gxe.ExpectColumnValueLengthsToBeBetween(column="answer", min_value=1),
        gxe.ExpectColumnMaxToBeBetween(column="rejected_fraction", max_value=max_rejected_fraction,
                                       description=f"rejected fraction ({n_rejected} of {submitted} submitted) "
                                                   f"<= {max_rejected_fraction}"),
    ], docs_dir=docs_dir)


def check_entropy(table: pd.DataFrame, *, ids: list[str], n_image_tokens: int,
                  docs_dir: str | Path | None = None) -> dict:
    """The per-sample entropy table (id, entropy_l0 .. entropy_l{L-1}): one row per sample and every
    entropy finite and within [-1e-6, ln K + 1e-5 ln K] for K image tokens: the table is read back from
    CSV written to 6 significant digits, which rounds a uniform row's ln 16 = 2.7725887 up to 2.77259
    (a random Gemma3's first layer attends uniformly)."""
    gxe = _gx().expectations
    layers = sorted(int(m.group(1)) for c in table.columns if (m := ENTROPY_COLUMN.match(str(c))))
    expected = [f"entropy_l{i}" for i in range(max(layers, default=0) + 1)]
    present = [c for c in expected if c in table.columns]
    ln_k = math.log(n_image_tokens)
    slack = 1e-5 * max(1.0, ln_k)
    return validate("entropy", table, [
        gxe.ExpectTableRowCountToEqual(value=len(ids)),
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", *expected], exact_match=False),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="id", value_set=list(ids), description="rows are known samples"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="id", value_set=list(ids),
                                                   description="every sample has a row"),
        *[e for c in present for e in (
            gxe.ExpectColumnValuesToNotBeNull(column=c),
            gxe.ExpectColumnValuesToBeBetween(column=c, min_value=-1e-6, max_value=ln_k + slack,
                                              description=f"0 <= {c} <= ln({n_image_tokens})"))],
    ], docs_dir=docs_dir)


def check_answer_loglik(table: pd.DataFrame, *, ids: list[str], docs_dir: str | Path | None = None) -> dict:
    """The answer_gain signal (id, answer_loglik, answer_loglik_base, answer_tokens): one row per
    sample, log-likelihoods finite and <= 0 (1e-6 slack), at least one answer token each."""
    gxe = _gx().expectations
    columns = ["answer_loglik", "answer_loglik_base"]
    return validate("answer_loglik", table, [
        gxe.ExpectTableRowCountToEqual(value=len(ids)),
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", *columns, "answer_tokens"], exact_match=False),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="id", value_set=list(ids),
                                                   description="every sample has a row"),
        *[e for c in columns for e in (
            gxe.ExpectColumnValuesToNotBeNull(column=c),
            gxe.ExpectColumnValuesToBeBetween(column=c, max_value=1e-6,
                                              description=f"{c} is a log-probability (finite, <= 0)"))],
        gxe.ExpectColumnValuesToBeBetween(column="answer_tokens", min_value=1,
                                          description="every answer has a token"),
    ], docs_dir=docs_dir)


PROFILE_COLUMNS = ["layer", "mean_0", "mean_1", "sigma_0", "sigma_1", "weight_0", "weight_1", "gap", "bsi",
                   "code_margin", "sensitive"]


def profile_frame(profile: dict) -> pd.DataFrame:
    """One row per layer of a layer profile; pairs (means, sigmas, weights) become `<name>_0/_1` columns."""
    rows = []
    for entry in profile.get("layers") or []:
        row = {k: entry.get(k) for k in ("layer", "gap", "bsi", "code_margin", "sensitive")}
        for key, col in (("means", "mean"), ("sigmas", "sigma"), ("weights", "weight")):
            pair = [*(entry.get(key) or []), None, None]
            row[f"{col}_0"], row[f"{col}_1"] = pair[0], pair[1]
        rows.append(row)
    return pd.DataFrame(rows, columns=PROFILE_COLUMNS)


def check_profile(profile: dict, *, n_layers: int, docs_dir: str | Path | None = None) -> dict:
    """The layer profile: one row per layer, sigmas >= 0 (NaN allowed), boolean `sensitive` flags that
    agree with `sensitive_layers`, and a known rule."""
    from bye.detect.cluster import RESIDUALISE  # not at module level: scikit-learn adds ~1 s to every gated stage
    from bye.detect.profile import RULES

    gxe = _gx().expectations
    sensitive_layers = list(profile.get("sensitive_layers") or [])
    frame = profile_frame(profile)
    frame["listed_sensitive"] = frame["layer"].isin(sensitive_layers)
    frame["rule"] = profile.get("rule")
    frame["residualise"] = profile.get("residualise", "none")
    return validate("profile", frame, [
        gxe.ExpectTableRowCountToEqual(value=n_layers),
        gxe.ExpectColumnValuesToNotBeNull(column="layer"),
        gxe.ExpectColumnValuesToBeUnique(column="layer"),
        gxe.ExpectColumnValuesToBeInSet(column="layer", value_set=list(range(n_layers))),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in ("sigma_0", "sigma_1")],
        gxe.ExpectColumnValuesToNotBeNull(column="sensitive"),
        gxe.ExpectColumnValuesToBeOfType(column="sensitive", type_="bool"),
        gxe.ExpectColumnPairValuesToBeEqual(column_A="sensitive", column_B="listed_sensitive",
                                            description="sensitive flag <=> layer in sensitive_layers"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="layer", value_set=sensitive_layers,
                                                   description="sensitive_layers are profiled layers"),
        gxe.ExpectColumnValuesToBeInSet(column="rule", value_set=list(RULES)),
        gxe.ExpectColumnValuesToBeInSet(column="residualise", value_set=list(RESIDUALISE)),
    ], docs_dir=docs_dir, index_column="layer")


def check_cluster(scores: pd.DataFrame, *, ingested_ids: list[str], filtered_ids: list[str],
                  max_removed_fraction: float, docs_dir: str | Path | None = None) -> dict:
    """Cluster scores (id, score, flagged, ...): one row per ingested sample, boolean flags, the filtered
    ids are ingested ids and exactly the non-flagged ones, and not too many samples removed."""
    gxe = _gx().expectations
    ingested, kept = set(ingested_ids), set(filtered_ids)
    removed = _fraction(len(ingested - kept), len(ingested))
    frame = scores.assign(in_filtered=scores["id"].isin(kept) if "id" in scores.columns else False,
                          removed_fraction=removed)
    return validate("cluster", frame, [
        gxe.ExpectTableRowCountToEqual(value=len(ingested_ids)),
        gxe.ExpectTableColumnsToMatchSet(column_set=["id", "score", "flagged"], exact_match=False),
        gxe.ExpectColumnValuesToNotBeNull(column="id"),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="id", value_set=list(ingested_ids),
                                        description="scored ids are ingested ids"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="id", value_set=list(ingested_ids),
                                                   description="every ingested sample is scored"),
        gxe.ExpectColumnValuesToNotBeNull(column="flagged"),
        gxe.ExpectColumnValuesToBeOfType(column="flagged", type_="bool"),
        gxe.ExpectColumnDistinctValuesToContainSet(column="id", value_set=list(filtered_ids),
                                                   description="filtered ids are ingested (scored) ids"),
        gxe.ExpectColumnPairValuesToBeInSet(column_A="flagged", column_B="in_filtered",
                                            value_pairs_set=[(True, False), (False, True)],
                                            description="filtered ids are exactly the non-flagged ones"),
        gxe.ExpectColumnMaxToBeBetween(column="removed_fraction", max_value=max_removed_fraction,
                                       description=f"removed fraction ({len(ingested - kept)} of {len(ingested)} "
                                                   f"ingested) <= {max_removed_fraction}"),
    ], docs_dir=docs_dir)


def check_metrics(metrics: dict, *, docs_dir: str | Path | None = None) -> dict:
    """Evaluation metrics: accuracy (and asr when present) within [0, 1], n >= 1."""
    gxe = _gx().expectations
    scalars = {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}
    frame = pd.DataFrame([scalars])
    rates = ["accuracy", *(["asr"] if "asr" in frame.columns else [])]
    return validate("metrics", frame, [
        gxe.ExpectTableColumnsToMatchSet(column_set=["accuracy", "n"], exact_match=False),
        gxe.ExpectColumnValuesToNotBeNull(column="accuracy"),
        *[gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1) for c in rates],
        gxe.ExpectColumnValuesToNotBeNull(column="n"),
        gxe.ExpectColumnValuesToBeBetween(column="n", min_value=1),
    ], docs_dir=docs_dir)
