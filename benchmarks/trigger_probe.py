"""Does the trigger reach the language model? Every trigger's trace in the image tokens a base hands on.

    python benchmarks/trigger_probe.py --base models/base [--base .cache/bases/seed3 ...] \
        [--asr "models/base=benchmarks/results/threat_demo_rebuilt.json" ...] [--n 1000] [--out NAME]

For each base and trigger, the same scenes clean and triggered go through the base's own image path
(processor, vision tower, feature selection, projector: the tokens the language model reads) and are compared:

- ``shift``: median over scenes of ||f(trigger(x)) - f(x)|| over the median distance between two different
  scenes' tokens, ||f(x) - f(x')|| (1.0: the trigger moves the tokens as far as changing the scene does);
- ``token_shift``: the same for the one image token the trigger moves most, against the token another scene
  moves most (a patch trigger is local);
- ``probe_auroc``: a linear probe (standardised, L2 logistic regression) trained on half of the scenes, clean
  against triggered, scored on the other half (held-out scenes): can the triggered image be told apart at all?
- ``pixel_probe_auroc``: the same probe on the processor's pixel values, what the tower was given;
- ``pixel_shift``, ``tower_shift``: the shift of the pixel values and of the tower's patch states after its
  embeddings and after each layer: where along the tower a trigger fades.

With ``--asr [COLUMN@]BASE=THREAT_JSON[,THREAT_JSON]`` the table puts each trigger's ASR (the threat benchmark
on that base, 10 % poison; COLUMN names a fine-tune recipe, default "ASR") beside its trace, with the rank
correlation of ASR and shift over every (base, trigger) measured: to tell a trigger the tower discards from one
the fine-tune does not learn.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line  # noqa: E402

from bye.attacks import available_triggers  # noqa: E402
from bye.attacks.poison import trigger_rng  # noqa: E402
from bye.config import load_params  # noqa: E402
from bye.data.submission import read_manifest  # noqa: E402
from bye.models.chat import open_rgb  # noqa: E402
from bye.models.loading import load_base  # noqa: E402
from bye.settings import trigger as trigger_from_params  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def image_tokens(model, processor, images: list, chunk: int = 128) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(pixel values, the projected image tokens the language model reads, the vision tower's patch states after
    its embeddings and after each of its layers), one row per image."""
    pixels, tokens, states = [], [], []
    config = model.config
    with torch.no_grad():
        for i in range(0, len(images), chunk):
            values = processor.image_processor(images[i:i + chunk], return_tensors="pt")["pixel_values"]
            values = values.to(model.dtype)
            output = model.model.get_image_features(  # one tower pass: the tokens and every layer's states
                pixel_values=values, vision_feature_layer=config.vision_feature_layer,
                vision_feature_select_strategy=config.vision_feature_select_strategy, output_hidden_states=True)
            features, hidden = output.pooler_output, output.hidden_states
            features = torch.stack(list(features)) if isinstance(features, (list, tuple)) else features
            pixels.append(values.float().flatten(1).numpy())
            tokens.append(features.float().numpy())
            states.append([h.float().flatten(1).numpy() for h in hidden])
    return np.concatenate(pixels), np.concatenate(tokens), [np.concatenate(layer) for layer in zip(*states)]


def shift(clean: np.ndarray, moved: np.ndarray, partner: np.ndarray) -> float:
    """Median distance a trigger moves each scene's representation, over the median distance to another scene's."""
    flat = lambda a: a.reshape(len(a), -1)
    return float(np.median(np.linalg.norm(flat(moved) - flat(clean), axis=1))
                 / np.median(np.linalg.norm(flat(clean) - flat(clean)[partner], axis=1)))


def probe_auroc(clean: np.ndarray, triggered: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int) -> float:
    """Held-out AUROC of a linear probe, clean (0) against triggered (1), trained on the ``train`` scenes."""
    x = lambda rows: np.concatenate([clean[rows].reshape(len(rows), -1), triggered[rows].reshape(len(rows), -1)])
    y = lambda rows: np.r_[np.zeros(len(rows)), np.ones(len(rows))]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=3000, random_state=seed))
    probe.fit(x(train), y(train))
    return float(roc_auc_score(y(test), probe.decision_function(x(test))))


def trace(clean: tuple, triggered: tuple, partner: np.ndarray, train, test, seed: int) -> dict:
    """How far a trigger moves the tokens (and the tower's states), relative to another scene, and whether a
    probe sees it. ``clean`` and ``triggered`` are :func:`image_tokens`' three outputs."""
    (clean_pixels, clean_tokens, clean_states), (pixels, tokens, states) = clean, triggered
    between_token = np.linalg.norm(clean_tokens - clean_tokens[partner], axis=2).max(axis=1)
    moved_token = np.linalg.norm(tokens - clean_tokens, axis=2).max(axis=1)
    return {"shift": shift(clean_tokens, tokens, partner),
            "token_shift": float(np.median(moved_token) / np.median(between_token)),
            "tower_shift": [shift(c, t, partner) for c, t in zip(clean_states, states)],
            "pixel_shift": shift(clean_pixels, pixels, partner),
            "probe_auroc": probe_auroc(clean_tokens, tokens, train, test, seed),
            "pixel_probe_auroc": probe_auroc(clean_pixels, pixels, train, test, seed)}


