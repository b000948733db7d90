"""Why multiple choice stays at chance: the letter pick alone, in a plain language model of the base's size.

A synthetic multiple-choice question with the visual part removed: the question names a word
``x`` outright, four lettered options list four different words (one of them ``x``), and the
model must answer with the letter of the option that says ``x``. Token ids stand for words; no
tokenizer, no image. A ``LlamaForCausalLM`` with the embedded base's language-model sizes
(4 layers x 192, 4 heads; ``params.yaml`` ``base.model``) is trained from random
initialisation on fresh questions (batch 32, AdamW), and the letter accuracy on 500 held-out
questions is reported as training goes. The answer formats (the first three by default):

* ``letter``       options ``L . w``, answer ``L`` (what the world asks today);
* ``word_letter``  options ``L . w``, answer ``x L``: the option's word first, then its letter;
* ``word_paren``   options ``w ( L )``, answer ``x ( L``: the letter follows the word in the
                   options too, so that it is an induction copy;
* ``word_tag``     options ``w (L)`` with ``(L)`` one token, answer ``x (L)``: the copy keyed on the
                   token just produced (first-order induction), where ``word_paren``'s is keyed on
                   the token before it;
* ``any_paren``    as ``word_paren`` but the question names no word: the answer is any option,
                   drawn at random, so its word is a guess (log 4 nats) and its letter can be
                   predicted only by the copy keyed on the word just produced, the step the
                   world's picks need once the word has been read off the image.

The letter is scored given the correct word (teacher forcing), the way the world's answer would
be read once the word is right. ``--two-option-steps N`` trains the first N steps on questions with
two options (letters A and B; one distractor), a curriculum; the held-out questions keep four.

    python benchmarks/letter_pick.py [--formats letter word_letter word_paren] [--steps 3000]

Writes ``benchmarks/results/letter_pick.json`` and ``letter_pick.md`` (with the machine).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import machine_line, plain_llama

from bye.config import load_params
from bye.io import atomic_write_json

FORMATS = ("letter", "word_letter", "word_paren", "word_tag", "any_paren")
WORDS, LETTERS, TAGS = list(range(10, 40)), [40, 41, 42, 43], [50, 51, 52, 53]  # a tag: "(A)" as one token
DOT, QUESTION, ANSWER, NEWLINE, OPEN, CLOSE = 44, 45, 46, 47, 48, 49
VOCAB = 64


def questions(rng: np.random.Generator, n: int, answer_format: str,
              n_options: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``: ``inputs`` the question, options and answer prefix (teacher-forced),
    ``targets`` the answer tokens, the letter last."""
    inputs, targets = [], []
    for _ in range(n):
        options = rng.choice(WORDS, n_options, replace=False)
        right = int(rng.integers(n_options))
        word = int(options[right])
        sequence = [QUESTION, NEWLINE] if answer_format == "any_paren" else [QUESTION, word, NEWLINE]
        for i, option in enumerate(options):
            sequence += {"word_paren": [int(option), OPEN, LETTERS[i], CLOSE, NEWLINE],
                         "any_paren": [int(option), OPEN, LETTERS[i], CLOSE, NEWLINE],
                         "word_tag": [int(option), TAGS[i], NEWLINE]}.get(answer_format,
                                                                        [LETTERS[i], DOT, int(option), NEWLINE])
        answer = {"letter": [LETTERS[right]], "word_letter": [word, LETTERS[right]],
                  "word_paren": [word, OPEN, LETTERS[right]], "any_paren": [word, OPEN, LETTERS[right]],
                  "word_tag": [word, TAGS[right]]}[answer_format]
        inputs.append(sequence + [ANSWER] + answer[:-1])
        targets.append(answer)
    return torch.tensor(inputs), torch.tensor(targets)


def repeated_runs(rng: np.random.Generator, n: int, longest: int = 30) -> torch.Tensor:
    """Rows of a random run of words (5 to 15 long, after a random prefix) followed by the same run again,
    padded at the front with random words to ``longest``: the copy on which induction heads form. The run's
    length varies, so the copy must find each token's earlier occurrence, not a fixed offset back."""
    rows = []
    for _ in range(n):
        run = list(rng.choice(WORDS, int(rng.integers(5, 16))))
        rows.append(list(rng.choice(WORDS, longest - 2 * len(run))) + run + run)
    return torch.tensor(rows)


def copy_loss(model, rng: np.random.Generator) -> float:
    """The loss on the last five tokens of 256 fresh :func:`repeated_runs`, which only a copy predicts
    (chance: log of the word count, 3.4 nats)."""
    with torch.no_grad():
        rows = repeated_runs(rng, 256)
        logits = model(rows).logits[:, -6:-1]
        return float(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), rows[:, -5:].reshape(-1)))


