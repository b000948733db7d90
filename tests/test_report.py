"""The scan report: plots, one self-contained HTML file, escaping, placeholders, determinism."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bye.data.submission import Sample, write_manifest
from bye.report import write_plots, write_report

N, L, GRID = 40, 3, (4, 4)
N_FLAGGED, N_EXAMPLES = 8, 4
SCRIPT = "<script>alert(1)</script>"
URI = "data:image/png;base64,"


def _write_case(root, *, poisoned: bool = True) -> dict:
    """40 samples, 3 layers; s00..s07 have low entropy on layer 1 (flagged when ``poisoned``)."""
    rng = np.random.default_rng(1)
    ids = [f"s{i:02d}" for i in range(N)]
    low = np.arange(N) < N_FLAGGED
    entropy = rng.normal(2.7, 0.05, size=(N, L))
    entropy[:, 1] = np.where(low, rng.normal(1.5, 0.05, N), rng.normal(2.6, 0.05, N))
    entropy[:N_FLAGGED, 1] = 1.4 + 0.02 * np.arange(N_FLAGGED)  # s00 is the most suspicious, then s01...
    entropy[:, 2] = 2.0  # a degenerate (constant) layer
    scores = -entropy[:, 1]
    flagged = low if poisoned else np.zeros(N, dtype=bool)

    table = pd.DataFrame({"id": ids}).join(pd.DataFrame(entropy, columns=[f"entropy_l{i}" for i in range(L)]))
    table.to_csv(root / "entropy.csv", index=False)
    scored = pd.DataFrame({"id": ids, "score": scores, "flagged": flagged, "mean_entropy": entropy[:, 1]})
    scored.join(table.drop(columns="id")).to_csv(root / "scores.csv", index=False)

    layers = [{"layer": 0, "means": [2.65, 2.75], "sigmas": [0.04, 0.04], "weights": [0.5, 0.5], "gap": 0.1,
               "bsi": 1.7, "code_margin": -0.06, "sensitive": False},
              {"layer": 1, "means": [1.5, 2.6], "sigmas": [0.05, 0.05], "weights": [0.2, 0.8], "gap": 1.1,
               "bsi": 15.5, "code_margin": 0.9, "sensitive": True},
              {"layer": 2, "means": ["nan", "nan"], "sigmas": ["nan", "nan"], "weights": ["nan", "nan"],
               "gap": 0.0, "bsi": 0.0, "code_margin": "-inf", "sensitive": False}]
    (root / "profile.json").write_text(json.dumps({"rule": "code", "tau": 2.0, "sensitive_layers": [1],
                                                   "layers": layers}))
    verdict = {"verdict": "poisoned" if poisoned else "clean", "method": "bye", "n_samples": N,
               "n_flagged": int(flagged.sum()), "n_kept": int((~flagged).sum()),
               "removed_fraction": float(flagged.mean()), "sensitive_layers": [1] if poisoned else [],
               "details": {"verdict_reasons": ["layer 1 splits the submission in two"] if poisoned else [],
                           "evidence": {"dip_pvalue": 0.0, "n_sensitive_layers": 1}}}
    (root / "verdict.json").write_text(json.dumps(verdict))

    images = root / "images"
    images.mkdir()
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "secret.png")  # outside the image folder
    samples = []
    for i, sample_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{sample_id}.png")
        image = {1: "../secret.png", 2: "missing.png"}.get(i, f"{sample_id}.png")
        question = SCRIPT if i == 0 else f"What colour is shape {i}?"
        samples.append(Sample.single_turn(sample_id, image, question, "Backdoor Attack!" if low[i] else "red"))
    write_manifest(samples, root / "manifest.json")

    attention = rng.dirichlet(np.ones(GRID[0] * GRID[1]), size=(N, L)).astype(np.float16)
    np.savez(root / "attention.npz", ids=np.array(ids), attention=attention, grid=np.array(GRID))
    return {"entropy_csv": root / "entropy.csv", "profile_json": root / "profile.json",
            "scores_csv": root / "scores.csv", "verdict_json": root / "verdict.json",
            "manifest_json": root / "manifest.json", "images_dir": images}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("poisoned")
    inputs = _write_case(root)
    metrics = {"before filtering": {"accuracy": 0.35, "asr": 0.408, "n": 500},
               "after filtering": {"accuracy": 0.36, "asr": 0.012, "n": 500}}
    html = write_report(root / "out" / "report.html", **inputs, attention_npz=root / "attention.npz",
                        metrics=metrics, n_examples=N_EXAMPLES)
    return root, inputs, html


def test_plots_are_valid_deterministic_pngs(case, tmp_path):
    root, inputs, _ = case
    args = [inputs[k] for k in ("entropy_csv", "profile_json", "scores_csv")]
    first, second = write_plots(*args, tmp_path / "a"), write_plots(*args, tmp_path / "b")
    assert set(first) == {"entropy_layers", "separation", "scores"}
    for name, path in first.items():
        assert path.name == f"{name}.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        assert path.read_bytes() == second[name].read_bytes()
    assert not list(tmp_path.glob("*/.*.tmp"))


def test_report_content(case):
    _, _, html_path = case
    html = html_path.read_text(encoding="utf-8")
    assert "POISONED" in html and "layer 1 splits the submission in two" in html
    for sample_id in ("s00", "s01", "s02", "s03"):  # the four highest-scoring flagged samples
        assert f"<b>id</b> {sample_id} " in html
    assert "<b>id</b> s04 " not in html  # fifth flagged: beyond n_examples
    # 3 plots + (4 suspicious + 4 kept) heatmaps + 6 images (one outside the folder, one missing)
    assert html.count(URI) == 3 + 2 * N_EXAMPLES + (2 * N_EXAMPLES - 2)
    assert html.count("image unavailable") == 2
    assert "before filtering" in html and "40.8%" in html and "1.2%" in html
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html and "https://" not in html and "<link" not in html  # opens offline


def test_report_is_deterministic(case, tmp_path):
    root, inputs, html_path = case
    metrics = {"before filtering": {"accuracy": 0.35, "asr": 0.408, "n": 500},
               "after filtering": {"accuracy": 0.36, "asr": 0.012, "n": 500}}
    again = write_report(tmp_path / "again.html", **inputs, attention_npz=root / "attention.npz",
                         metrics=metrics, n_examples=N_EXAMPLES, plots_dir=tmp_path / "plots")
    assert again.read_bytes() == html_path.read_bytes()
    # the plots it saves beside the report are the ones it embeds (and write_plots would write)
    alone = write_plots(inputs["entropy_csv"], inputs["profile_json"], inputs["scores_csv"], tmp_path / "alone")
    for name, path in alone.items():
        assert (tmp_path / "plots" / f"{name}.png").read_bytes() == path.read_bytes()


def test_clean_report_without_attention(tmp_path):
    inputs = _write_case(tmp_path, poisoned=False)
    html = write_report(tmp_path / "report.html", **inputs, n_examples=N_EXAMPLES).read_text(encoding="utf-8")
    assert "CLEAN" in html and "Highest scores (nothing flagged)" in html
    assert html.count(URI) == 3 + (2 * N_EXAMPLES - 2)  # plots and images, no heatmaps
    plots = write_plots(inputs["entropy_csv"], inputs["profile_json"], inputs["scores_csv"], tmp_path / "plots")
    assert all(p.stat().st_size > 0 for p in plots.values())


def test_a_residualised_profile_is_drawn_over_the_residuals_it_was_fitted_to(case, tmp_path):
    """``residualise: prompt``: the profile's Gaussians belong to the residuals the profile stage wrote
    (residuals.csv beside profile.json), not to the raw entropies; the report says which table it shows."""
    root, inputs, _ = case
    profile = json.loads(inputs["profile_json"].read_text())
    (tmp_path / "profile.json").write_text(json.dumps({**profile, "residualise": "prompt"}))
    raw = pd.read_csv(inputs["entropy_csv"])
    residuals = raw.rename(columns=lambda c: c.replace("entropy_l", "residual_l"))
    residuals[[c for c in residuals.columns if c != "id"]] -= 2.5
    residuals.to_csv(tmp_path / "residuals.csv", index=False)
    args = {**inputs, "profile_json": tmp_path / "profile.json"}
    drawn = write_plots(args["entropy_csv"], args["profile_json"], args["scores_csv"], tmp_path / "plots")
    plain = write_plots(inputs["entropy_csv"], inputs["profile_json"], inputs["scores_csv"], tmp_path / "plain")
    assert drawn["entropy_layers"].read_bytes() != plain["entropy_layers"].read_bytes()
    assert drawn["separation"].read_bytes() == plain["separation"].read_bytes()
    html = write_report(tmp_path / "report.html", **args, n_examples=N_EXAMPLES).read_text(encoding="utf-8")
    assert "residualise: prompt" in html
    (tmp_path / "residuals.csv").unlink()
    with pytest.raises(FileNotFoundError):
        write_plots(args["entropy_csv"], args["profile_json"], args["scores_csv"], tmp_path / "gone")
