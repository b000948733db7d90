"""Submission manifests in the LLaVA conversation format.

A manifest is a JSON list of records::

    {"id": "...", "image": "relative/path.png",
     "conversations": [{"from": "human", "value": "<image>\\n question"},
                       {"from": "gpt", "value": "answer"}]}

``image`` is relative to the submission's ``images/`` folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bye.io import atomic_write_text

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class Sample:
    id: str
    image: str
    question: str  # without the image token
    answer: str

    @classmethod
    def single_turn(cls, sample_id: str, image: str, question: str, answer: str) -> "Sample":
        return cls(id=sample_id, image=image, question=question, answer=answer)

    def to_record(self) -> dict:
        return {
            "id": self.id,
            "image": self.image,
            "conversations": [
                {"from": "human", "value": f"{IMAGE_TOKEN}\n{self.question}"},
                {"from": "gpt", "value": self.answer},
            ],
        }

    @classmethod
    def from_record(cls, record: dict, *, where: str = "record") -> "Sample":
        """Parse one well-formed single-turn record; raise ValueError naming what is wrong."""
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
        for key, kind in (("id", str), ("image", str), ("conversations", list)):
            if not isinstance(record.get(key), kind):
                raise ValueError(f"{where}: field {key!r} must be a {kind.__name__}")
        turns = record["conversations"]
        if len(turns) != 2 or [t.get("from") if isinstance(t, dict) else None for t in turns] != ["human", "gpt"]:
            raise ValueError(f"{where} (id {record['id']!r}): expected one human turn then one gpt turn")
        human, gpt = (t.get("value") for t in turns)
        if not isinstance(human, str) or not isinstance(gpt, str):
            raise ValueError(f"{where} (id {record['id']!r}): turn values must be strings")
        if human.count(IMAGE_TOKEN) != 1:
            raise ValueError(f"{where} (id {record['id']!r}): the human turn must hold exactly one {IMAGE_TOKEN}")
        question = human.replace(IMAGE_TOKEN, "").strip()
        return cls(id=record["id"], image=record["image"], question=question, answer=gpt)


def write_manifest(samples: Iterable[Sample], path: str | Path) -> None:
    records = [s.to_record() for s in samples]
    atomic_write_text(Path(path), json.dumps(records, indent=1, ensure_ascii=False) + "\n")


def read_manifest(path: str | Path) -> list[Sample]:
    """Read a trusted manifest (one the project wrote, or one that went through ingest)."""
    path = Path(path)
    records = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records")
    return [Sample.from_record(r, where=f"{path} record {i}") for i, r in enumerate(records)]


def images_dir_for(manifest: str | Path) -> Path:
    """The conventional image folder of a submission: ``images/`` beside the manifest."""
    return Path(manifest).resolve().parent / "images"


def resolve_image(images_dir: str | Path, relative: str) -> Path:
    """The image file of a record, refusing any path that leaves ``images_dir``."""
    root = Path(images_dir).resolve()
    candidate = (root / relative).resolve()
    if Path(relative).is_absolute() or not candidate.is_relative_to(root):
        raise ValueError(f"image path {relative!r} leaves the image folder {root}")
    return candidate
