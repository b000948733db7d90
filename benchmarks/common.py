"""What the benchmark scripts share: the command-line options that point at the demo's world, and the
one-line description of the machine that every result file carries."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

from bye.config import parse_yaml


def world_arguments(parser: argparse.ArgumentParser, *, rate: float | None = 0.1) -> argparse.ArgumentParser:
    """``--world`` and ``--base`` (the demo's, from ``dvc repro world base``), ``--params`` and,
    unless ``rate`` is None, the poison ``--rate``."""
    parser.add_argument("--world", type=Path, default=Path("data/world"))
    parser.add_argument("--base", type=Path, default=Path("models/base"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    if rate is not None:
        parser.add_argument("--rate", type=float, default=rate)
    return parser


def cell_arguments(description: str) -> argparse.Namespace:
    """The options of a one-cell stage: the world's, ``--trigger`` and ``--rate``."""
    parser = world_arguments(argparse.ArgumentParser(description=description), rate=None)
    parser.add_argument("--trigger", required=True)
    parser.add_argument("--rate", type=float, required=True)
    return parser.parse_args()


def with_overrides(params: dict, assignments: list[str]) -> dict:
    """``params`` with each ``a.b.c=value`` set (the value read as YAML)."""
    for assignment in assignments:
        key, _, value = assignment.partition("=")
        *path, last = key.split(".")
        section = params
        for part in path:
            section = section.setdefault(part, {})
        section[last] = parse_yaml(value)
    return params


def cpu_model() -> str:
    """The CPU's model name (a base built on an AMD EPYC and one built on an Intel Xeon differ in their bits)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine and software a result was measured on, as the result files record it."""
    import torch
    import transformers

    info = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu": cpu_model(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average_at_start": list(os.getloadavg())}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def machine_line() -> str:
    """The machine a result was measured on, in one line."""
    info = machine()
    return (f"{info['cpu']}, {info['cpu_count']} cores, Python {info['python']}, "
            + (f"GPU {info['gpu']}" if "gpu" in info else "no GPU"))


def question_kind(question: str) -> str:
    """The world's question kind (colour, count, left, exists, shape), ``mcq_`` first when lettered."""
    from bye.models.evaluate import options_of

    prefix = "mcq_" if options_of(question) else ""
    for kind, marker in (("colour", "colour"), ("count", "How many"), ("left", "left"), ("exists", "Is there"),
                         ("shape", "Which shape")):
        if marker in question:
            return prefix + kind
    return prefix + "other"


def read_truth_file(truth_json: Path, ids: list[str]):
    """The ground truth (1 = poisoned) of ``ids``, in their order, from a poisoner's ``{id: 0|1}`` file:
    for evaluation only."""
    import json

    import numpy as np

    truth = json.loads(Path(truth_json).read_text())
    return np.array([truth[i] for i in ids])


def plain_llama(model_spec: dict, vocab_size: int, max_positions: int):
    """A randomly initialised ``LlamaForCausalLM`` with the embedded base's language-model sizes
    (``params.yaml`` ``base.model``) and tied embeddings, for the synthetic-token measurements."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab_size, hidden_size=model_spec["text_hidden"], intermediate_size=model_spec["text_intermediate"],
        num_hidden_layers=model_spec["text_layers"], num_attention_heads=model_spec["text_heads"],
        num_key_value_heads=model_spec["text_heads"], max_position_embeddings=max_positions, tie_word_embeddings=True))


def write_results(out: Path | None, results: dict, text: str) -> None:
    """Print a result's Markdown ``text``; with ``out``, also write ``results`` there as JSON and ``text``
    beside it (``.md``)."""
    from bye.io import atomic_write_json, atomic_write_text

    if out:
        atomic_write_json(out, results)
        atomic_write_text(out.with_suffix(".md"), text)
    print(text)
