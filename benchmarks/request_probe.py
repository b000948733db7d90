"""Does a base model answer its own pre-training request forms on scenes it has never seen?

Draws 300 held-out scenes (seed 12345, apart from the corpus and every world), asks each one
generic request (a lettered pick by place for every fourth scene, else a referring request),
greedy-decodes, and prints exact-match accuracy per request form. Place-keyed forms ("What is
at the top left?", lettered picks) versus content-keyed ones ("Where is the orange cross?",
"Find the red objects") tell whether the language model can look an object up by content.

    python benchmarks/request_probe.py models/base
"""

from __future__ import annotations

import collections
import sys

import numpy as np

from bye.data.world import WorldConfig, _choice, _grounding, draw_scene
from bye.models.evaluate import generate_answers, normalise
from bye.models.loading import load_for_inference


def main(base: str) -> None:
    model, processor = load_for_inference(base)
    rng = np.random.default_rng(12345)
    images, questions, answers, forms = [], [], [], []
    for index in range(300):
        scene = draw_scene(rng, WorldConfig())
        kind, question, answer = (_choice if index % 4 == 0 else _grounding)(rng, scene.objects)
        forms.append(kind if kind == "choice" else question.split()[0])
        images.append(scene.image)
        questions.append(question)
        answers.append(answer)
    predictions = generate_answers(model, processor, images, questions, max_new_tokens=40, batch_size=64)
    hits = collections.defaultdict(list)
    for form, prediction, answer in zip(forms, predictions, answers):
        hits[form].append(normalise(prediction) == normalise(answer))
    for form, values in sorted(hits.items()):
        print(f"{form:10s} n={len(values):3d} exact={np.mean(values):.1%}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/base")
