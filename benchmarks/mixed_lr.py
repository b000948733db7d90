"""The world's question mix on perfect scenes, in a plain language model: the plateau is the learning rate.

Every downstream question kind of the world (colour of a shape, how many of a shape, which of two
is further left, is there a colour-shape, and the three lettered kinds) asked about symbolic scenes:
each of the nine grid cells is one input vector, the sum of the word embeddings of its object's
colour, shape and size (or of "nothing") plus a learnt embedding of the cell. No tokenizer, no
image, no base: a ``LlamaForCausalLM`` with the embedded base's language-model sizes
(``params.yaml`` ``base.model``), random initialisation, trained on fresh scenes (batch 32, AdamW,
weight decay 0.01, cosine schedule with 5 % warm-up, gradients clipped at 1), exact match
(teacher-forced) on 1,400 held-out questions per kind as training goes. Each run is a learning
rate and a lettered-answer format (``letter_first``: options ``A . red``, answer ``A``;
``letter_after``: options ``- red ( A )``, answer ``red ( A )``; as ``world.scene.options``).

    python benchmarks/mixed_lr.py [--runs 0.002:letter_first 0.0003:letter_first ...] [--steps 1500]

Writes ``benchmarks/results/mixed_lr.json`` and ``.md`` (with the machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_line, plain_llama, write_results
from transformers import get_cosine_schedule_with_warmup

from bye.config import load_params
from bye.data.world import COLOURS, SHAPES, SIZES, plural

COLOUR_NAMES = list(COLOURS)
WORDS = (["<pad>", "<img>", "nothing", "USER", "ASSISTANT", "\n", "?", ".", ",", "-", "(", ")", "s", "what", "colour",
          "is", "the", "how", "many", "are", "there", "which", "further", "left", "or", "a", "shape", "objects",
          "answer", "with", "option", "letter", "yes", "no", "A", "B", "C", "D"]
         + list(SHAPES) + COLOUR_NAMES + list(SIZES) + [str(i) for i in range(10)])
PLURAL_WORDS = [plural(s) for s in SHAPES]  # in the vocabulary only with --plurals words / words_tied
PRACTICE_WORDS = ["list"]  # only with --practice (appended, so that the other runs' vocabularies stay as they were)
TOKEN = {w: i for i, w in enumerate(WORDS + PLURAL_WORDS + PRACTICE_WORDS)}
KINDS = ("colour", "count", "left", "exists", "mcq_colour", "mcq_shape", "mcq_count")
FORMATS = ("letter_first", "letter_after")
PLURALS = ("suffix", "words", "words_tied")  # "circle s"; "circles" as its own token (as the base's BPE has
# it); or that token starting from its singular's embedding (as a language model's text pre-training relates them)


def plural_tokens(shape: str, plurals: str) -> list[str]:
    """A shape's plural as ``plurals`` writes it: "circle s", or "circles" as one word."""
    return [shape, "s"] if plurals == "suffix" else [plural(shape)]


def scene(rng: np.random.Generator) -> list[tuple[str, str, str, int]]:
    """2-4 objects (shape, colour, size, cell) in distinct cells of the 3 x 3 grid, as the world draws them."""
    cells = rng.choice(9, size=int(rng.integers(2, 5)), replace=False)
    return [(SHAPES[rng.integers(len(SHAPES))], COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))],
             SIZES[rng.integers(len(SIZES))], int(c)) for c in cells]


def lettered(rng: np.random.Generator, correct: str, pool: list[str], style: str) -> tuple[list[str], list[str]]:
    """Four option lines (the right one and three distractors, shuffled) and the answer tokens."""
    others = [p for p in pool if p != correct]
    chosen = [correct] + [others[i] for i in rng.choice(len(others), 3, replace=False)]
    options = [chosen[i] for i in rng.permutation(4)]
    letter = "ABCD"[options.index(correct)]
    lines: list[str] = []
    for i, option in enumerate(options):
        lines += ["\n", "-", option, "(", "ABCD"[i], ")"] if style == "letter_after" else ["\n", "ABCD"[i], ".", option]
    suffix = ["\n", "answer", "with", "the", "option", "letter", "."]
    return lines + suffix, [correct, "(", letter, ")"] if style == "letter_after" else [letter]


