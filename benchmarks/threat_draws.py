"""The threat benchmark as a distribution: one recipe's ASRs over several draws.

A single threat run is one draw of everything random upstream of it: the base's pre-training seed,
the LoRA fine-tune's seed, which samples get poisoned. On the embedded world those draws move an
ASR from 0 % to 95 % (docs/embedded-world.md, "Within the 4-minute budget"), so a claim about a trigger needs the
spread. This reads threat result files (``benchmarks/threat.py``), one per draw, and writes per
trigger every draw's ASR, their min / median / max, and how many draws meet the 90 % target; and,
for each detector that scored the trigger (``threat.py --detect``), every scored draw's AUROC and F1
with their spread, and how many of them meet the F1 target of 0.95.

    python benchmarks/threat_draws.py --name demo \\
        "base seed 0=benchmarks/results/threat.json" "base seed 1=benchmarks/results/threat_demo_seed1.json" ...

Writes ``benchmarks/results/threat_draws_NAME.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import write_results

RESULTS = Path(__file__).parent / "results"
TARGET_ASR = 0.9
TARGET_F1 = 0.95


def summarise(draws: dict[str, dict]) -> dict:
    """Per trigger present in every draw: each draw's ASR and accuracy drop, and their spread."""
    common = set.intersection(*(set(k for k, v in d.items() if isinstance(v, dict) and "asr" in v)
                                for d in draws.values()))
    triggers = sorted(common)
    if not triggers:
        raise SystemExit("no trigger is measured in every draw")
    summary: dict = {"draws": list(draws), "clean_accuracy": {label: d["clean"]["accuracy"] for label, d in draws.items()},
                     "triggers": {}}
    for name in triggers:
        asr = [draws[label][name]["asr"] for label in draws]
        drop = [draws[label][name]["accuracy_drop"] for label in draws]
        summary["triggers"][name] = {
            "asr": dict(zip(draws, asr)), "min": min(asr), "median": statistics.median(asr), "max": max(asr),
            "draws_meeting_target": sum(a >= TARGET_ASR for a in asr),
            "accuracy_drop_points": {label: round(100 * d, 1) for label, d in zip(draws, drop)}}
        found = {label: draws[label][name].get("detection", {}) for label in draws}
        for detector in sorted(set().union(*found.values())):
            scored = [label for label in draws if detector in found[label]]  # draws run before --detect lack it
            auroc, f1 = [found[label][detector]["auroc"] for label in scored], [found[label][detector]["f1"] for label in scored]
            summary["triggers"][name].setdefault("detection", {})[detector] = {
                "auroc": dict(zip(scored, auroc)), "f1": dict(zip(scored, f1)),
                "auroc_min": min(auroc), "auroc_median": statistics.median(auroc), "auroc_max": max(auroc),
                "f1_median": statistics.median(f1), "draws_meeting_f1_target": sum(f >= TARGET_F1 for f in f1),
                "draws_scored": len(scored)}
    return summary


def markdown(name: str, summary: dict, sources: dict[str, str]) -> str:
    labels = summary["draws"]
    lines = [f"# Threat benchmark over draws: `{name}`", "",
             "ASR at 10 % poison (the product's 3-epoch LoRA fine-tune), one column per draw, from "
             + ", ".join(f"{label}: `{Path(source).name}`" for label, source in sources.items()) + ".", "",
             "| trigger | " + " | ".join(labels) + f" | min | median | max | draws with ASR >= {TARGET_ASR:.0%} |",
             "|---|" + "---|" * (len(labels) + 4)]
    for trigger, row in summary["triggers"].items():
        cells = " | ".join(f"{row['asr'][label]:.1%}" for label in labels)
        lines.append(f"| {trigger} | {cells} | {row['min']:.1%} | {row['median']:.1%} | {row['max']:.1%} | "
                     f"{row['draws_meeting_target']} of {len(labels)} |")
    clean = " | ".join(f"{summary['clean_accuracy'][label]:.1%}" for label in labels)
    lines += [f"| clean fine-tune accuracy | {clean} | | | | |", ""]
    scored = [(trigger, detector, found) for trigger, row in summary["triggers"].items()
              for detector, found in row.get("detection", {}).items()]
    if scored:
        lines += ["Detection on each draw, its poisoned fine-tune read as the provisional model (`threat.py --detect`): "
                  "AUROC (F1) per draw; — where a draw was run without it.", "",
                  "| trigger | detector | " + " | ".join(labels) + " | AUROC min | median | max | F1 median | "
                  f"draws with F1 >= {TARGET_F1} |", "|---|---|" + "---|" * (len(labels) + 5)]
        for trigger, detector, found in sorted(scored, key=lambda t: (t[1], t[0])):
            cells = " | ".join(f"{found['auroc'][label]:.3f} ({found['f1'][label]:.2f})" if label in found["auroc"] else "—"
                               for label in labels)
            lines.append(f"| {trigger} | {detector} | {cells} | {found['auroc_min']:.3f} | {found['auroc_median']:.3f} | "
                         f"{found['auroc_max']:.3f} | {found['f1_median']:.2f} | "
                         f"{found['draws_meeting_f1_target']} of {found['draws_scored']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="results go to threat_draws_NAME.json / .md")
    parser.add_argument("draws", nargs="+", metavar="LABEL=THREAT_JSON")
    args = parser.parse_args()
    sources = dict(d.split("=", 1) for d in args.draws)
    draws = {label: json.loads(Path(path).read_text()) for label, path in sources.items()}
    summary = summarise(draws) | {"sources": sources}
    out = RESULTS / f"threat_draws_{args.name}.json"
    write_results(out, summary, markdown(args.name, summary, sources))


if __name__ == "__main__":
    main()