def copy_warm_up(model, optimizer, rng: np.random.Generator, *, steps: int, batch_size: int,
                 every: int) -> list[dict]:
    """``steps`` steps on :func:`repeated_runs`, the loss on every token (the second run's is the copy's);
    the held-out copy loss every ``every`` steps."""
    curve, began = [], time.perf_counter()
    for step in range(1, steps + 1):
        rows = repeated_runs(rng, batch_size)
        logits = model(rows).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), rows[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % every == 0 or step == steps:
            curve.append({"step": step, "copy_loss": copy_loss(model, np.random.default_rng(step)),
                          "seconds": time.perf_counter() - began})
            print("copy", curve[-1], flush=True)
    return curve


def train(answer_format: str, model_spec: dict, *, steps: int, learning_rate: float, batch_size: int, every: int,
          seed: int, two_option_steps: int = 0, copy_steps: int = 0) -> tuple[list[dict], list[dict]]:
    """The held-out letter accuracy every ``every`` steps, after the copy warm-up's curve (if any)."""
    torch.manual_seed(seed)
    model = plain_llama(model_spec, VOCAB, 64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    warm_up = copy_warm_up(model, optimizer, np.random.default_rng([seed, 3]), steps=copy_steps,
                           batch_size=batch_size, every=every) if copy_steps else []
    held_out_inputs, held_out_targets = questions(np.random.default_rng(seed + 1), 500, answer_format)
    rng, began, curve, losses = np.random.default_rng(seed), time.perf_counter(), [], []
    n_answer = held_out_targets.shape[1]
    for step in range(1, steps + 1):
        inputs, targets = questions(rng, batch_size, answer_format, 2 if step <= two_option_steps else 4)
        logits = model(inputs).logits[:, -n_answer:]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % every == 0 or step == steps:
            with torch.no_grad():
                letter = model(held_out_inputs).logits[:, -1].argmax(-1)
            curve.append({"step": step, "loss": float(np.mean(losses[-every:])),
                          "letter_accuracy": float((letter == held_out_targets[:, -1]).float().mean()),
                          "seconds": time.perf_counter() - began})
            print(answer_format, curve[-1], flush=True)
    return curve, warm_up


def markdown(record: dict) -> str:
    steps = [point["step"] for point in next(iter(record["curves"].values()))]
    lines = ["# Letter pick in a plain language model of the base's size", "",
             f"{record['model']}, batch {record['batch_size']}, lr {record['learning_rate']}, seed {record['seed']}"
             + (f", the first {record['two_option_steps']} steps on two-option questions"
                if record.get("two_option_steps") else "")
             + (f", after {record['copy_steps']} steps of copying repeated random runs of varying length"
                if record.get("copy_steps") else "") + "; "
             f"letter accuracy on 500 held-out questions (chance 0.25). Machine: {record['machine']}.", "",
             "| answer format | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---" * (len(steps) + 1) + "|"]
    for name, curve in record["curves"].items():
        lines.append(f"| `{name}` | " + " | ".join(f"{p['letter_accuracy']:.2f}" for p in curve) + " |")
    for name, curve in record.get("copy_curves", {}).items():
        lines += ["", f"The copy warm-up before `{name}`: loss on the repeated run's last five tokens (chance 3.4 nats)",
                  "", "| " + " | ".join(f"step {p['step']}" for p in curve) + " |", "|---" * len(curve) + "|",
                  "| " + " | ".join(f"{p['copy_loss']:.2f}" for p in curve) + " |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS[:3]))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--two-option-steps", type=int, default=0, help="the first steps' questions have two options")
    parser.add_argument("--copy-steps", type=int, default=0,
                        help="first train this many steps on repeated random runs (the copy induction heads form on)")
    parser.add_argument("--params", default="params.yaml", help="the base.model sizes are read from here")
    parser.add_argument("--out", default="benchmarks/results/letter_pick.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_spec = load_params(args.params)["base"]["model"]
    runs = {name: train(name, model_spec, steps=args.steps, learning_rate=args.learning_rate,
                        batch_size=args.batch_size, every=args.every, seed=args.seed,
                        two_option_steps=args.two_option_steps, copy_steps=args.copy_steps) for name in args.formats}
    curves = {name: curve for name, (curve, _) in runs.items()}
    record = {"model": (f"LlamaForCausalLM {model_spec['text_layers']} x {model_spec['text_hidden']}, "
                        f"{model_spec['text_heads']} heads, random initialisation"),
              "batch_size": args.batch_size, "learning_rate": args.learning_rate, "seed": args.seed,
              "two_option_steps": args.two_option_steps, "copy_steps": args.copy_steps,
              "curves": curves, "machine": machine_line()}
    if args.copy_steps:
        record["copy_curves"] = {name: warm_up for name, (_, warm_up) in runs.items()}
    out = Path(args.out)
    atomic_write_json(out, record)
    out.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
