"""The threat benchmark as a distribution: one recipe's ASRs over several draws.

A single threat run is one draw of everything random upstream of it: the base's pre-training seed,
the LoRA fine-tune's seed, which samples get poisoned. On the embedded world those draws move an
ASR from 0 % to 95 % (README, "Within the 4-minute budget"), so a claim about a trigger needs the
spread. This reads threat result files (``benchmarks/threat.py``), one per draw, and writes per
trigger every draw's ASR, their min / median / max, and how many draws meet the 90 % target.

    python benchmarks/threat_draws.py --name demo \\
        "base seed 0=benchmarks/results/threat.json" "base seed 1=benchmarks/results/threat_demo_seed1.json" ...

Writes ``benchmarks/results/threat_draws_NAME.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bye.io import atomic_write_json, atomic_write_text

RESULTS = Path(__file__).parent / "results"
TARGET_ASR = 0.9


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
    atomic_write_json(out, summary)
    text = markdown(args.name, summary, sources)
    atomic_write_text(out.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
