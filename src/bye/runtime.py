"""Where the models run: one choice per process, from ``params.yaml``'s ``runtime`` section.

``device: auto`` takes the first CUDA GPU when torch sees one, else the CPU; ``dtype: auto``
loads checkpoints in bfloat16 on a GPU that supports it and in their own dtype otherwise. The
same code runs either way: models are moved once when loaded, and every batch follows the
model (:func:`bye.models.loading.to_model`). Results are deterministic per machine and
device, not across them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Runtime:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | any torch device name
    dtype: str = "auto"   # auto | float32 | bfloat16 | float16

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"runtime.dtype must be one of {DTYPES}, not {self.dtype!r}")
        if self.device != "auto":
            torch.device(self.device)  # raises on a name torch does not know

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"runtime.device is {self.device!r} but torch sees no CUDA device")
        return device

    def torch_dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype to load a checkpoint in on ``device``; None: the checkpoint's own."""
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None


_current = Runtime()


def configure(params: dict) -> Runtime:
    """Make ``params['runtime']`` (absent: auto / auto) this process's runtime; return it."""
    from bye.config import build

    global _current
    _current = build(Runtime, params.get("runtime"))
    return _current


def current() -> Runtime:
    return _current
