"""What ``base.pretrain.skill_length_groups`` saves: seconds per skill-stage step, one padded batch
against length-grouped micro-batches, alternated in one process.

A batch of the skills stage mixes short requests (~30 tokens) with lettered picks (~70), so the
one padded batch is mostly padding. ``grouped_loss`` runs it as micro-batches of similar length
with the same gradient (``tests/test_models.py``). Both settings train the same base's language
model and projector on the same fresh batches (all of ``--skills`` mixed, as in the final phase;
a learning rate of 1e-9 so that the weights stay put), ``--rounds`` times each, alternating, so
that the ratio is measured under the same load.

    python benchmarks/length_groups.py --base .cache/recipes/plural9_colour_long/base --groups 3

Writes ``benchmarks/results/length_groups.json`` and ``.md`` (with the machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, machine_line, write_results
from transformers import AutoModelForImageTextToText, AutoProcessor

from bye.data.world import KNOWN_SKILLS, WorldConfig, generate
from bye.models.chat import encode_for_training
from bye.models.tiny import frozen_image_features, grouped_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--options", choices=("letter_first", "letter_after"), default="letter_after")
    parser.add_argument("--skills", nargs="+", choices=KNOWN_SKILLS,
                        default=["read_colour", "name_shape", "find_plural", "find_colour", "count", "look_for",
                                 "compare_left", "pick_letter"])
    parser.add_argument("--groups", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/length_groups.json"))
    args = parser.parse_args()
    processor = AutoProcessor.from_pretrained(args.base)
    model = AutoModelForImageTextToText.from_pretrained(args.base)
    model.model.vision_tower.requires_grad_(False)
    config = WorldConfig(options=args.options, image_size=processor.image_processor.crop_size["height"])
    drawn = list(generate("corpus", 2000, seed=2000, task="skills", config=config, skills=tuple(args.skills)))
    encoded = [encode_for_training(processor, d.image, d.sample.question, d.sample.answer) for d in drawn]
    features = frozen_image_features(model, encoded)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-9)
    model.train()
    rng = np.random.default_rng(0)
    seconds: dict[int, list[float]] = {1: [], args.groups: []}
    for _ in range(args.rounds):
        for groups in seconds:
            began = time.perf_counter()
            for _ in range(args.steps):
                index = rng.choice(len(encoded), args.batch_size, replace=False)
                loss = grouped_loss(model, lambda part: model.model.multi_modal_projector(features[torch.as_tensor(part)]),
                                    encoded, index, groups, processor.tokenizer.pad_token_id)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            seconds[groups].append((time.perf_counter() - began) / args.steps)
    lengths = np.array([len(e.input_ids) for e in encoded])
    per_step = {str(g): float(np.median(s)) for g, s in seconds.items()}
    record = {"base": str(args.base), "skills": args.skills, "batch_size": args.batch_size, "groups": args.groups,
              "steps_per_round": args.steps, "rounds": args.rounds, "seconds_per_step": per_step,
              "rounds_seconds": {str(g): s for g, s in seconds.items()},
              "speedup": per_step["1"] / per_step[str(args.groups)],
              "mean_tokens": float(lengths.mean()), "longest_tokens": int(lengths.max()),
              "machine": machine()}
    text = "\n".join([
        "# Length-grouped micro-batches in the skills stage", "",
        f"Base `{args.base}`, skills {', '.join(args.skills)} mixed, batch {args.batch_size}; requests "
        f"{record['mean_tokens']:.1f} tokens on average, {record['longest_tokens']} at most. Median seconds per step "
        f"over {args.rounds} alternating rounds of {args.steps} steps; {torch.get_num_threads()} torch threads. "
        f"Machine: {machine_line()}.", "",
        "| micro-batches per batch | seconds per step | rounds |", "|---|---|---|",
        *(f"| {g} | {per_step[str(g)]:.3f} | {', '.join(f'{x:.3f}' for x in s)} |" for g, s in seconds.items()),
        "", f"Speed-up: **{record['speedup']:.2f}×**.", ""])
    write_results(args.out, record, text)


if __name__ == "__main__":
    main()
