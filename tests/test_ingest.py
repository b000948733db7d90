"""Ingest of untrusted submissions: every bad record rejected with a reason, nothing read outside."""

import csv
import io
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from bye.data.ingest import IngestLimits, SubmissionError, extract_archive, ingest
from bye.data.submission import read_manifest


def png_bytes(mode="RGB", size=(16, 16), colour=(200, 30, 30)):
    buffer = io.BytesIO()
    image = Image.new("RGB", size, colour[:3] if isinstance(colour, tuple) else colour)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(buffer, format="PNG" if mode != "CMYK" else "JPEG")
    return buffer.getvalue()


def record(sample_id, image, question="<image>\nWhat colour is it?", answer="red"):
    return {"id": sample_id, "image": image,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


@pytest.fixture
def submission(tmp_path):
    """A submission folder with one good record and one bad record of every kind we know."""
    root = tmp_path / "upload"
    images = root / "images"
    images.mkdir(parents=True)
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    (images / "good.png").write_bytes(png_bytes())
    (images / "grey.png").write_bytes(png_bytes("L"))
    (images / "palette.png").write_bytes(png_bytes("P"))
    (images / "rgba.png").write_bytes(png_bytes("RGBA"))
    (images / "cmyk.jpg").write_bytes(png_bytes("CMYK"))
    sixteen = Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))
    sixteen.save(images / "sixteen.png")
    (images / "empty.png").write_bytes(b"")
    (images / "truncated.png").write_bytes(png_bytes()[:40])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0not really a jpeg")
    (images / "folder.png").mkdir()
    (images / "link.png").symlink_to(outside)
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    frames[0].save(images / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("L", (4200, 4200)).save(images / "bomb.png")  # 17.6 M pixels > the 16.8 M cap
    records = [
        record("ok-1", "good.png"),
        record("ok-grey", "grey.png"),
        record("ok-palette", "palette.png"),
        record("ok-rgba", "rgba.png"),
        record("ok-cmyk", "cmyk.jpg"),
        record("ok-16bit", "sixteen.png"),
        record("dotdot", "../secret.png"),
        record("absolute", str(outside)),
        record("symlink", "link.png"),
        record("missing", "nope.png"),
        record("truncated", "truncated.png"),
        record("corrupt", "corrupt.jpg"),
        record("bomb", "bomb.png"),
        record("animated", "animated.gif"),
        record("zero-bytes", "empty.png"),
        record("directory", "folder.png"),
        record("no-token", "good.png", question="What colour is it?"),
        record("two-tokens", "good.png", question="<image>\n<image>\nWhat?"),
        record("empty-question", "good.png", question="<image>\n   "),
        record("empty-answer", "good.png", answer="  "),
        record("image-in-answer", "good.png", answer="a <image> here"),
        record("long-answer", "good.png", answer="x" * 5000),
        record("ok-1", "good.png"),  # duplicate id
        record("surrogate\ud800", "good.png"),
        record("surrogate-answer", "good.png", answer="bad \udc80 text"),
        "not an object",
        {"id": 7, "image": "good.png", "conversations": []},
        {"id": "multi", "image": "good.png", "conversations": [
            {"from": "human", "value": "<image>\nA?"}, {"from": "gpt", "value": "a"},
            {"from": "human", "value": "B?"}, {"from": "gpt", "value": "b"}]},
        {"id": "no-image", "conversations": record("x", "good.png")["conversations"]},
        {"id": "wrong-types", "image": ["good.png"], "conversations": "hello"},
    ]
    (root / "train.json").write_text(json.dumps(records, ensure_ascii=True), encoding="utf-8")
    return root


def mini_submission(root, manifest_name="train.json", text=None):
    """A folder holding images/a.png and a manifest (by default one good record for it)."""
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.png").write_bytes(png_bytes())
    (root / manifest_name).write_text(json.dumps([record("a", "a.png")]) if text is None else text)
    return root


OK_IDS = {"ok-1", "ok-grey", "ok-palette", "ok-rgba", "ok-cmyk", "ok-16bit"}


class OpenAudit:
    """Records every file path Python opens while active (sys.addaudithook cannot be removed)."""

    active = None

    def __init__(self):
        self.paths = []

    def __enter__(self):
        OpenAudit.active = self
        return self

    def __exit__(self, *exc):
        OpenAudit.active = None


def _hook(event, args):
    if OpenAudit.active is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        OpenAudit.active.paths.append(os.fsdecode(args[0]))


sys.addaudithook(_hook)


def test_bad_records_are_rejected_with_reasons_and_good_ones_kept(submission, tmp_path):
    out = tmp_path / "ingested"
    with OpenAudit() as audit:
        report = ingest(submission, out)
    assert {s.id for s in report.accepted} == OK_IDS
    rows = list(csv.DictReader((out / "rejected.csv").open()))
    assert len(rows) == len(report.rejected) == 24
    assert all(row["reason"] for row in rows)
    reasons = " | ".join(row["reason"] for row in rows)
    for expected in ("climbs out", "absolute", "link", "not found", "unreadable", "exceeds the cap", "animated",
                     "0 bytes", "directory", "exactly one expected", "empty question", "empty answer",
                     "longer than", "duplicate id", "lone surrogate", "multi-turn", "no 'image' field",
                     "must be a non-empty string", "expected an object", "placeholder in the answer"):
        assert expected in reasons, expected
    # Nothing outside the submission (or the output folder) was opened.
    allowed = (str(submission.resolve()), str(out.resolve()), str(out))
    opened = [p for p in audit.paths if not p.startswith(sys.prefix) and not p.startswith(sys.base_prefix)]
    assert opened and all(p.startswith(allowed) for p in opened), [p for p in opened if not p.startswith(allowed)]


def test_accepted_images_are_rgb_pngs_in_the_output(submission, tmp_path):
    ingest(submission, tmp_path / "out")
    for sample in read_manifest(tmp_path / "out" / "manifest.json"):
        with Image.open(tmp_path / "out" / "images" / sample.image) as image:
            assert image.format == "PNG" and image.mode == "RGB"


def test_rgba_is_composited_on_white_and_sixteen_bit_is_scaled(submission, tmp_path):
    ingest(submission, tmp_path / "out")
    by_id = {s.id: s for s in read_manifest(tmp_path / "out" / "manifest.json")}
    sixteen = np.asarray(Image.open(tmp_path / "out" / "images" / by_id["ok-16bit"].image))
    assert abs(int(sixteen[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1


def test_manifest_that_is_not_a_list_is_refused_as_a_whole(tmp_path):
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "train.json").write_text('{"id": "x"}')
    with pytest.raises(SubmissionError, match="list of records"):
        ingest(tmp_path / "up", tmp_path / "out")


def test_jsonl_manifest_with_a_broken_line(tmp_path):
    lines = [json.dumps(record("a", "a.png")), "{broken", json.dumps(record("b", "a.png"))]
    root = mini_submission(tmp_path / "up", "data.jsonl", "\n".join(lines))
    report = ingest(root, tmp_path / "out")
    assert [s.id for s in report.accepted] == ["a", "b"]
    assert report.rejected[0][2].startswith("line 2: not JSON")


def _zip(path, entries, symlink=None):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in entries.items():
            bundle.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            bundle.writestr(info, "/etc/passwd")


def test_zip_archive_is_ingested(tmp_path):
    _zip(tmp_path / "up.zip", {"train.json": json.dumps([record("a", "a.png")]), "images/a.png": png_bytes()})
    report = ingest(tmp_path / "up.zip", tmp_path / "out")
    assert [s.id for s in report.accepted] == ["a"]


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "images/../../evil.txt", "C:/evil.txt"])
def test_zip_entries_escaping_the_folder_are_refused(tmp_path, name):
    _zip(tmp_path / "up.zip", {"train.json": "[]", name: "x"})
    with pytest.raises(SubmissionError):
        extract_archive(tmp_path / "up.zip", tmp_path / "x")
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_entry_is_refused(tmp_path):
    _zip(tmp_path / "up.zip", {"train.json": "[]"}, symlink="images/a.png")
    with pytest.raises(SubmissionError, match="symbolic link"):
        extract_archive(tmp_path / "up.zip", tmp_path / "x")


def test_zip_bomb_ratio_is_refused(tmp_path):
    _zip(tmp_path / "up.zip", {"train.json": "[]", "images/zeros.bin": b"\0" * 5_000_000})
    with pytest.raises(SubmissionError, match="compression ratio"):
        extract_archive(tmp_path / "up.zip", tmp_path / "x")


def test_tar_with_a_link_is_refused(tmp_path):
    with tarfile.open(tmp_path / "up.tar.gz", "w:gz") as bundle:
        link = tarfile.TarInfo("images/a.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        bundle.addfile(link)
    with pytest.raises(SubmissionError, match="link"):
        extract_archive(tmp_path / "up.tar.gz", tmp_path / "x")


def test_tar_archive_is_ingested(tmp_path):
    source = mini_submission(tmp_path / "src")
    with tarfile.open(tmp_path / "up.tar.gz", "w:gz") as bundle:
        bundle.add(source / "train.json", arcname="train.json")
        bundle.add(source / "images" / "a.png", arcname="images/a.png")
    assert [s.id for s in ingest(tmp_path / "up.tar.gz", tmp_path / "out").accepted] == ["a"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
                           max_leaves=8)
records_strategy = st.lists(
    st.one_of(
        json_values,
        st.builds(record, st.text(max_size=6), st.sampled_from(["a.png", "../a.png", "nope.png", "/a.png", ""]),
                  st.text(max_size=20), st.text(max_size=10)),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=records_strategy)
def test_any_manifest_is_ingested_without_crashing_or_dropping_records(tmp_path_factory, records):
    root = mini_submission(tmp_path_factory.mktemp("h") / "up", text=json.dumps(records))
    report = ingest(root, root / "out")
    assert len(report.accepted) + len(report.rejected) == len(records)
    assert len({s.id for s in report.accepted}) == len(report.accepted)
    assert all(reason for _, _, reason in report.rejected)


def test_ingest_cli_fails_when_too_many_records_are_rejected(submission, tmp_path):
    from click.testing import CliRunner

    from bye.cli import main

    result = CliRunner().invoke(main, ["ingest", str(submission), "--out", str(tmp_path / "o")])
    assert result.exit_code != 0 and "were rejected" in result.output
    assert (tmp_path / "o" / "rejected.csv").is_file()
    result = CliRunner().invoke(main, ["ingest", str(submission), "--out", str(tmp_path / "p"),
                                       "--max-rejected-fraction", "0.9"])
    assert result.exit_code == 0, result.output
