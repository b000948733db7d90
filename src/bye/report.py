"""Human-readable output of a scan: diagnostic plots and one self-contained HTML report.

Everything is read from the pipeline's stage outputs by path (``entropy.csv``, ``profile.json``,
``scores.csv``, ``verdict.json``, the ingested manifest and its images, optionally
``attention.npz`` and evaluation metrics). The plots are deterministic PNGs (also used as DVC
plots); the report embeds them, and the example images, as base64 so it opens offline.

Submission text is untrusted: the template autoescapes everything, images are only read through
:func:`bye.data.submission.resolve_image` (which refuses paths leaving the image folder), and an
image that is missing or does not decode is shown as a placeholder instead of failing the report.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from bye.config import flatten
from bye.data.submission import read_manifest, resolve_image
from bye.io import atomic_write_bytes, atomic_write_text

DPI = 100
THUMB = 192  # long side, in pixels, of the example images in the report
HEATMAP_ALPHA = 0.5
PLOT_NAMES = ("entropy_layers", "separation", "scores")
KEPT_COLOUR, FLAGGED_COLOUR, SENSITIVE_COLOUR, PLAIN_COLOUR = "#4c72b0", "#c44e52", "#c44e52", "#9aa5b1"


# ----------------------------------------------------------------------------------------- inputs

def _read_table(path: str | Path) -> pd.DataFrame:
    """A CSV with a string ``id`` column kept verbatim (``"NA"`` is an id, not a missing value)."""
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False, na_values=[""])
    numeric = [c for c in frame.columns if c not in ("id", "flagged")]
    frame[numeric] = frame[numeric].apply(pd.to_numeric, errors="coerce")
    if "flagged" in frame:
        frame["flagged"] = frame["flagged"].astype(str).str.strip().str.lower().isin(["true", "1", "1.0"])
    return frame


def _entropy_columns(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in frame.columns if c.startswith("entropy_l") and c[len("entropy_l"):].isdigit()]
    return sorted(columns, key=lambda c: int(c[len("entropy_l"):]))


def _float(value) -> float:
    """JSON numbers, ``null`` and the strings ``"nan"``/``"-inf"`` the pipeline writes, as floats."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _read_profile(path: str | Path) -> dict:
    profile = json.loads(Path(path).read_text(encoding="utf-8"))
    rule = profile.get("rule", "code")
    layers = sorted(profile.get("layers", []), key=lambda s: int(s["layer"]))
    for stats in layers:
        for key in ("means", "sigmas", "weights"):
            stats[key] = [_float(v) for v in (stats.get(key) or [math.nan, math.nan])]
        for key in ("gap", "bsi", "code_margin"):
            stats[key] = _float(stats.get(key))
        stats["separation"] = stats["code_margin"] if rule == "code" else stats["bsi"]
    sensitive = profile.get("sensitive_layers")
    if sensitive is None:
        sensitive = [s["layer"] for s in layers if s.get("sensitive")]
    return {"rule": rule, "tau": _float(profile.get("tau", 2.0)), "layers": layers,
            "sensitive_layers": [int(x) for x in sensitive], "residualise": profile.get("residualise", "none")}


# ------------------------------------------------------------------------------------------ plots