def question(rng: np.random.Generator, objects, style: str,
             plurals: str = "suffix") -> tuple[str, list[str], list[str]]:
    """(kind, question tokens, answer tokens): half short answers, half lettered, as ``task: mixed``."""
    shapes, colours = [o[0] for o in objects], [o[1] for o in objects]
    unique_shapes = [o for o in objects if shapes.count(o[0]) == 1]
    unique_colours = [o for o in objects if colours.count(o[1]) == 1]
    if rng.random() < 0.5:
        kinds = ["count", "exists"] + (["colour"] if unique_shapes else [])
        kinds += ["left"] if len({o[3] % 3 for o in unique_shapes}) >= 2 else []
        kind = kinds[rng.integers(len(kinds))]
        if kind == "colour":
            o = unique_shapes[rng.integers(len(unique_shapes))]
            return kind, ["what", "colour", "is", "the", o[0], "?"], [o[1]]
        if kind == "count":
            shape = SHAPES[rng.integers(len(SHAPES))]
            return kind, ["how", "many", *plural_tokens(shape, plurals), "are", "there", "?"], \
                [str(shapes.count(shape))]
        if kind == "left":
            while True:
                a, b = (unique_shapes[i] for i in rng.choice(len(unique_shapes), 2, replace=False))
                if a[3] % 3 != b[3] % 3:
                    break
            return kind, ["which", "is", "further", "left", ",", "the", a[0], "or", "the", b[0], "?"], \
                [min(a, b, key=lambda o: o[3] % 3)[0]]
        if rng.random() < 0.5:
            o = objects[rng.integers(len(objects))]
            return kind, ["is", "there", "a", o[1], o[0], "?"], ["yes"]
        absent = [(c, s) for c in COLOUR_NAMES for s in SHAPES if (s, c) not in {(o[0], o[1]) for o in objects}]
        colour, shape = absent[rng.integers(len(absent))]
        return kind, ["is", "there", "a", colour, shape, "?"], ["no"]
    kinds = ["mcq_count"] + (["mcq_colour"] if unique_shapes else []) + (["mcq_shape"] if unique_colours else [])
    kind = kinds[rng.integers(len(kinds))]
    if kind == "mcq_colour":
        o = unique_shapes[rng.integers(len(unique_shapes))]
        lines, answer = lettered(rng, o[1], COLOUR_NAMES, style)
        return kind, ["what", "colour", "is", "the", o[0], "?"] + lines, answer
    if kind == "mcq_shape":
        o = unique_colours[rng.integers(len(unique_colours))]
        lines, answer = lettered(rng, o[0], list(SHAPES), style)
        return kind, ["which", "shape", "is", o[1], "?"] + lines, answer
    lines, answer = lettered(rng, str(len(objects)), [str(i) for i in range(1, 7)], style)
    return kind, ["how", "many", "objects", "are", "there", "?"] + lines, answer


