"""Per-sample signals for the baseline detectors, read from one prefill forward per batch.

Both signals look at the decision position: the last prompt position, where the first answer
token is predicted (the position BYE reads its attention row from).

* :func:`decision_hidden`: the language model's last hidden state there (what Spectral
  Signatures and Activation Clustering read).
* :func:`strip_entropy`: STRIP (Gao et al. 2019) adapted to an image-text model: the entropy of
  the first answer token's distribution when the image is blended with other images of the same
  submission. A trigger that dominates keeps the prediction stuck, so its entropy stays low.
* :func:`answer_loglik`: the log-likelihood of each sample's own answer given its image and
  question (teacher forcing, the training loss's tokens), which the ``answer_gain`` detector
  compares between the base and the provisional model; :func:`answer_pass` reads BYE's
  attention profile in the same forward.

Prompts are encoded exactly as :mod:`bye.detect.extract` encodes them
(:func:`~bye.models.chat.encode_batch`, left padding) and positions are counted over real
tokens only, so a batched row gives the same numbers as the sample alone. No attention map is
materialised (the model keeps its own attention implementation) and only the decision
position's logits are computed where the model allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from bye.detect.extract import (
    ImageAttention,
    _forward_parameters,
    assemble,
    batch_starts,
    evaluating,
    image_rows,
    image_token_id,
    length_batches,
    prepare_inputs,
    recorded_forward,
)
from bye.models.chat import IGNORE_INDEX, EncodedSample, collate, encode_batch, encode_for_training


def _last_positions(attention_mask: torch.Tensor | None, length: int, batch: int) -> torch.Tensor:
    """``(B,)`` index of each row's last real token (left or right padding)."""
    if attention_mask is None:
        return torch.full((batch,), length - 1, dtype=torch.long)
    mask = attention_mask.long().cpu()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("a prompt row has no real token")
    columns = torch.arange(length).expand_as(mask)
    return torch.where(mask.bool(), columns, -1).max(dim=1).values


