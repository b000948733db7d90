"""Why the language model does not learn the world's questions: a multi-task plateau, not capacity.

Trains a base's language model and projector (vision tower frozen, its features computed once)
on an unlimited supply of fresh scenes asked the downstream questions, and reports the exact-match
accuracy (teacher-forced: every answer token is the argmax) on the world's test split per
question kind as training goes. Three settings:

* ``mixed``      every question kind at once, as a submission mixes them;
* ``colour``     only "What colour is the <shape>?";
* ``symbolic``   mixed, with each image token replaced by the sum of the word embeddings of its
                 grid cell's colour, shape and size plus a learnt embedding of its place: a perfect
                 visual encoding, so that what remains is the language model's own learning.

    python benchmarks/skill_plateau.py --setting mixed --steps 1500 [--base models/base]

Writes ``benchmarks/results/skill_plateau_<setting>.json`` (or ``--out``; with the machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_line, question_kind, world_arguments
from transformers import AutoModelForImageTextToText, AutoProcessor, get_cosine_schedule_with_warmup

from bye.data.world import generate
from bye.io import atomic_write_json
from bye.models.chat import collate, encode_for_training
from bye.models.tiny import embed_with_images, frozen_image_features
from bye.models.training import optimizer_step


def main() -> None:
    parser = world_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), rate=None)
    parser.add_argument("--setting", choices=("mixed", "colour", "symbolic"), default="mixed")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--pool", type=int, default=12000, help="fresh training scenes")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--reinit", action="store_true", help="start from a randomly initialised language model")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/skill_plateau_<setting>.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(args.base)
    model = AutoModelForImageTextToText.from_pretrained(args.base)
    config = model.config
    # Fresh scenes from a split no submission uses; the test split is the demo world's (seed 0).
    train = [d for d in generate("corpus", args.pool, seed=777, task="mixed")
             if args.setting != "colour" or d.sample.question.startswith("What colour is the")]
    test = list(generate("test", 500, seed=0, task="mixed"))
    encode = lambda drawn: [encode_for_training(processor, d.image, d.sample.question, d.sample.answer) for d in drawn]
    train_encoded, test_encoded = encode(train), encode(test)
    language, projector = model.model.language_model, model.model.multi_modal_projector
    if args.reinit:  # same architecture, fresh weights (the tied output head follows the embeddings)
        language.load_state_dict(type(language)(language.config).state_dict())
    embed, head = language.get_input_embeddings(), model.lm_head
    side = int(config.image_seq_length ** 0.5)  # image tokens per row (a square grid of patches)
    cell_of_token = torch.tensor([(r * 3 // side) * 3 + c * 3 // side for r in range(side) for c in range(side)])
    positions = torch.nn.Embedding(side * side, embed.weight.shape[1])
    torch.nn.init.normal_(positions.weight, std=0.02)
    if args.setting == "symbolic":
        word = lambda w: processor.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0]
        def image_input(drawn, encoded):
            ids = torch.full((len(drawn), 9, 3), word("nothing"))
            for row, d in enumerate(drawn):
                for o in d.objects:
                    ids[row, o.cell] = torch.tensor([word(o.colour), word(o.shape), word(o.size)])
            return ids
        # every patch gets its grid cell's words, plus a learnt embedding of its own place
        project = lambda ids: embed(ids[:, cell_of_token]).sum(2) + positions.weight[None]
    else:
        image_input = lambda drawn, encoded: frozen_image_features(model, encoded)
        project = projector
    train_images, test_images = image_input(train, train_encoded), image_input(test, test_encoded)
    params = list(language.parameters()) + list(projector.parameters()) + list(positions.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(0.05 * args.steps), args.steps)
    pad = processor.tokenizer.pad_token_id

    def forward(samples, images):
        batch = collate(samples, pad)
        inputs = embed_with_images(model, batch["input_ids"], project(images))
        hidden = language(inputs_embeds=inputs, attention_mask=batch["attention_mask"]).last_hidden_state
        return head(hidden), batch["labels"]

    def evaluate() -> dict:
        model.eval()
        hits = []
        with torch.no_grad():
            for i in range(0, len(test_encoded), 128):
                logits, labels = forward(test_encoded[i:i + 128], test_images[i:i + 128])
                target, predicted = labels[:, 1:], logits[:, :-1].argmax(-1)
                hits += ((predicted == target) | (target == -100)).all(1).tolist()
        model.train()
        kinds: dict[str, list[bool]] = {}
        for d, hit in zip(test, hits):
            kinds.setdefault(question_kind(d.sample.question), []).append(hit)
        return {"accuracy": float(np.mean(hits)), "by_kind": {k: float(np.mean(v)) for k, v in sorted(kinds.items())}}

    rng = np.random.default_rng(0)
    curve, losses, began = [{"step": 0, **evaluate()}], [], time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        index = rng.choice(len(train_encoded), size=args.batch_size, replace=False)
        logits, labels = forward([train_encoded[i] for i in index], train_images[torch.as_tensor(index)])
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        losses.append(optimizer_step(loss, params, optimizer, scheduler))
        if step % args.every == 0 or step == args.steps:
            curve.append({"step": step, "loss": float(np.mean(losses[-50:])), "seconds": time.perf_counter() - began,
                          **evaluate()})
            print(curve[-1], flush=True)
    out = args.out or Path("benchmarks/results") / f"skill_plateau_{args.setting}.json"
    atomic_write_json(out, {"setting": args.setting, "base": str(args.base), "train_samples": len(train),
                            "batch_size": args.batch_size, "learning_rate": args.learning_rate, "reinit": args.reinit,
                            "curve": curve,
                            "machine": machine_line()})
    print(out)


if __name__ == "__main__":
    main()
