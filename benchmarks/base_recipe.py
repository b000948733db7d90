"""A base-model recipe through the product's own steps, timed: world, base, LoRA fine-tune, evaluation.

The demo's ``params.yaml`` with ``--set key=value`` overrides (YAML values, dotted keys), then in
one process what ``bye world``, ``bye base``, ``bye finetune`` and ``bye eval`` run: the world
(``world`` section), the embedded base (``base``), the product's LoRA fine-tune on the world's
train split (``finetune``) and greedy evaluation on its test split (``eval``), before and after the
fine-tune. Reports accuracy by family and by question kind and, for lettered questions answered
"red (A)" (``world.scene.options=letter_after``), how often the answer names the right option
whatever letter follows it.

    python benchmarks/base_recipe.py --name demo
    python benchmarks/base_recipe.py --name skills9 --set world.scene.options=letter_after \\
        --set base.model.image_size=48 --set base.model.patch_size=16 --set base.pretrain.epochs=2 ...

Writes ``benchmarks/results/base_recipe_NAME.json`` and ``.md`` (with the machine); the world,
base and adapter go to a temporary folder, or to ``--keep DIR``. ``--lora-rates 0.0005 ...`` also
fine-tunes the same base at those learning rates and reports each.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import machine, machine_line, question_kind, with_overrides, write_results

from bye.config import load_params
from bye.data.world import write_world
from bye.models.evaluate import accuracy_report, evaluate_samples, letter_after_text, options_of, predicted_letter
from bye.models.finetune import finetune
from bye.models.loading import load_for_inference
from bye.models.tiny import build_base
from bye.settings import base_settings, eval_settings, lora_settings, world_settings

RESULTS = Path(__file__).parent / "results"


def option_named(row: dict) -> bool | None:
    """For an answer written "text (L)": whether its text names the reference's option."""
    options = options_of(row["question"])
    if not options or letter_after_text(row["reference"]) is None:
        return None
    named = letter_after_text(row["prediction"])
    reference = predicted_letter(row["reference"], options)
    return reference is not None and predicted_letter(named[0] if named else row["prediction"], options) == reference


def report(rows: list[dict]) -> dict:
    record = accuracy_report(rows)
    kinds: dict[str, list[bool]] = {}
    for row in rows:
        kinds.setdefault(question_kind(row["question"]), []).append(row["correct"])
    record["by_kind"] = {k: round(sum(v) / len(v), 4) for k, v in sorted(kinds.items())}
    named = [hit for hit in map(option_named, rows) if hit is not None]
    if named:
        record["mcq_option_named"] = round(sum(named) / len(named), 4)
    return record


def evaluate(world: Path, base: Path, adapter: Path | None, settings) -> dict:
    from bye.data.submission import read_manifest

    model, processor = load_for_inference(base, adapter)
    rows = evaluate_samples(model, processor, read_manifest(world / "test.json"), world / "images",
                            batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens, progress=False)
    return report(rows)


def cells(result: dict) -> str:
    """A result's all / short answers / multiple choice / option named, as Markdown cells."""
    family = result["by_family"]
    named = f"{result['mcq_option_named']:.1%}" if "mcq_option_named" in result else ""
    return (f"{result['accuracy']:.1%} | {family.get('vqa', {}).get('accuracy', 0):.1%} | "
            f"{family.get('mcq', {}).get('accuracy', 0):.1%} | {named}")


def markdown(record: dict) -> str:
    after, before = record["finetuned"], record["base_model"]
    family = after["by_family"]
    lines = [f"# Base recipe `{record['name']}`", "", f"Machine: {record['machine_line']}", "",
             "Overrides of `params.yaml`: " + (", ".join(f"`{a}`" for a in record["overrides"]) or "none"), "",
             "| step | seconds |", "|---|---|"]
    lines += [f"| {step} | {seconds:.0f} |" for step, seconds in record["seconds"].items()]
    if record["base_summary"].get("skill_phases"):
        lines += ["", "Curriculum phases (each ends once its new skill's held-out exact match passes the bar): "
                  + ", ".join(f"{p['skill']} {p['steps']} steps ("
                              + ("unchecked" if p["exact_match"] is None else f"{p['exact_match']:.0%}") + ")"
                              for p in record["base_summary"]["skill_phases"])]
    lines += ["", "| | all | short answers | multiple choice | option named (MC) |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {cells(result)} |" for label, result in (("base model", before),
                                                                       ("after the LoRA fine-tune", after))]
    if record.get("lora_rates"):
        lines += ["", "The same base fine-tuned at other LoRA learning rates (everything else as above):", "",
                  "| LoRA learning rate | all | short answers | multiple choice | option named (MC) | by question kind |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {rate} | {cells(result)} | " + ", ".join(f"{k} {v:.1%}" for k, v in result["by_kind"].items())
                  + " |" for rate, result in record["lora_rates"].items()]
    lines += ["", "After the fine-tune, by question kind: "
              + ", ".join(f"{kind} {value:.1%}" for kind, value in after["by_kind"].items()),
              "", f"Gain over the base model: {100 * (after['accuracy'] - before['accuracy']):.1f} points "
              f"(test split: {family.get('vqa', {}).get('n', 0)} short-answer, {family.get('mcq', {}).get('n', 0)} "
              "multiple-choice questions)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results go to base_recipe_NAME.json / .md")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", type=Path, help="keep the world, base and adapter here")
    parser.add_argument("--lora-rates", type=float, nargs="+", default=[], metavar="RATE",
                        help="also fine-tune the base at each of these learning rates and evaluate")
    args = parser.parse_args()
    params = with_overrides(load_params(args.params), args.overrides)
    record = {"name": args.name, "overrides": args.overrides, "machine": machine(), "machine_line": machine_line()}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        world, base, adapter = root / "world", root / "base", root / "adapter"
        seconds = {}
        began = time.perf_counter()
        write_world(world, **world_settings(params))
        seconds["world"] = time.perf_counter() - began
        began = time.perf_counter()
        summary = build_base(base, *base_settings(params), progress=False)
        seconds["base pre-training"] = time.perf_counter() - began
        seconds.update({f"  of which {k}": summary[f"{k}_seconds"] for k in ("vision", "train", "skill")})
        began = time.perf_counter()
        tuned = finetune(world / "train.json", world / "images", base, adapter, lora_settings(params), progress=False)
        seconds["LoRA fine-tune"] = time.perf_counter() - began
        settings = eval_settings(params)
        record["base_model"] = evaluate(world, base, None, settings)
        record["finetuned"] = evaluate(world, base, adapter, settings)
        record["lora_rates"] = {}
        for rate in args.lora_rates:
            lora = replace(lora_settings(params), learning_rate=rate)
            finetune(world / "train.json", world / "images", base, root / f"adapter_{rate:g}", lora, progress=False)
            record["lora_rates"][f"{rate:g}"] = evaluate(world, base, root / f"adapter_{rate:g}", settings)
    record["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    record["base_summary"] = {k: summary[k] for k in ("image_tokens", "epoch_losses", "skill_steps", "skill_losses",
                                                      "skill_phases", "vision_cell_accuracy")}
    record["finetune_epoch_losses"] = tuned["epoch_losses"]
    write_results(RESULTS / f"base_recipe_{args.name}.json", record, markdown(record))


if __name__ == "__main__":
    main()
