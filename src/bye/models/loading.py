"""Load any local image-text checkpoint (the embedded one or a real LLaVA / Qwen2-VL / ...).

Weights are read as safetensors only, and remote code stays off unless an operator turns it
on for a model of their own.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from bye.runtime import current


def load_processor(base_dir: str | Path, *, trust_remote_code: bool = False):
    """The checkpoint's processor alone (tokenizer, image processor, chat template)."""
    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"{base_dir}: not a model folder (no config.json)")
    return AutoProcessor.from_pretrained(base_dir, trust_remote_code=trust_remote_code)


def load_base(base_dir: str | Path, *, attn_implementation: str = "sdpa", dtype: str | None = None,
              device: str | None = None, trust_remote_code: bool = False):
    """Return ``(model, processor)`` from a local folder, model in eval mode on ``device`` in
    ``dtype`` (None: the process's runtime, :mod:`bye.runtime`)."""
    runtime = current()
    target = torch.device(device) if device else runtime.torch_device()
    processor = load_processor(base_dir, trust_remote_code=trust_remote_code)
    model = AutoModelForImageTextToText.from_pretrained(
        base_dir,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        dtype=getattr(torch, dtype) if dtype else runtime.torch_dtype(target),
    )
    if target.type != "cpu":
        model.to(target)
    model.eval()
    return model, processor


def to_model(model, tensors: dict) -> dict:
    """``tensors`` (a processor's or collate's output) on the model's device, floating ones in its
    dtype (pixel values of a bfloat16 model); anything else passes unchanged."""
    parameter = next(model.parameters())
    return {name: value.to(parameter.device, parameter.dtype if value.is_floating_point() else None)
            if isinstance(value, torch.Tensor) else value for name, value in tensors.items()}


def load_for_inference(base_dir: str | Path, adapter_dir: str | Path | None = None, **kwargs):
    """Base model with an optional LoRA adapter merged in (faster generation)."""
    model, processor = load_base(base_dir, **kwargs)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir), use_safetensors=True)
        model = model.merge_and_unload()
        model.eval()
    return model, processor
