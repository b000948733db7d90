"""Does a fine-tuned model copy an option's letter? Teacher-forced on the world's lettered questions.

For every multiple-choice test question answered "text (L)" (``world.scene.options=letter_after``),
the prompt plus the right option's text and " (" go in; reported per question kind: how often the
next token is the right letter, and where that last position's attention goes, per layer (the
image tokens, the four option letters). A copy circuit would put its attention on the letter it
copies.

    python benchmarks/base_recipe.py --name skills9 ... --keep DIR
    python benchmarks/letter_copy.py --base DIR/base --adapter DIR/adapter --world DIR/world --name skills9

Writes ``benchmarks/results/letter_copy_NAME.json`` (with the machine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import machine_line, question_kind

from bye.data.submission import read_manifest
from bye.io import atomic_write_json
from bye.models.chat import collate, encode_for_training, open_rgb
from bye.models.evaluate import letter_after_text, options_of
from bye.models.loading import load_for_inference, to_model

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True, help="a letter_after world (test.json, images/)")
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    model, processor = load_for_inference(args.base, args.adapter, attn_implementation="eager")
    tokenizer = processor.tokenizer
    letters = {tokenizer.convert_tokens_to_ids(letter) for letter in "ABCD"}
    kinds: dict[str, dict[str, list]] = {}
    for sample in read_manifest(args.world / "test.json"):
        answer = letter_after_text(sample.answer)
        if not options_of(sample.question) or answer is None:
            continue
        text, letter = answer
        encoded = encode_for_training(processor, open_rgb(args.world / "images" / sample.image), sample.question,
                                      f"{text} (")
        batch = collate([encoded], tokenizer.pad_token_id)
        ids = batch["input_ids"][0]
        end = len(ids) - int(ids[-1] == tokenizer.eos_token_id)  # the partial answer, without its end token
        inputs = to_model(model, {"input_ids": batch["input_ids"][:, :end], "attention_mask": batch["attention_mask"][:, :end],
                                  "pixel_values": encoded.vision["pixel_values"]})
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
        image = (ids[:end] == model.config.image_token_index).numpy()
        option_letters = np.array([int(t) in letters for t in ids[:end]]) & (np.arange(end) < encoded.prompt_length)
        rows = [a[0, :, -1].float().mean(0).cpu().numpy() for a in out.attentions]
        record = kinds.setdefault(question_kind(sample.question), {"hit": [], "image": [], "letters": []})
        record["hit"].append(tokenizer.decode([int(out.logits[0, -1].argmax())]).strip() == letter)
        record["image"].append([float(r[image].sum()) for r in rows])
        record["letters"].append([float(r[option_letters].sum()) for r in rows])
    result = {"name": args.name, "base": str(args.base), "adapter": str(args.adapter), "machine": machine_line(),
              "by_kind": {kind: {"n": len(r["hit"]), "letter_given_the_text": round(float(np.mean(r["hit"])), 4),
                                 "attention_on_image_by_layer": np.round(np.mean(r["image"], 0), 3).tolist(),
                                 "attention_on_option_letters_by_layer": np.round(np.mean(r["letters"], 0), 3).tolist()}
                          for kind, r in sorted(kinds.items())}}
    atomic_write_json(RESULTS / f"letter_copy_{args.name}.json", result)
    for kind, r in result["by_kind"].items():
        print(kind, r)


if __name__ == "__main__":
    main()