def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _entropy_figure(entropy: pd.DataFrame, profile: dict) -> bytes:
    columns = _entropy_columns(entropy)
    stats = {s["layer"]: s for s in profile["layers"]}
    n = max(len(columns), 1)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(columns):]:
        ax.set_axis_off()
    for layer, (ax, column) in enumerate(zip(axes, columns)):
        values = entropy[column].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        sensitive = layer in profile["sensitive_layers"]
        colour = SENSITIVE_COLOUR if sensitive else PLAIN_COLOUR
        if values.size:
            ax.hist(values, bins=30, density=True, color=colour, alpha=0.55)
            layer_stats = stats.get(layer)
            if layer_stats is not None:
                grid = np.linspace(values.min(), values.max(), 200)
                if np.ptp(grid) == 0:
                    grid = values.min() + np.linspace(-0.5, 0.5, 200)
                for mu, sigma, weight in zip(layer_stats["means"], layer_stats["sigmas"], layer_stats["weights"]):
                    if np.isfinite([mu, sigma, weight]).all() and sigma > 0:
                        pdf = weight * np.exp(-0.5 * ((grid - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
                        ax.plot(grid, pdf, color="black", linewidth=1)
        ax.set_title(f"layer {layer}" + (" (sensitive)" if sensitive else ""), fontsize=9,
                     color=SENSITIVE_COLOUR if sensitive else "black", fontweight="bold" if sensitive else "normal")
        ax.tick_params(labelsize=7)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour if sensitive else "#cccccc")
            spine.set_linewidth(2 if sensitive else 1)
    what = ("Attention entropy" if profile["residualise"] == "none"
            else f"Attention entropy minus its {profile['residualise']} prediction")
    fig.suptitle(f"{what} per layer (nats) with the two fitted Gaussian components", fontsize=10)
    return _png(fig)


def _separation_figure(profile: dict) -> bytes:
    layers = [s["layer"] for s in profile["layers"]]
    values = np.array([s["separation"] for s in profile["layers"]], dtype=float)
    values = np.where(np.isfinite(values), values, np.nan)  # degenerate layers draw no bar
    colours = [SENSITIVE_COLOUR if s["layer"] in profile["sensitive_layers"] else PLAIN_COLOUR
               for s in profile["layers"]]
    code = profile["rule"] == "code"
    threshold = 0.0 if code else profile["tau"]
    fig = Figure(figsize=(max(5.0, 0.3 * len(layers) + 2), 3.0), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(layers, values, color=colours)
    for layer, value in zip(layers, values):
        if np.isnan(value):
            ax.text(layer, threshold, "n/a", ha="center", va="bottom", fontsize=7, color="#777777")
    if layers:
        ax.set_xlim(min(layers) - 0.6, max(layers) + 0.6)
    ax.axhline(threshold, color="black", linestyle="--", linewidth=1,
               label="threshold: margin > 0" if code else f"threshold: BSI >= {threshold:g}")
    ax.set_xlabel("layer")
    ax.set_ylabel("|mu1-mu2| - 2(s1+s2)" if code else "BSI")
    ax.set_title(f"Layer separation, rule {profile['rule']!r} (red: sensitive)", fontsize=10)
    ax.set_xticks(layers)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=8)
    return _png(fig)


def _score_label(method: str) -> str:
    from bye.detect.api import DETECTORS, Detector

    return DETECTORS.get(method, Detector).score_label


def _scores_figure(scores: pd.DataFrame, method: str = "bye") -> bytes:
    values = scores["score"].to_numpy(dtype=float)
    flagged = scores["flagged"].to_numpy(dtype=bool)
    finite = np.isfinite(values)
    fig = Figure(figsize=(6.0, 3.0), layout="constrained")
    ax = fig.add_subplot()
    if finite.any():
        bins = np.histogram_bin_edges(values[finite], bins=40)
        ax.hist([values[finite & ~flagged], values[finite & flagged]], bins=bins, stacked=True,
                color=[KEPT_COLOUR, FLAGGED_COLOUR], label=[f"kept ({(~flagged).sum()})", f"flagged ({flagged.sum()})"])
    if (finite & flagged).any():
        cut = float(values[finite & flagged].min())
        ax.axvline(cut, color="black", linestyle="--", linewidth=1, label=f"cut = {cut:.4g}")
    else:
        ax.text(0.02, 0.95, "no cut: verdict clean", transform=ax.transAxes, va="top", fontsize=9)
    ax.set_xlabel(_score_label(method), fontsize=9)
    ax.set_ylabel("samples")
    ax.set_title("Suspicion scores", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def _plots(entropy_csv, profile_json, scores_csv, method: str = "bye") -> dict[str, bytes]:
    profile = _read_profile(profile_json)
    table = _read_table(entropy_csv)
    if profile["residualise"] != "none":  # the Gaussians were fitted to the residuals the profile stage wrote
        table = _read_table(Path(profile_json).parent / "residuals.csv")
        table.columns = [c.replace("residual_l", "entropy_l") for c in table.columns]
    return {"entropy_layers": _entropy_figure(table, profile),
            "separation": _separation_figure(profile),
            "scores": _scores_figure(_read_table(scores_csv), method)}


def write_plots(entropy_csv: str | Path, profile_json: str | Path, scores_csv: str | Path,
                out_dir: str | Path, *, method: str = "bye") -> dict[str, Path]:
    """Write ``entropy_layers.png``, ``separation.png`` and ``scores.png`` (the scores of detector
    ``method``); return name -> path."""
    return _save_plots(_plots(entropy_csv, profile_json, scores_csv, method), out_dir)


def _save_plots(plots: dict[str, bytes], out_dir: str | Path) -> dict[str, Path]:
    paths = {name: Path(out_dir) / f"{name}.png" for name in plots}
    for name, data in plots.items():
        atomic_write_bytes(paths[name], data)
    return paths


# --------------------------------------------------------------------------------------- examples

def _data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def _load_image(images_dir: Path, relative: str) -> Image.Image | None:
    """The sample's image scaled to ``THUMB`` on its long side, or None when it cannot be shown."""
    try:
        with Image.open(resolve_image(images_dir, relative)) as opened:
            opened.draft("RGB", (THUMB, THUMB))  # JPEGs decode at reduced size
            image = opened.convert("RGB")
    except Exception:  # untrusted file (missing, outside the folder, truncated, bomb...): a placeholder
        return None
    scale = THUMB / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BILINEAR)


def _overlay(image: Image.Image | None, heat: np.ndarray) -> Image.Image:
    """The attention map (``grid``-shaped) upsampled onto the image with alpha blending."""
    base = image if image is not None else Image.new("RGB", (THUMB, THUMB), (128, 128, 128))
    peak = float(np.nanmax(heat)) if np.isfinite(heat).any() else 0.0
    heat = np.nan_to_num(heat / peak if peak > 0 else heat * 0)
    coloured = (colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)
    coloured = Image.fromarray(coloured).resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base, coloured, HEATMAP_ALPHA)


class _Attention:
    """Rows of ``attention.npz`` by sample id, averaged over the given layers."""

    def __init__(self, path: str | Path, layers: list[int]):
        with np.load(path, allow_pickle=False) as archive:
            self.ids = {str(i): row for row, i in enumerate(archive["ids"])}
            self.attention = archive["attention"]
            self.grid = tuple(int(x) for x in archive["grid"])
        n_layers = self.attention.shape[1]
        self.layers = [x for x in layers if 0 <= x < n_layers] or list(range(n_layers))

    def heatmap(self, sample_id: str) -> np.ndarray | None:
        row = self.ids.get(sample_id)
        if row is None or math.prod(self.grid) != self.attention.shape[2]:
            return None
        return self.attention[row, self.layers].astype(np.float64).mean(axis=0).reshape(self.grid)


def _pick(scores: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the n most suspicious: flagged first, else all; n random kept samples not already shown)."""
    pool = scores[scores["flagged"]] if scores["flagged"].any() else scores
    top = pool.sort_values(["score", "id"], ascending=[False, True], kind="mergesort", na_position="last").head(n)
    kept = scores[~scores["flagged"] & ~scores.index.isin(top.index)]
    chosen = np.sort(np.random.default_rng(seed).choice(len(kept), size=min(n, len(kept)), replace=False))
    return top, kept.iloc[chosen]


def _cards(rows: pd.DataFrame, samples: dict, images_dir: Path, attention: _Attention | None) -> list[dict]:
    cards = []
    for row in rows.itertuples(index=False):
        sample = samples.get(row.id)
        image = _load_image(images_dir, sample.image) if sample is not None else None
        heat = attention.heatmap(row.id) if attention is not None else None
        cards.append({"id": row.id, "score": row.score, "flagged": bool(row.flagged),
                      "question": sample.question if sample else "(not in the manifest)",
                      "answer": sample.answer if sample else "",
                      "image": _encode(image) if image is not None else None,
                      "heatmap": _encode(_overlay(image, heat)) if heat is not None else None})
    return cards


# ----------------------------------------------------------------------------------------- report

def _number(value, digits: int = 4) -> str:
    """Numbers compactly (``–`` for missing/NaN), anything else as its text."""
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "–" if math.isnan(value) else f"{value:.{digits}g}"
    return str(value)


def _percent(value) -> str:
    number = _float(value)
    return "–" if math.isnan(number) else f"{100 * number:.1f}%"


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
.verdict { font-size: 3em; font-weight: 800; letter-spacing: .05em; margin: .2em 0; }
.poisoned { color: #b22222; } .clean { color: #1e7b34; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; } th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
tr.sensitive td { background: #fbe4e4; font-weight: 600; }
.plots img { max-width: 100%; display: block; margin: .6em 0; }
.columns { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .6em; margin-bottom: .8em; }
.card.flagged { border-color: #c44e52; }
.card .images { display: flex; gap: .4em; }
.card img { width: 192px; height: auto; }
.placeholder { width: 192px; height: 192px; background: #eee; color: #777; display: flex;
  align-items: center; justify-content: center; font-size: .85em; }
.meta { font-size: .85em; word-break: break-word; white-space: pre-wrap; margin: .3em 0 0 0; }
.meta b { color: #555; }
</style></head>
<body>
<h1>{{ title }}</h1>
<div class="verdict {{ verdict.verdict }}">{{ verdict.verdict | upper }}</div>
{% if verdict.get("method") %}<p>detector: <code>{{ verdict.method }}</code></p>{% endif %}
{% if reasons %}<ul>{% for reason in reasons %}<li>{{ reason }}</li>{% endfor %}</ul>{% endif %}

<h2>Counts</h2>
<table>
<tr><th class="text">samples</th><td>{{ verdict.n_samples }}</td></tr>
<tr><th class="text">flagged (removed)</th><td>{{ verdict.n_flagged }}</td></tr>
<tr><th class="text">kept</th><td>{{ n_kept }}</td></tr>
<tr><th class="text">removed fraction</th><td>{{ verdict.removed_fraction | percent }}</td></tr>
<tr><th class="text">sensitive layers (index)</th><td>{{ sensitive_layers | join(", ") or "none" }}</td></tr>
</table>
{% for name, table in extra_tables %}
<h3>{{ name }}</h3>
<table>{% for key, value in table %}<tr><th class="text">{{ key }}</th><td>{{ value | number }}</td></tr>{% endfor %}</table>
{% endfor %}

{% if metrics %}
<h2>Evaluation</h2>
<table><tr><th class="text"></th><th>accuracy</th><th>attack success rate</th><th>n</th></tr>
{% for name, m in metrics %}<tr><th class="text">{{ name }}</th><td>{{ m.get("accuracy") | percent }}</td>
<td>{{ m.get("asr") | percent }}</td><td>{{ m.get("n") | number }}</td></tr>{% endfor %}
</table>
{% endif %}

<h2>Plots</h2>
<div class="plots">{% for name, uri in plots %}<img alt="{{ name }}" src="{{ uri }}">{% endfor %}</div>

<h2>Layer profile</h2>
<p>rule: <code>{{ profile.rule }}</code>{% if profile.rule == "paper" %}, &tau; = {{ profile.tau | number }}{% endif %}{% if profile.residualise != "none" %}; profiled: each layer's entropy minus what the question text predicts (<code>residualise: {{ profile.residualise }}</code>){% endif %}</p>
<table><tr><th>layer</th><th>means</th><th>sigmas</th><th>weights</th><th>gap</th><th>BSI</th><th>code margin</th>
<th>sensitive</th></tr>
{% for s in profile.layers %}<tr{% if s.layer in sensitive_layers %} class="sensitive"{% endif %}><td>{{ s.layer }}</td>
<td>{{ s.means | map("number") | join(", ") }}</td><td>{{ s.sigmas | map("number") | join(", ") }}</td>
<td>{{ s.weights | map("number", 3) | join(", ") }}</td><td>{{ s.gap | number }}</td><td>{{ s.bsi | number }}</td>
<td>{{ s.code_margin | number }}</td><td>{{ "yes" if s.layer in sensitive_layers else "no" }}</td></tr>{% endfor %}
</table>

<h2>Examples</h2>
{% if not has_attention %}<p>No attention maps were given: images only.</p>{% endif %}
<div class="columns">
{% for heading, cards in columns %}<div><h3>{{ heading }}</h3>
{% for c in cards %}<div class="card{% if c.flagged %} flagged{% endif %}"><div class="images">
{% if c.image %}<img alt="image" src="{{ c.image }}">{% else %}<div class="placeholder">image unavailable</div>{% endif %}
{% if c.heatmap %}<img alt="attention" src="{{ c.heatmap }}">{% endif %}</div>
<p class="meta"><b>id</b> {{ c.id }} · <b>score</b> {{ c.score | number }}{% if c.flagged %} · <b>flagged</b>{% endif %}</p>
<p class="meta"><b>Q</b> {{ c.question }}</p><p class="meta"><b>A</b> {{ c.answer }}</p></div>
{% else %}<p>none</p>{% endfor %}</div>
{% endfor %}</div>
</body></html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
_ENV.filters.update(number=_number, percent=_percent)


def write_report(out_html: str | Path, *, entropy_csv: str | Path, profile_json: str | Path, scores_csv: str | Path,
                 verdict_json: str | Path, manifest_json: str | Path, images_dir: str | Path,
                 attention_npz: str | Path | None = None, metrics: dict[str, dict] | None = None,
                 n_examples: int = 8, seed: int = 0, title: str = "BYE scan report",
                 plots_dir: str | Path | None = None) -> Path:
    """Write one self-contained HTML report of a scan (plots and images embedded); return its path.
    With ``plots_dir``, the same plots are also saved there as PNG files (rendered once)."""
    verdict = json.loads(Path(verdict_json).read_text(encoding="utf-8"))
    details = verdict.get("details") or {}
    profile = _read_profile(profile_json)
    scores = _read_table(scores_csv)
    samples = {s.id: s for s in read_manifest(manifest_json)}
    attention = _Attention(attention_npz, profile["sensitive_layers"]) if attention_npz is not None else None
    top, kept = _pick(scores, n_examples, seed)
    plots = _plots(entropy_csv, profile_json, scores_csv, verdict.get("method", "bye"))
    if plots_dir is not None:
        _save_plots(plots, plots_dir)
    heading = "Most suspicious (flagged)" if scores["flagged"].any() else "Highest scores (nothing flagged)"
    extra_tables = [(name.capitalize(), list(flatten(details[name]).items())) for name in ("evidence", "clusters")
                    if isinstance(details.get(name), dict) and details[name]]
    html = _ENV.from_string(TEMPLATE).render(
        title=title, verdict=verdict, reasons=details.get("verdict_reasons") or [],
        n_kept=verdict.get("n_kept", verdict["n_samples"] - verdict["n_flagged"]),
        sensitive_layers=profile["sensitive_layers"], extra_tables=extra_tables,
        metrics=list((metrics or {}).items()), profile=profile,
        plots=[(name, _data_uri(data)) for name, data in plots.items()],
        has_attention=attention is not None,
        columns=[(heading, _cards(top, samples, Path(images_dir), attention)),
                 ("Random kept samples", _cards(kept, samples, Path(images_dir), attention))])
    out = Path(out_html)
    atomic_write_text(out, html)
    return out