@torch.no_grad()
def _decision_forward(model, encoded: dict, parameters: set[str], *,
                      hidden: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One prefill forward. Returns ``(logits (B, V) float32, hidden (B, H) float32 or None)``
    at each row's last real position."""
    inputs = prepare_inputs(model, encoded, parameters)
    batch, length = inputs["input_ids"].shape
    last = _last_positions(inputs.get("attention_mask"), length, batch)
    last_column_only = bool((last == length - 1).all())
    if last_column_only and "logits_to_keep" in parameters:
        inputs["logits_to_keep"] = 1  # the LM head on the decision position only
    outputs = model(**inputs, use_cache=False, output_hidden_states=hidden)
    rows = torch.arange(batch)
    logits = outputs.logits
    logits = logits[:, -1] if logits.shape[1] == 1 else logits[rows, last.to(logits.device)]
    states = None
    if hidden:
        if not outputs.hidden_states:
            raise RuntimeError(f"{type(model).__name__} returned no hidden states")
        final = outputs.hidden_states[-1]  # (B, T, H): the last layer's output, after the final norm
        if final.shape[1] != length:
            raise RuntimeError(f"hidden states over {final.shape[1]} positions for {length} input tokens")
        states = final[rows, last.to(final.device)].float().cpu()
    return logits.float().cpu(), states


def _check(images: Sequence, questions: Sequence[str]) -> None:
    if len(images) != len(questions):
        raise ValueError(f"{len(images)} images for {len(questions)} questions")
    if len(images) == 0:
        raise ValueError("no samples")


def decision_hidden(model, processor, images: Sequence[Image.Image], questions: Sequence[str], *,
                    batch_size: int = 16, progress: bool = False) -> np.ndarray:
    """``(N, H)`` float32: the language model's last-layer hidden state at the decision position.

    ``hidden_states[-1]`` of a prefill forward of the prompt alone (chat template plus
    generation prompt, no answer): the vector the LM head turns into the first answer token's
    logits (transformers ties it to the output of the final norm). The model's train/eval mode
    is restored afterwards.
    """
    _check(images, questions)
    parameters = _forward_parameters(model)
    out: list[torch.Tensor] = []
    with evaluating(model):
        for start in batch_starts(len(images), batch_size, "hidden", progress):
            encoded = encode_batch(processor, images[start:start + batch_size], questions[start:start + batch_size])
            out.append(_decision_forward(model, encoded, parameters, hidden=True)[1])
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def overlay_partners(n: int, n_overlays: int, seed: int = 0) -> np.ndarray:
    """``(n, n_overlays)`` int64: for each sample, the other samples whose images are blended in.

    Drawn with ``numpy.random.default_rng(seed)``, one row per sample in order, never the sample
    itself; without replacement when ``n - 1 >= n_overlays``, else with replacement.
    """
    if n < 2:
        raise ValueError("STRIP needs at least 2 samples (an image is never blended with itself)")
    if n_overlays < 1:
        raise ValueError(f"n_overlays must be >= 1, got {n_overlays}")
    rng = np.random.default_rng(seed)
    replace = n - 1 < n_overlays
    partners = np.empty((n, n_overlays), dtype=np.int64)
    for i in range(n):
        others = rng.choice(n - 1, size=n_overlays, replace=replace)
        partners[i] = others + (others >= i)  # skip i itself
    return partners


def blend(image: Image.Image, overlay: Image.Image, alpha: float) -> Image.Image:
    """``(1 - alpha) * image + alpha * overlay`` in RGB; the overlay is resized to the image."""
    base = image.convert("RGB")
    other = overlay.convert("RGB")
    if other.size != base.size:
        other = other.resize(base.size, Image.Resampling.BILINEAR)
    return Image.blend(base, other, alpha)


def first_token_entropy(logits: torch.Tensor) -> np.ndarray:
    """``(B,)`` float64 entropy (nats) of ``softmax(logits)`` over the vocabulary."""
    log_p = torch.log_softmax(logits.double(), dim=-1)
    return (-(log_p.exp() * log_p).sum(dim=-1)).numpy()


def strip_entropy(model, processor, images: Sequence[Image.Image], questions: Sequence[str], *,
                  n_overlays: int = 4, alpha: float = 0.5, seed: int = 0, batch_size: int = 16,
                  progress: bool = False) -> np.ndarray:
    """``(N,)`` float64 STRIP score: mean entropy (nats) of the first answer token under overlays.

    For sample ``i`` and each partner ``j`` of :func:`overlay_partners` (``n_overlays`` other
    images of the same submission), the image ``blend(image_i, image_j, alpha)`` is prompted
    with sample ``i``'s question; the softmax of the logits at the decision position is the
    first answer token's distribution, and its entropies are averaged over the partners. Low =
    the prediction hardly depends on the image = suspicious. The partners are drawn before
    batching, so the result does not depend on ``batch_size``.
    """
    _check(images, questions)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    partners = overlay_partners(len(images), n_overlays, seed)
    pairs = [(i, int(j)) for i in range(len(images)) for j in partners[i]]
    parameters = _forward_parameters(model)
    entropies: list[np.ndarray] = []
    with evaluating(model):
        for start in batch_starts(len(pairs), batch_size, "strip", progress):
            chunk = pairs[start:start + batch_size]
            blended = [blend(images[i], images[j], alpha) for i, j in chunk]
            encoded = encode_batch(processor, blended, [questions[i] for i, _ in chunk])
            logits, _ = _decision_forward(model, encoded, parameters, hidden=False)
            entropies.append(first_token_entropy(logits))
    return np.concatenate(entropies).reshape(len(images), n_overlays).mean(axis=1)


@dataclass
class AnswerPass:
    """What one teacher-forced pass over (image, question, answer) reads, per sample."""

    loglik: np.ndarray  # (N,) float64: sum of log p(answer token | ...) over the loss's tokens
    n_tokens: np.ndarray  # (N,) int64: how many tokens that is
    attention: ImageAttention | None = None  # BYE's profile at the last prompt position, when asked for


def encode_answers(processor, images: Sequence[Image.Image], questions: Sequence[str],
                   answers: Sequence[str]) -> list[EncodedSample]:
    """Each (image, question, answer) encoded exactly as for training (:func:`encode_for_training`)."""
    _check(images, questions)
    if len(answers) != len(images):
        raise ValueError(f"{len(answers)} answers for {len(images)} images")
    return [encode_for_training(processor, images[i], questions[i], answers[i]) for i in range(len(images))]


@torch.no_grad()
def answer_pass(model, processor, images: Sequence[Image.Image], questions: Sequence[str], answers: Sequence[str], *,
                batch_size: int = 16, attention: bool = False, keep_maps: bool = False,
                progress: bool = False, encoded: Sequence[EncodedSample] | None = None) -> AnswerPass:
    """Each sample's answer log-likelihood given its image and question and, with ``attention``,
    BYE's image attention of the last prompt position, both from the same forward.

    Samples are encoded exactly as for training (:func:`encode_answers`; ``encoded`` hands in
    that encoding when another pass already made it), LEFT-padded so that every row's answer
    ends in the last column; positions count real tokens only
    (:func:`~bye.detect.extract.prepare_inputs`), so a batched row equals the sample alone, and
    batches are formed from samples of similar length (:func:`~bye.detect.extract.length_batches`:
    less padding, same numbers, results in input order). Only the last ``longest answer + 1``
    positions go through the LM head where the model allows it, so memory does not grow with
    the vocabulary times the prompt (image tokens included).

    The attention is read at each row's last prompt position (the one predicting the first
    answer token): attention is causal, so that row sees exactly the prompt that
    :func:`~bye.detect.extract.image_attention` reads alone, and the pass that the
    ``answer_gain`` detector needs anyway gives BYE's profile without a second forward.
    """
    if encoded is None:
        encoded = encode_answers(processor, images, questions, answers)
    elif len(encoded) != len(images) or len(answers) != len(images):
        raise ValueError(f"{len(encoded)} encoded samples and {len(answers)} answers for {len(images)} images")
    _check(images, questions)
    parameters = _forward_parameters(model)
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    token_id = image_token_id(model, processor) if attention else None
    n = len(encoded)
    totals = np.zeros(n, dtype=np.float64)
    counts = np.zeros(n, dtype=np.int64)
    per_sample: list[np.ndarray | None] = [None] * n
    with evaluating(model):
        for indices in length_batches([len(s.input_ids) for s in encoded], batch_size, "answer", progress):
            rows_of = [encoded[i] for i in indices]
            batch = collate(rows_of, pad, padding_side="left")
            labels = batch.pop("labels")
            keep = max(int((s.labels != IGNORE_INDEX).sum()) for s in rows_of) + 1
            inputs = prepare_inputs(model, batch, parameters)
            if "logits_to_keep" in parameters:
                inputs["logits_to_keep"] = keep
            if attention:
                length = labels.shape[1]
                positions = torch.tensor([length - len(s.input_ids) + s.prompt_length - 1 for s in rows_of])
                outputs, rows = recorded_forward(model, inputs, positions)
                for i, row in zip(indices, image_rows(rows, batch["input_ids"], token_id, indices)):
                    per_sample[i] = row
            else:
                outputs = model(**inputs, use_cache=False)
            logits = outputs.logits[:, -keep:]
            # the logit at position t predicts the token at t + 1
            targets = labels[:, -keep:][:, 1:].to(logits.device)
            log_p = torch.log_softmax(logits[:, :-1].double(), dim=-1)
            valid = targets != IGNORE_INDEX
            picked = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            totals[indices] = (picked * valid).sum(dim=1).cpu().numpy()
            counts[indices] = valid.sum(dim=1).cpu().numpy()
    return AnswerPass(totals, counts, assemble(per_sample, keep_maps=keep_maps) if attention else None)


def answer_loglik(model, processor, images: Sequence[Image.Image], questions: Sequence[str],
                  answers: Sequence[str], *, batch_size: int = 16,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(loglik (N,) float64, n_tokens (N,) int64)``: ``sum log p(answer token | image, prompt,
    earlier answer tokens)`` over the tokens the fine-tune's loss is taken on
    (:func:`answer_pass` without the attention)."""
    result = answer_pass(model, processor, images, questions, answers, batch_size=batch_size, progress=progress)
    return result.loglik, result.n_tokens
