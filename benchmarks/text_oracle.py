"""Is the image the bottleneck? The world's questions with each scene's description written into the prompt.

Regenerates the demo world's train and test splits (same seed, same scenes and questions) and puts
the scene's caption (``bye.data.world.describe``: every object's cell, size, colour and shape)
before each question, keeping the image. A LoRA fine-tune of the base with the product's
``finetune`` params, then the product's evaluation. If the language model could look an object up
in its context, the answers would be a copy away (the colour of the square is written next to
"square"); accuracy near the image world's says the language model, not the vision side, is what
the fine-tune cannot teach.

    python benchmarks/text_oracle.py [--world data/world] [--base models/base]

Writes ``benchmarks/results/text_oracle.json`` (with the machine); adapters and manifests go to a
temporary folder.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine_line, world_arguments

from bye.config import load_params
from bye.data.submission import Sample, write_manifest
from bye.data.world import describe, generate
from bye.io import atomic_write_json
from bye.models.evaluate import run_evaluation
from bye.models.finetune import finetune
from bye.settings import eval_settings, lora_settings, world_settings

RESULTS = Path(__file__).parent / "results"


def described_split(split: str, n: int, *, seed: int, task: str, config) -> list[Sample]:
    """The world's split with "Scene: <description>" between the image and the question."""
    samples = []
    for drawn in generate(split, n, seed=seed, task=task, config=config):
        scene = describe(drawn.objects).replace("\n", " ")
        s = drawn.sample
        samples.append(Sample.single_turn(s.id, s.image, f"Scene: {scene}\n{s.question}", s.answer))
    return samples


def main() -> None:
    args = world_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), rate=None).parse_args()
    params = load_params(args.params)
    world = world_settings(params)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for split in ("train", "test"):
            write_manifest(described_split(split, world[f"n_{split}"], seed=world["seed"], task=world["task"],
                                           config=world["config"]), tmp / f"{split}.json")
        summary = finetune(tmp / "train.json", args.world / "images", args.base, tmp / "adapter", lora_settings(params),
                           progress=False)
        metrics = run_evaluation(tmp / "test.json", args.world / "images", args.base, tmp / "adapter",
                                 eval_settings(params), progress=False)
    record = {"accuracy": metrics["accuracy"], "by_family": metrics["by_family"], "epoch_losses": summary["epoch_losses"],
              "base": str(args.base),
              "machine": machine_line()}
    atomic_write_json(RESULTS / "text_oracle.json", record)
    print(record)


if __name__ == "__main__":
    main()