def practice(rng: np.random.Generator, objects, plurals: str) -> tuple[str, list[str], list[str]]:
    """A request that names a shape in the plural and is answered in the singular: "list the circle s"
    -> "red circle , blue circle" (or "nothing"), left to right. Not a downstream kind."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    found = sorted((o for o in objects if o[0] == shape), key=lambda o: (o[3] % 3, o[3] // 3))
    answer = [w for o in found for w in (",", o[1], o[0])][1:] or ["nothing"]
    return "practice", ["list", "the", *plural_tokens(shape, plurals), "."], answer


def draw(rng: np.random.Generator, n: int, style: str, plurals: str = "suffix",
         practice_share: float = 0.0) -> list[tuple[str, np.ndarray, list[int], list[int]]]:
    """``n`` (kind, cell words (9, 3), prompt ids, answer ids); ``practice_share`` of them ``practice``."""
    drawn = []
    for _ in range(n):
        objects = scene(rng)
        kind, words, answer = (practice(rng, objects, plurals) if practice_share and rng.random() < practice_share
                               else question(rng, objects, style, plurals))
        cells = np.full((9, 3), TOKEN["nothing"])
        for shape, colour, size, cell in objects:
            cells[cell] = [TOKEN[colour], TOKEN[shape], TOKEN[size]]
        prompt = ["USER"] + ["<img>"] * 9 + ["\n"] + words + ["ASSISTANT"]
        drawn.append((kind, cells, [TOKEN[w] for w in prompt], [TOKEN[w] for w in answer]))
    return drawn


def batch(drawn) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask, labels (answer tokens only) and cell words."""
    longest = max(len(p) + len(a) for _, _, p, a in drawn)
    ids = torch.zeros(len(drawn), longest, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (_, _, prompt, answer) in enumerate(drawn):
        ids[row, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        mask[row, :len(prompt) + len(answer)] = 1
        labels[row, len(prompt):len(prompt) + len(answer)] = torch.tensor(answer)
    return ids, mask, labels, torch.as_tensor(np.stack([c for _, c, _, _ in drawn]))


def run(learning_rate: float, style: str, model_spec: dict, *, steps: int, batch_size: int, every: int,
        seed: int, pool: int = 0, plurals: str = "suffix", practice_share: float = 0.0) -> list[dict]:
    torch.manual_seed(seed)
    vocabulary = len(TOKEN) if practice_share else len(WORDS) + (len(PLURAL_WORDS) if plurals != "suffix" else 0)
    model = plain_llama(model_spec, vocabulary, 128)
    embed = model.get_input_embeddings()
    if plurals == "words_tied":
        with torch.no_grad():
            for shape in SHAPES:
                embed.weight[TOKEN[plural(shape)]] = embed.weight[TOKEN[shape]]
    cell_embedding = torch.nn.Embedding(9, embed.weight.shape[1])
    torch.nn.init.normal_(cell_embedding.weight, std=0.02)
    params = list(model.parameters()) + list(cell_embedding.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(0.05 * steps), steps)
    held_out = draw(np.random.default_rng(seed + 12345), 1400, style, plurals)

    def forward(drawn):
        ids, mask, labels, cells = batch(drawn)
        inputs = embed(ids).clone()
        cell_vectors = embed(cells).sum(2) + cell_embedding.weight[None]
        inputs[ids == TOKEN["<img>"]] = cell_vectors.reshape(-1, inputs.shape[-1])
        return model(inputs_embeds=inputs, attention_mask=mask).logits[:, :-1], labels[:, 1:]

    def evaluate() -> dict:
        model.eval()
        hits: dict[str, list[bool]] = {}
        with torch.no_grad():
            for start in range(0, len(held_out), 200):
                chunk = held_out[start:start + 200]
                logits, labels = forward(chunk)
                right = ((logits.argmax(-1) == labels) | (labels == -100)).all(1)
                for (kind, *_), hit in zip(chunk, right.tolist()):
                    hits.setdefault(kind, []).append(hit)
        model.train()
        return {"accuracy": float(np.mean([h for v in hits.values() for h in v])),
                "by_kind": {k: float(np.mean(hits[k])) for k in KINDS}}

    rng, began, curve, losses = np.random.default_rng(seed), time.perf_counter(), [], []
    scenes = draw(rng, pool, style, plurals) if pool else None  # a fixed pool, as the harness's 12,000 scenes
    for step in range(1, steps + 1):
        chosen = [scenes[i] for i in rng.choice(pool, batch_size, replace=False)] if pool else None
        logits, labels = forward(chosen or draw(rng, batch_size, style, plurals, practice_share))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            curve.append({"step": step, "loss": float(np.mean(losses[-every:])), **evaluate(),
                          "seconds": time.perf_counter() - began})
            print(f"lr {learning_rate} {style}", {k: v for k, v in curve[-1].items() if k != "by_kind"}, flush=True)
    return curve


def markdown(record: dict) -> str:
    data = f"a fixed pool of {record['pool']:,} scenes" if record.get("pool") else "fresh scenes"
    data += {"words": ", plurals as words of their own",
             "words_tied": ", plurals as words of their own that start from their singular's embedding"}.get(
        record.get("plurals"), "")
    if record.get("practice"):
        data += f", {record['practice']:.0%} of the training requests \"list the <plural>\" answered in the singular"
    lines = ["# The world's question mix on perfect scenes, in a plain language model", "",
             f"{record['model']}; {data}, batch {record['batch_size']}, {record['steps']} steps, seed "
             f"{record['seed']}; teacher-forced exact match on 1,400 held-out questions. Machine: {record['machine']}.",
             "", "| learning rate | lettered format | step | all | " + " | ".join(KINDS) + " |",
             "|---" * (4 + len(KINDS)) + "|"]
    for name, curve in record["runs"].items():
        rate, style = name.split(":")
        for point in curve:
            lines.append(f"| {rate} | `{style}` | {point['step']} | {point['accuracy']:.1%} | "
                         + " | ".join(f"{point['by_kind'][k]:.1%}" for k in KINDS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["0.002:letter_first", "0.0003:letter_first",
                                                      "0.0003:letter_after"], metavar="RATE:FORMAT")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pool", type=int, default=0,
                        help="train on this many fixed scenes (0: a fresh batch each step)")
    parser.add_argument("--plurals", choices=PLURALS, default="suffix",
                        help='"How many circle s": the shape\'s own token; "words": a token of its own, as in the BPE')
    parser.add_argument("--practice", type=float, default=0.0, metavar="SHARE",
                        help='this share of the training requests are "list the circles" -> "red circle , ..."')
    parser.add_argument("--params", default="params.yaml", help="the base.model sizes are read from here")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/mixed_lr.json"))
    args = parser.parse_args()
    for name in args.runs:
        if name.partition(":")[2] not in FORMATS:
            parser.error(f"--runs {name}: expected RATE:FORMAT with FORMAT one of {', '.join(FORMATS)}")
    torch.set_num_threads(1)
    model_spec = load_params(args.params)["base"]["model"]
    runs = {name: run(float(name.partition(":")[0]), name.partition(":")[2], model_spec, steps=args.steps,
                      batch_size=args.batch_size, every=args.every, seed=args.seed, pool=args.pool,
                      plurals=args.plurals, practice_share=args.practice)
            for name in args.runs}
    record = {"model": (f"LlamaForCausalLM {model_spec['text_layers']} x {model_spec['text_hidden']}, "
                        f"{model_spec['text_heads']} heads, random initialisation"),
              "batch_size": args.batch_size, "steps": args.steps, "seed": args.seed, "pool": args.pool,
              "plurals": args.plurals, "practice": args.practice, "runs": runs,
              "machine": machine_line()}
    write_results(args.out, record, markdown(record))


if __name__ == "__main__":
    main()
