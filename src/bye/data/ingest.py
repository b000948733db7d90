"""Safe ingest of an untrusted submission.

A submission is a stranger's upload. Ingest reads only inside the submission's root, never
unpickles or executes anything, never crashes on a record and never drops one silently: each
bad record is rejected with a reason and the good ones go on.

Input: a folder (``train.json``, or the single ``.json`` / ``.jsonl`` manifest at its root, images
under ``images/``) or a ``.zip`` / ``.tar.gz`` archive of one, extracted with caps and without
letting any entry land outside the extraction folder.

Output (``out_dir``): ``manifest.json`` (accepted records, normalised; every image re-encoded as
RGB PNG under ``images/<sha256>.png``), ``rejected.csv`` (``index, id, reason``) and
``ingest.json`` (counts and the submission's fingerprint: the sha256 of ``manifest.json``, which
names every image by its content hash, so it identifies the accepted content exactly).

Image rules: RGB kept; L, LA, P, RGBA (composited on white), CMYK, YCbCr and 16-bit greyscale
converted to RGB; animated images (more than one frame), images over ``max_pixels`` (a
decompression bomb), truncated or corrupt files, 0-byte files and directories rejected.
Text rules: one human turn with exactly one ``<image>`` then one gpt turn without one (multi-turn
conversations are rejected), non-empty question and answer, answer at most ``max_answer_chars``,
text encodable as UTF-8 (no lone surrogates), string ids unique across the submission.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from bye.data.submission import IMAGE_TOKEN, Sample, write_manifest
from bye.io import atomic_write_json, atomic_write_text

MANIFEST_NAMES = ("train.json", "train.jsonl")
# Only plain raster decoders: some PIL plugins (EPS) hand the file to external programs.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


@dataclass(frozen=True)
class IngestLimits:
    max_pixels: int = 4096 * 4096
    max_image_bytes: int = 32 * 1024 * 1024
    max_answer_chars: int = 2000
    max_question_chars: int = 8000
    max_records: int = 1_000_000
    max_archive_files: int = 200_000
    max_archive_bytes: int = 8 * 1024 ** 3
    max_compression_ratio: float = 200.0


@dataclass
class IngestReport:
    accepted: list[Sample] = field(default_factory=list)
    rejected: list[tuple[int, str, str]] = field(default_factory=list)  # (index, id, reason)
    fingerprint: str = ""  # sha256 of the normalised manifest (whose image names are content hashes)

    @property
    def rejected_fraction(self) -> float:
        total = len(self.accepted) + len(self.rejected)
        return len(self.rejected) / total if total else 0.0


class SubmissionError(ValueError):
    """The submission as a whole cannot be read (no manifest, unsafe archive, ...)."""


# ------------------------------------------------------------------ archives


def _check_member_name(name: str) -> None:
    path = Path(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        raise SubmissionError(f"archive entry {name!r} would land outside the extraction folder")


def extract_archive(archive: Path, destination: Path, limits: IngestLimits = IngestLimits()) -> Path:
    """Extract a .zip / .tar.gz safely into ``destination``; links and special files are refused."""
    destination.mkdir(parents=True, exist_ok=True)
    root = destination.resolve()
    total = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > limits.max_archive_files:
                raise SubmissionError(f"archive holds {len(members)} entries (cap {limits.max_archive_files})")
            for member in members:
                _check_member_name(member.filename)
                if (member.external_attr >> 16) & 0o170000 == 0o120000:
                    raise SubmissionError(f"archive entry {member.filename!r} is a symbolic link")
                total += member.file_size
                if total > limits.max_archive_bytes:
                    raise SubmissionError("archive expands beyond the size cap")
                if member.compress_size and member.file_size / member.compress_size > limits.max_compression_ratio:
                    raise SubmissionError(f"archive entry {member.filename!r} has a suspicious compression ratio")
            for member in members:
                target = (root / member.filename).resolve()
                if not target.is_relative_to(root):
                    raise SubmissionError(f"archive entry {member.filename!r} escapes the extraction folder")
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with bundle.open(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
        return root
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as bundle:
            members = bundle.getmembers()
            if len(members) > limits.max_archive_files:
                raise SubmissionError(f"archive holds {len(members)} entries (cap {limits.max_archive_files})")
            for member in members:
                _check_member_name(member.name)
                if not (member.isfile() or member.isdir()):
                    raise SubmissionError(f"archive entry {member.name!r} is a link or special file")
                total += member.size
                if total > limits.max_archive_bytes:
                    raise SubmissionError("archive expands beyond the size cap")
            compressed = archive.stat().st_size or 1
            if total / compressed > limits.max_compression_ratio:
                raise SubmissionError("archive has a suspicious compression ratio")
            bundle.extractall(root, filter="data")
        return root
    raise SubmissionError(f"{archive.name}: not a zip or tar archive")


# ------------------------------------------------------------------ records


def find_manifest(root: Path) -> Path:
    for name in MANIFEST_NAMES:
        if (root / name).is_file() and not (root / name).is_symlink():
            return root / name
    candidates = [p for p in root.iterdir() if p.suffix in (".json", ".jsonl") and p.is_file() and not p.is_symlink()]
    if len(candidates) == 1:
        return candidates[0]
    raise SubmissionError(f"{root}: expected train.json or a single .json / .jsonl manifest at the root, "
                          f"found {sorted(p.name for p in candidates)}")


def load_records(manifest: Path, limits: IngestLimits) -> list:
    text = manifest.read_bytes().decode("utf-8", errors="strict")
    if manifest.suffix == ".jsonl":
        records = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                records.append(_Unparsable(f"line {line_number}: not JSON ({error.msg})"))
        data = records
    else:
        data = json.loads(text)
    if not isinstance(data, list):
        raise SubmissionError(f"{manifest.name}: expected a list of records, got {type(data).__name__}")
    if len(data) > limits.max_records:
        raise SubmissionError(f"{manifest.name}: {len(data)} records (cap {limits.max_records})")
    return data


@dataclass(frozen=True)
class _Unparsable:
    reason: str


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_record(record, limits: IngestLimits) -> tuple[str, str, str, str]:
    """(id, image, question, answer) of a well-formed record; raise ValueError with the reason."""
    if isinstance(record, _Unparsable):
        raise ValueError(record.reason)
    if not isinstance(record, dict):
        raise ValueError(f"record is a {type(record).__name__}, expected an object")
    sample_id = record.get("id")
    if not isinstance(sample_id, str) or not sample_id.strip():
        raise ValueError("field 'id' must be a non-empty string")
    if "image" not in record:
        raise ValueError("no 'image' field")
    image = record["image"]
    if not isinstance(image, str) or not image:
        raise ValueError("field 'image' must be a non-empty string")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError("field 'conversations' must be a list of objects")
    if len(turns) != 2:
        raise ValueError(f"multi-turn or incomplete conversation ({len(turns)} turns; one human + one gpt expected)")
    if [t.get("from") for t in turns] != ["human", "gpt"]:
        raise ValueError("turns must be one 'human' then one 'gpt'")
    human, answer = turns[0].get("value"), turns[1].get("value")
    if not isinstance(human, str) or not isinstance(answer, str):
        raise ValueError("turn values must be strings")
    for name, text in (("id", sample_id), ("image", image), ("question", human), ("answer", answer)):
        if not _encodable(text):
            raise ValueError(f"{name} is not valid UTF-8 text (lone surrogate)")
    count = human.count(IMAGE_TOKEN)
    if count != 1:
        raise ValueError(f"the human turn holds {count} {IMAGE_TOKEN} tokens; exactly one expected")
    question = human.replace(IMAGE_TOKEN, "").strip()
    if not question:
        raise ValueError("empty question")
    if not answer.strip():
        raise ValueError("empty answer")
    if IMAGE_TOKEN in answer:  # it would be tokenised as an image slot with no image to fill it
        raise ValueError(f"the {IMAGE_TOKEN} placeholder in the answer")
    if len(answer) > limits.max_answer_chars:
        raise ValueError(f"answer longer than {limits.max_answer_chars} characters")
    if len(question) > limits.max_question_chars:
        raise ValueError(f"question longer than {limits.max_question_chars} characters")
    return sample_id, image, question, answer.strip()


def safe_image_path(images_root: Path, relative: str) -> Path:
    """The image's path if it stays inside ``images_root`` after resolving every link."""
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")):
        raise ValueError(f"image path {relative!r} is absolute")
    if ".." in Path(relative).parts:
        raise ValueError(f"image path {relative!r} climbs out of the image folder")
    candidate = (images_root / relative).resolve()
    if not candidate.is_relative_to(images_root.resolve()):
        raise ValueError(f"image path {relative!r} resolves outside the image folder (link)")
    if not candidate.exists():
        raise ValueError(f"image {relative!r} not found")
    if candidate.is_dir():
        raise ValueError(f"image path {relative!r} is a directory")
    return candidate


