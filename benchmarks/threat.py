"""Threat benchmark: does every registered trigger plant a real backdoor in the embedded model?

For each trigger: poison the world's train split at ``--rate``, LoRA fine-tune the base on it,
and report clean accuracy and attack success rate on the test split, next to a fine-tune on the
clean world. Writes ``benchmarks/results/threat.json`` and ``threat.md`` and a gallery PNG of
every trigger applied to the same scene.

    python benchmarks/threat.py --world data/world --base models/base [--rate 0.1] [--triggers a,b] \
        [--set finetune.seed=1 --set attack.seed=1]

The poisoned samples are drawn with ``attack.seed`` and the fine-tunes seeded with ``finetune.seed``;
``--set`` overrides any ``params.yaml`` key for one run (another draw of the same recipe).

``--detect bye,answer_gain`` also scores those detectors on each poisoned submission, reading each
poisoned fine-tune as the provisional model (it is one: ``provisional`` must change nothing in
``finetune``), so one draw gives the backdoor and whether it is found: F1, precision, recall, AUROC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from PIL import Image, ImageDraw

from bye.attacks import available_triggers, get_trigger
from bye.attacks.poison import poison_submission, trigger_rng
from bye.config import build, load_params
from bye.data.submission import read_manifest
from bye.detect.api import DETECTORS
from bye.detect.scan import extract_submission, read_features
from bye.metrics import detection_metrics
from bye.models.evaluate import EvalSettings, run_evaluation
from bye.models.finetune import LoraSettings, finetune
from bye.settings import attack_settings, lora_settings, scan_settings
from bye.settings import trigger as trigger_from_params
from common import machine, read_truth_file, with_overrides, write_results
from stages import run_detector

RESULTS = Path(__file__).parent / "results"


def gallery(world: Path, names: list[str], out: Path, scale: int = 4) -> None:
    sample = read_manifest(world / "train.json")[0]
    image = Image.open(world / "images" / sample.image).convert("RGB")
    tiles = [("clean", image)] + [(n, get_trigger(n).apply(image, trigger_rng(0, 0))) for n in names]
    width, height = image.size[0] * scale, image.size[1] * scale
    canvas = Image.new("RGB", (width * len(tiles), height + 14), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (name, tile) in enumerate(tiles):
        canvas.paste(tile.resize((width, height), Image.NEAREST), (i * width, 14))
        draw.text((i * width + 2, 1), name, fill="black")
    canvas.save(out)


def detection(submission: Path, truth_json: Path, base: Path, adapter: Path, names: list[str], params: dict, *,
              keep_attention: bool = False) -> dict:
    """Each detector in ``names`` on ``submission``, with ``adapter`` as its provisional model (``keep_attention``:
    also write each sample's per-layer image-attention rows, ``attention.npz``)."""
    extract = scan_settings(params, method=names[0])[1].extract
    signals = tuple(sorted({s for n in names for s in DETECTORS[n].signals} | set(extract.signals)))
    extract_submission(submission / "train.json", submission / "images", base, adapter, submission / "extract",
                       settings=replace(extract, signals=signals, keep_attention=keep_attention), progress=False)
    features = read_features(read_manifest(submission / "train.json"), submission / "extract")
    truth = read_truth_file(truth_json, features.ids)
    found = {}
    for name in names:
        result = run_detector(name, features, truth, params)
        scores = np.nan_to_num(result.scores, nan=-np.inf, neginf=-1e9, posinf=1e9)
        metrics = detection_metrics(truth, result.flagged, scores)
        found[name] = {**{k: metrics[k] for k in ("f1", "precision", "recall", "auroc", "removed")},
                       "verdict": result.verdict}
    return found


def by_family(result: dict) -> str:
    """``vqa 80.0%, mcq 60.0%``: where the backdoor fires (— for results written before it was recorded)."""
    return ", ".join(f"{f} {v:.1%}" for f, v in sorted(result.get("asr_by_family", {}).items(), reverse=True)) or "—"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--triggers", type=str, default=None, help="comma-separated; default: all registered")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=RESULTS / "threat.json")
    parser.add_argument("--gallery", action=argparse.BooleanOptionalAction, default=True,
                        help="also draw every trigger on the world's first scene (results/triggers.png)")
    parser.add_argument("--detect", default="", help="comma-separated detectors to score on each poisoned fine-tune")
    parser.add_argument("--keep", type=Path, help="with --detect: keep each trigger's extraction (attention rows included), "
                        "manifest and ground truth here (KEEP/TRIGGER/extract, train.json, truth.json), to rescore "
                        "without fine-tuning again")
    args = parser.parse_args()

    params = with_overrides(load_params(args.params), args.overrides)
    lora = build(LoraSettings, params.get("finetune"))
    settings = build(EvalSettings, params.get("eval"))
    names = args.triggers.split(",") if args.triggers else available_triggers()
    detectors = [d for d in args.detect.split(",") if d]
    if detectors and lora_settings(params, provisional=True) != lora:
        parser.error("--detect reads each poisoned fine-tune as the provisional model, but `provisional` changes "
                     "`finetune` here")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.gallery:
        gallery(args.world, available_triggers(), RESULTS / "triggers.png")

    attack = attack_settings(params)
    poison_seed = attack["seed"]
    results: dict = {"rate": args.rate, "overrides": args.overrides, "poison_seed": poison_seed, "machine": machine(),
                     "finetune": asdict(lora), "world": str(args.world), "base": str(args.base), "base_image_tokens": json.loads((args.base / "config.json").read_text())
                     .get("image_seq_length")}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        finetune(args.world / "train.json", args.world / "images", args.base, tmp / "clean_adapter", lora, progress=False)
        clean = run_evaluation(args.world / "test.json", args.world / "images", args.base, tmp / "clean_adapter",
                               settings, progress=False)
        results["clean"] = {"accuracy": clean["accuracy"]}
        print(f"clean fine-tune: accuracy {clean['accuracy']:.3f}", flush=True)
        for name in names:
            trigger = trigger_from_params(name, params)
            sub = tmp / name
            poison_submission(args.world / "train.json", args.world / "images", trigger, rate=args.rate,
                              out_dir=sub, truth_json=tmp / f"{name}.truth.json", seed=poison_seed,
                              questions=attack["questions"])
            finetune(sub / "train.json", sub / "images", args.base, sub / "adapter", lora, progress=False)
            metrics = run_evaluation(args.world / "test.json", args.world / "images", args.base, sub / "adapter",
                                     settings, trigger=trigger, progress=False)
            results[name] = {"asr": metrics["asr"], "accuracy": metrics["accuracy"],
                             "accuracy_drop": clean["accuracy"] - metrics["accuracy"],
                             "asr_by_family": {f: v["asr"] for f, v in metrics.get("asr_by_family", {}).items()}}
            print(f"{name}: asr {metrics['asr']:.3f} accuracy {metrics['accuracy']:.3f}", flush=True)
            if detectors:
                results[name]["detection"] = detection(sub, tmp / f"{name}.truth.json", args.base, sub / "adapter",
                                                       detectors, params, keep_attention=args.keep is not None)
                print(f"{name}: {results[name]['detection']}", flush=True)
                if args.keep:
                    shutil.copytree(sub / "extract", args.keep / name / "extract", dirs_exist_ok=True)
                    shutil.copyfile(tmp / f"{name}.truth.json", args.keep / name / "truth.json")
                    shutil.copyfile(sub / "train.json", args.keep / name / "train.json")  # the questions
    results["seconds"] = time.perf_counter() - began
    rows = [f"| {n} | {results[n]['asr']:.1%} | {by_family(results[n])} | {results[n]['accuracy']:.1%} | "
            f"{results[n]['accuracy_drop'] * 100:+.1f} |" for n in names]
    table = "\n".join(["| trigger | ASR | ASR by family | clean accuracy | drop vs clean fine-tune (points) |",
                       "|---|---|---|---|---|", *rows])
    if detectors:
        found = [f"| {n} | {results[n]['asr']:.1%} | " + " | ".join(
            f"{d['f1']:.2f} / {d['auroc']:.3f} / {d['removed']:.1%} ({d['verdict']})"
            for d in (results[n]["detection"][m] for m in detectors)) + " |" for n in names]
        table += ("\n\nDetection, each poisoned fine-tune read as every detector's provisional model (answer_gain's own "
                  "is shorter, `provisional.by_method`: this is its `@shared` reading): F1 / AUROC / removed (verdict)\n\n"
                  + "\n".join([f"| trigger | ASR | {' | '.join(detectors)} |", "|---|---|" + "---|" * len(detectors), *found]))
    overrides = f", overrides {', '.join(f'`{a}`' for a in args.overrides)}" if args.overrides else ""
    write_results(args.out, results, (
        f"# Threat benchmark ({args.rate:.0%} poison)\n\nWorld `{args.world}`, base `{args.base}` "
        f"({results['base_image_tokens']} image tokens){overrides}. Clean fine-tune accuracy: {clean['accuracy']:.1%}. "
        f"Machine: {results['machine']}. Total {results['seconds']:.0f} s.\n\n{table}\n\n"
        "Targets: ASR >= 90% with clean accuracy within 2 points of the clean fine-tune.\n"))


if __name__ == "__main__":
    main()