def correlation(bases: dict, column: str) -> dict:
    """Spearman's rho of one ASR column against each trace, over every (base, trigger) that has that ASR."""
    pairs = [row for rows in bases.values() for row in rows.values() if row["asr"].get(column) is not None]
    asr = [row["asr"][column] for row in pairs]
    return {"n": len(pairs), **{key: float(spearmanr(asr, [row[key] for row in pairs]).statistic)
                                for key in ("shift", "token_shift", "probe_auroc")}}


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, action="append", help="repeatable; default models/base")
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--triggers", default=None, help="comma-separated; default: all registered")
    parser.add_argument("--asr", action="append", default=[], metavar="[COLUMN@]BASE=THREAT_JSON[,THREAT_JSON]",
                        help="the threat benchmark's results on that base, for an ASR column (repeatable)")
    parser.add_argument("--n", type=int, default=1000, help="scenes (the world's train split, then its test split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="trigger_probe")
    args = parser.parse_args()
    bases = args.base or [Path("models/base")]
    names = args.triggers.split(",") if args.triggers else available_triggers()
    params = load_params(args.params)
    asr: dict[str, dict[str, dict]] = {}  # column -> base -> trigger -> ASR
    for item in args.asr:
        where, _, files = item.partition("=")
        column, _, base = where.rpartition("@")
        for file in files.split(","):
            asr.setdefault(column or "ASR", {}).setdefault(str(Path(base)), {}).update(
                {k: v["asr"] for k, v in json.loads(Path(file).read_text()).items() if isinstance(v, dict) and "asr" in v})

    samples = (read_manifest(args.world / "train.json") + read_manifest(args.world / "test.json"))
    files = list(dict.fromkeys(s.image for s in samples))[:args.n]
    images = [open_rgb(args.world / "images" / f) for f in files]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(images))
    train, test = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
    partner = np.roll(np.arange(len(images)), 1)  # each scene against its neighbour in the list: another scene
    triggered = {name: [trigger_from_params(name, params).apply(image, trigger_rng(args.seed, i))
                        for i, image in enumerate(images)] for name in names}

    began = time.perf_counter()
    results: dict = {"machine": machine(), "world": str(args.world), "n_scenes": len(images), "seed": args.seed,
                     "bases": {}}
    for base in bases:
        model, processor = load_base(base)
        clean = image_tokens(model, processor, images)
        rows = {}
        for name in names:
            rows[name] = trace(clean, image_tokens(model, processor, triggered[name]), partner, train, test, args.seed)
            rows[name]["asr"] = {column: by_base.get(str(base), {}).get(name) for column, by_base in asr.items()}
            print(base, name, json.dumps(rows[name]), flush=True)
        results["bases"][str(base)] = rows
    results["seconds"] = time.perf_counter() - began
    results["rank_correlation"] = {column: correlation(results["bases"], column) for column in asr}

    out = RESULTS / f"{args.out}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"# Does the trigger reach the language model?\n\n{len(images)} scenes of `{args.world}`, each clean and "
             f"triggered, through each base's image path (the projected image tokens). Probe: linear, trained on half "
             f"of the scenes, AUROC on the other half. ASR: the threat benchmark on that base, 10 % poison. "
             f"Machine: {machine_line()}. {results['seconds']:.0f} s.\n"]
    for column, rho in results["rank_correlation"].items():
        lines.append(f"{column} against shift, every (base, trigger) measured: Spearman {rho['shift']:.2f}; against the "
                     f"most-moved token {rho['token_shift']:.2f}; against the probe {rho['probe_auroc']:.2f} "
                     f"({rho['n']} pairs).\n")
    for base, rows in results["bases"].items():
        header = ["trigger", *asr, "shift (vs another scene)", "most-moved token", "token probe AUROC",
                  "pixel probe AUROC", "shift: pixels, tower embeddings, each tower layer"]
        lines += [f"\n## `{base}`\n", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += [f"| {n} | {''.join(percent(v) + ' | ' for v in r['asr'].values())}{r['shift']:.3f} | "
                  f"{r['token_shift']:.3f} | {r['probe_auroc']:.3f} | {r['pixel_probe_auroc']:.3f} | "
                  f"{' → '.join(f'{x:.3f}' for x in [r['pixel_shift'], *r['tower_shift']])} |" for n, r in rows.items()]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
