"""What the benchmark scripts share: the command-line options that point at the demo's world, and the
one-line description of the machine that every result file carries."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path


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


def machine_line() -> str:
    """The machine a result was measured on, as the result files state it."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, no GPU"
