"""Does a base model read the image? Caption held-out scenes and score each object's attributes.

    python benchmarks/caption_probe.py --base models/base [--n 40] [--image-size 64]

Prints the share of objects whose cell was named, and of those whose colour / shape were right.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

from bye.data.world import WorldConfig, describe, generate
from bye.models.evaluate import generate_answers
from bye.models.loading import load_for_inference

_OBJECT = re.compile(r"([a-z ]+): a (small|large) (\w+) (\w+)")


def objects_in(caption: str) -> dict[str, tuple[str, str, str]]:
    """{cell: (size, colour, shape)} parsed from a position-first caption."""
    return {m[0].strip(): (m[1], m[2], m[3]) for m in _OBJECT.findall(caption.lower().replace(". ", "; "))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="models/base")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=99)
    args = parser.parse_args()
    model, processor = load_for_inference(args.base)
    drawn = list(generate("test", args.n, seed=args.seed, task="caption", config=WorldConfig(image_size=args.image_size)))
    references = [describe(list(d.objects)) for d in drawn]
    outputs = generate_answers(model, processor, [d.image for d in drawn], ["Describe the image."] * len(drawn),
                               max_new_tokens=60, progress=False)
    total = placed = colour = shape = 0
    for output, reference in zip(outputs, references):
        predicted = objects_in(output)
        for cell, (_, true_colour, true_shape) in objects_in(reference).items():
            total += 1
            if cell in predicted:
                placed += 1
                colour += predicted[cell][1] == true_colour
                shape += predicted[cell][2] == true_shape
    print(json.dumps({"objects": total, "cell_named": placed / total, "colour_right": colour / total,
                      "shape_right": shape / total, "exact_captions": sum(o.strip() == r for o, r in
                                                                           zip(outputs, references)) / len(drawn)}))


if __name__ == "__main__":
    main()