def load_image(path: Path, limits: IngestLimits) -> Image.Image:
    """Decode an untrusted image to RGB by the module's rules; raise ValueError with the reason."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError("image file is empty (0 bytes)")
    if size > limits.max_image_bytes:
        raise ValueError(f"image file larger than {limits.max_image_bytes} bytes")
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as probe:
            width, height = probe.size
            if width * height > limits.max_pixels:
                raise ValueError(f"image of {width}x{height} pixels exceeds the cap of {limits.max_pixels}")
            if getattr(probe, "n_frames", 1) > 1:
                raise ValueError("animated image (more than one frame)")
            probe.verify()
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            image.load()
            return _to_rgb(image)
    except ValueError:
        raise
    except Image.DecompressionBombError as error:
        raise ValueError(f"decompression bomb: {error}") from None
    except Exception as error:  # PIL raises many types on corrupt data; all mean "unreadable"
        raise ValueError(f"unreadable image ({type(error).__name__}: {error})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image.copy()
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / peak * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


# ------------------------------------------------------------------ ingest


def ingest(path: str | Path, out_dir: str | Path, *, limits: IngestLimits = IngestLimits()) -> IngestReport:
    """Ingest a submission folder or archive into ``out_dir`` (see the module docstring)."""
    path, out = Path(path), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        root = extract_archive(path, out / "_extracted", limits)
    elif path.is_dir():
        root = path.resolve()
    else:
        raise SubmissionError(f"{path}: no such folder or archive")
    manifest = find_manifest(root)
    records = load_records(manifest, limits)
    images_root = root / "images"
    images_out = out / "images"
    images_out.mkdir(parents=True, exist_ok=True)
    report = IngestReport()
    seen: set[str] = set()
    for index, record in enumerate(records):
        raw_id = record.get("id") if isinstance(record, dict) else None
        shown_id = raw_id if isinstance(raw_id, str) and _encodable(raw_id) else ""
        try:
            sample_id, image_name, question, answer = check_record(record, limits)
            if sample_id in seen:
                raise ValueError(f"duplicate id {sample_id!r}")
            image = load_image(safe_image_path(images_root, image_name), limits)
        except ValueError as error:
            report.rejected.append((index, shown_id, str(error)))
            continue
        seen.add(sample_id)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = hashlib.sha256(buffer.getvalue()).hexdigest()[:24] + ".png"
        (images_out / name).write_bytes(buffer.getvalue())
        report.accepted.append(Sample(id=sample_id, image=name, question=question, answer=answer))
    write_manifest(report.accepted, out / "manifest.json")
    report.fingerprint = hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["index", "id", "reason"])
    writer.writerows(report.rejected)
    atomic_write_text(out / "rejected.csv", table.getvalue())
    atomic_write_json(out / "ingest.json", {"fingerprint": report.fingerprint, "accepted": len(report.accepted),
                                            "rejected": len(report.rejected),
                                            "rejected_fraction": report.rejected_fraction})
    return report
