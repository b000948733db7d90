"""Prompts, encoding and batching, through the checkpoint's own processor and chat template.

The same functions serve the embedded model and a real LLaVA / Qwen2-VL / InternVL checkpoint:
the prompt is whatever the processor's chat template renders for one user turn holding an
image and the question, with the generation prompt; the answer is what the template appends
for the assistant turn. Image-token expansion is left to the processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

TEXT_KEYS = ("input_ids", "attention_mask", "labels")
IGNORE_INDEX = -100


def user_message(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


def prompt_text(processor, question: str) -> str:
    """The prompt exactly as inference sees it: chat template plus generation prompt, no answer."""
    return processor.apply_chat_template(user_message(question), add_generation_prompt=True, tokenize=False)


def answer_text(processor, question: str, answer: str) -> str:
    """What the chat template appends after the prompt for the assistant's answer."""
    messages = user_message(question) + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
    full = processor.apply_chat_template(messages, tokenize=False)
    prompt = prompt_text(processor, question)
    if not full.startswith(prompt):
        # Templates that render the generation prompt differently from a finished turn.
        return " " + answer + (processor.tokenizer.eos_token or "")
    return full[len(prompt):]


@dataclass
class EncodedSample:
    """One sample's tensors, without a batch dimension on the text side."""

    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,), IGNORE_INDEX on the prompt
    vision: dict[str, torch.Tensor]  # processor outputs for the image, batch dim 1 where it has one
    prompt_length: int
    # Per-token processor outputs beside input_ids (Qwen2-VL's mm_token_type_ids, Gemma3's
    # token_type_ids), (T,) each, 0 (text) over the answer.
    per_token: dict[str, torch.Tensor] = field(default_factory=dict)


def open_rgb(path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def encode_prompt(processor, image: Image.Image, question: str) -> dict[str, torch.Tensor]:
    return processor(images=[image], text=[prompt_text(processor, question)], return_tensors="pt")


def encode_batch(processor, images: Sequence[Image.Image], questions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Prompts (chat template + generation prompt) for a batch, LEFT-padded by the processor.

    The last column is then every row's last prompt position. Returns the processor outputs
    (``input_ids``/``attention_mask`` ``(B, T)`` plus the family's vision tensors).
    """
    texts = [prompt_text(processor, q) for q in questions]
    encoded = processor(images=[[image] for image in images], text=texts, padding=True, padding_side="left",
                        return_tensors="pt")
    mask = encoded.get("attention_mask")
    if mask is not None and not bool(mask[:, -1].all()):
        raise RuntimeError("the processor did not pad on the left; the last column is not the last prompt token")
    return encoded


def encode_for_training(processor, image: Image.Image, question: str, answer: str | None) -> EncodedSample:
    """Prompt tokens (masked from the loss) followed by the answer tokens (the loss)."""
    inputs = encode_prompt(processor, image, question)
    prompt_ids = inputs.pop("input_ids")[0]
    inputs.pop("attention_mask", None)
    per_token = {key: inputs.pop(key)[0] for key, value in list(inputs.items())
                 if isinstance(value, torch.Tensor) and not value.is_floating_point()
                 and tuple(value.shape) == (1, len(prompt_ids))}
    if answer is None:
        answer_ids = torch.zeros(0, dtype=prompt_ids.dtype)
    else:
        answer_ids = processor.tokenizer(
            answer_text(processor, question, answer), add_special_tokens=False, return_tensors="pt"
        )["input_ids"][0]
    input_ids = torch.cat([prompt_ids, answer_ids])
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), answer_ids])
    per_token = {key: torch.cat([value, value.new_zeros(len(answer_ids))]) for key, value in per_token.items()}
    return EncodedSample(input_ids=input_ids, labels=labels, vision=dict(inputs), prompt_length=len(prompt_ids),
                         per_token=per_token)


def collate(samples: list[EncodedSample], pad_token_id: int, *, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad text (and per-token processor outputs, with 0) to the longest sample; concatenate
    vision inputs along their first axis."""
    longest = max(len(s.input_ids) for s in samples)
    input_ids = torch.full((len(samples), longest), pad_token_id, dtype=torch.long)
    labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
    per_token = {key: torch.zeros((len(samples), longest), dtype=value.dtype)
                 for key, value in samples[0].per_token.items()}
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(longest - n, longest)
        input_ids[row, span] = sample.input_ids
        labels[row, span] = sample.labels
        attention_mask[row, span] = 1
        for key, value in sample.per_token.items():
            per_token[key][row, span] = value
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **per_token}
    for key in samples[0].vision:
        batch[key] = concatenate_vision(key, [s.vision[key] for s in samples])
    return batch


def concatenate_vision(key: str, values: list[torch.Tensor]) -> torch.Tensor:
    """One vision input of several samples, concatenated along its first axis. Where the samples differ
    only in their second axis (LLaVA-NeXT's any-resolution crops per image: ``(1, crops, 3, H, W)``),
    each is zero-padded to the largest count first, as the family's processor pads a batch; the model
    reads each image's real count from ``image_sizes``."""
    if len({tuple(v.shape[1:]) for v in values}) > 1:
        if len({(v.dim(), *v.shape[2:]) for v in values}) > 1:
            raise ValueError(f"{key}: samples of shapes {sorted({tuple(v.shape) for v in values})} cannot be batched")
        longest = max(v.shape[1] for v in values)
        values = [torch.nn.functional.pad(v, (0, 0) * (v.dim() - 2) + (0, longest - v.shape[1])) for v in values]
    return torch.cat(values, dim=0)
