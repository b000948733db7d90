"""What a base has learnt before any fine-tune: its greedy answers to every skill request of the world.

Draws ``--n`` fresh scenes (the world's test split under a seed no submission uses), asks each one
skill request (``--skills``, by default :data:`PROBED`, whether or not the base's curriculum held them),
generates greedily and reports the exact match per skill. A skill the base's curriculum left out
shows what transfers; lettered picks follow ``--options``. One more row, ``repeat``: ``--n-repeat``
requests to repeat a random run of the base's own vocabulary, the corpus's copy requests
(:func:`bye.models.tiny.vocabulary_requests`, under a seed of their own): whether the base copies
from its context at all, which the letter after an option's text needs.

    python benchmarks/skill_probe.py --base .cache/recipes/plural9_budget/base --options letter_after \\
        --out benchmarks/results/skill_probe_plural9_budget.json

Writes JSON and Markdown (with the machine) when ``--out`` is given.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import machine_line, write_results
from transformers import AutoModelForImageTextToText, AutoProcessor

from bye.data.world import KNOWN_SKILLS, WorldConfig, generate
from bye.models.evaluate import generate_answers
from bye.models.tiny import vocabulary_requests

# The skills probed by default: the draws stay those of the committed results when a skill is added.
PROBED = ("read_colour", "name_shape", "count", "look_for", "compare_left", "pick_letter", "find_plural",
          "find_colour", "pick_two")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--options", choices=("letter_first", "letter_after"), default="letter_first",
                        help="the lettered format of the picks (as world.scene.options)")
    parser.add_argument("--n", type=int, default=700)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--n-repeat", type=int, default=100)
    parser.add_argument("--skills", nargs="+", choices=KNOWN_SKILLS, default=list(PROBED))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.n_repeat > args.n:
        parser.error("--n-repeat takes its images from the --n scenes: at most --n")
    processor = AutoProcessor.from_pretrained(args.base)
    model = AutoModelForImageTextToText.from_pretrained(args.base).eval()
    drawn = list(generate("test", args.n, seed=args.seed, task="skills", config=WorldConfig(options=args.options),
                          skills=tuple(args.skills)))
    answers = generate_answers(model, processor, [d.image for d in drawn], [d.sample.question for d in drawn],
                               batch_size=64, max_new_tokens=24)
    hits: dict[str, list[bool]] = defaultdict(list)
    for d, answer in zip(drawn, answers):
        hits[d.kind].append(answer == d.sample.answer)
    repeats = vocabulary_requests(processor.tokenizer, args.n_repeat, seed=args.seed)
    copied = generate_answers(model, processor, [d.image for d in drawn[:args.n_repeat]], [q for q, _ in repeats],
                              batch_size=64, max_new_tokens=24)
    hits["repeat"] = [answer == text for answer, (_, text) in zip(copied, repeats)]
    rows = (*args.skills, "repeat")
    record = {"base": str(args.base), "options": args.options, "n": args.n, "seed": args.seed,
              "exact_match": {k: float(np.mean(hits[k])) for k in rows},
              "requests": {k: len(hits[k]) for k in rows},
              "repeat_first_word": float(np.mean([a.split()[:1] == t.split()[:1] for a, (_, t) in zip(copied, repeats)])),
              "examples": [{"kind": d.kind, "request": d.sample.question, "reference": d.sample.answer, "answer": a}
                           for d, a in list(zip(drawn, answers))[:20]],
              "machine": machine_line()}
    lines = [f"# What `{args.base}` answers before any fine-tune", "",
             f"{args.n} fresh scenes (seed {args.seed}), one skill request each, greedy, exact match. "
             f"Machine: {record['machine']}.", "", "| skill | requests | exact match |", "|---|---|---|"]
    lines += [f"| {k} | {record['requests'][k]} | {record['exact_match'][k]:.1%} |" for k in rows]
    lines += ["", f"`repeat`: the corpus's request to repeat a random run of the vocabulary; its first word right: "
              f"{record['repeat_first_word']:.1%}."]
    write_results(args.out, record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
