import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bye.data.submission import read_manifest
from bye.data.world import (COLOURS, MCQ_SUFFIX, SHAPES, SKILLS, WorldConfig, describe, describe_by_shape,
                            describe_list, describe_occupancy, draw_scene, generate, skill_request, write_world)
from bye.models.evaluate import options_of


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_gives_byte_identical_folders(tmp_path):
    write_world(tmp_path / "a", n_train=12, n_test=4, seed=7)
    write_world(tmp_path / "b", n_train=12, n_test=4, seed=7)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")


def test_different_seed_gives_different_world(tmp_path):
    write_world(tmp_path / "a", n_train=6, n_test=2, seed=1)
    write_world(tmp_path / "b", n_train=6, n_test=2, seed=2)
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "b")


def test_a_sample_does_not_depend_on_how_many_were_drawn():
    few = [d.sample for d in generate("train", 3, seed=5, task="mixed")]
    many = [d.sample for d in generate("train", 10, seed=5, task="mixed")]
    assert few == many[:3]


def test_output_is_a_llava_submission_folder(tmp_path):
    counts = write_world(tmp_path, n_train=10, n_test=5, seed=0)
    assert counts == {"train": 10, "test": 5}
    records = json.loads((tmp_path / "train.json").read_text())
    assert len(records) == 10
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        human, gpt = record["conversations"]
        assert human["from"] == "human" and human["value"].startswith("<image>\n")
        assert gpt["from"] == "gpt" and gpt["value"]
        with Image.open(tmp_path / "images" / record["image"]) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
    assert len(read_manifest(tmp_path / "test.json")) == 5


def test_ids_are_unique_and_opaque(tmp_path):
    write_world(tmp_path, n_train=50, n_test=10, seed=0)
    samples = read_manifest(tmp_path / "train.json") + read_manifest(tmp_path / "test.json")
    ids = [s.id for s in samples]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and all(c in "0123456789abcdef" for c in i) for i in ids)


@pytest.mark.parametrize("task", ["vqa", "mcq"])
def test_task_families(task):
    drawn = list(generate("train", 60, seed=0, task=task))
    for d in drawn:
        if task == "mcq":
            options = options_of(d.sample.question)
            assert set(options) == set("ABCD") and d.sample.answer in "ABCD"
        else:
            assert not options_of(d.sample.question)
    kinds = {d.kind for d in drawn}
    expected = {"colour", "count", "left", "exists"} if task == "vqa" else {"mcq_colour", "mcq_shape", "mcq_count_all"}
    assert kinds == expected


def test_answers_are_grounded_in_the_scene():
    for d in generate("train", 200, seed=11, task="vqa"):
        q, a = d.sample.question, d.sample.answer
        if d.kind == "colour":
            assert a in COLOURS
        elif d.kind == "count":
            assert a in {"0", "1", "2", "3", "4"}
        elif d.kind == "left":
            assert a in SHAPES and a in q
        else:
            assert a in {"yes", "no"}


def test_yes_no_is_balanced():
    answers = [d.sample.answer for d in generate("train", 400, seed=0, task="vqa") if d.kind == "exists"]
    assert 0.35 < answers.count("yes") / len(answers) < 0.65


def test_scene_has_the_objects_it_reports():
    rng = np.random.default_rng(0)
    scene = draw_scene(rng, WorldConfig(image_size=64, noise_std=0.0))
    pixels = np.asarray(scene.image).astype(int)
    for obj in scene.objects:
        x, y = (int(round(v)) for v in obj.centre)
        assert np.abs(pixels[y, x] - np.array(COLOURS[obj.colour])).max() < 2
    assert 2 <= len(scene.objects) <= 4


def test_corpus_descriptions_cover_every_object():
    drawn = list(generate("corpus", 60, seed=0, task="caption"))
    assert {d.kind for d in drawn} == {"caption", "grounding", "choice"}
    for d in drawn:
        objects = d.objects
        if d.kind in ("grounding", "choice"):
            continue
        assert describe(list(objects)).count(": a ") == len(objects)
        assert describe_list(list(objects)).count("\n") == len(objects) - 1
        assert describe_occupancy(list(objects)).count("yes") == len(objects)
        assert d.sample.answer in {describe(list(objects)), describe_list(list(objects)),
                                   describe_occupancy(list(objects)), describe_by_shape(list(objects))}


def test_generic_corpus_never_asks_a_downstream_question():
    downstream = {d.sample.question.split()[0] for task in ("vqa", "mcq") for d in generate("train", 100, seed=0, task=task)}
    generic = [d.sample.question for d in generate("corpus", 300, seed=0, task="caption")]
    forms = {q.split(" the ")[0] for q in generic}
    assert not any(q.startswith(("What colour", "How many", "Which is", "Is there", "Which shape")) for q in generic)
    assert not any(MCQ_SUFFIX in q for q in generic)
    assert downstream and forms


def test_skill_requests_are_grounded_and_never_a_downstream_question():
    drawn = list(generate("corpus", 400, seed=0, task="skills"))
    assert {d.kind for d in drawn} == set(SKILLS)
    downstream_answers = {d.sample.answer for task in ("vqa", "mcq") for d in generate("train", 200, seed=0, task=task)}
    for d in drawn:
        q, a, objects = d.sample.question, d.sample.answer, d.objects
        assert not q.startswith(("What colour", "How many", "Which is", "Is there", "Which shape")) and MCQ_SUFFIX not in q
        if d.kind == "pick_letter":
            options = options_of(q)
            assert a in options and q.endswith("Reply with a letter.")
            continue
        assert a not in downstream_answers and a.endswith(".")  # a sentence, never the downstream short answer
        if d.kind == "read_colour":
            shape = q.split("the ")[-1].rstrip(".")
            assert a == f"The {shape} is {next(o.colour for o in objects if o.shape == shape)}."
        elif d.kind == "count":
            assert a.split()[-1].rstrip(".").isdigit()
        elif d.kind == "look_for":
            colour, shape = q.rstrip(".").split()[-2:]
            assert (a == "Found it.") == any(o.colour == colour and o.shape == shape for o in objects)
        elif d.kind == "compare_left":
            named = [o for o in objects if o.shape in q.split(":")[0]]
            assert a.startswith(f"The {min(named, key=lambda o: o.cell % 3).shape} ")


def test_letter_after_options_name_the_text_then_its_letter_and_leave_the_scenes_alone():
    from bye.models.evaluate import is_correct

    after = WorldConfig(options="letter_after")
    first = list(generate("train", 60, seed=0, task="mcq"))
    second = list(generate("train", 60, seed=0, task="mcq", config=after))
    for a, b in zip(first, second):
        assert a.image.tobytes() == b.image.tobytes() and a.objects == b.objects
        options = options_of(b.sample.question)
        text, letter = b.sample.answer.rsplit(" (", 1)
        assert len(options) == 4 and options[letter.rstrip(")")] == text
        assert options_of(a.sample.question)[a.sample.answer] == text  # the same option, written the other way
        assert is_correct(b.sample.question, b.sample.answer, b.sample.answer)
        wrong = next(k for k in options if k != letter[0])
        assert not is_correct(b.sample.question, f"{text} ({wrong})", b.sample.answer)
        assert "- " + b.sample.answer in b.sample.question and MCQ_SUFFIX not in b.sample.question
    picks = [d for d in generate("corpus", 200, seed=0, task="skills", config=after) if d.kind == "pick_letter"]
    choices = [d for d in generate("corpus", 300, seed=0, task="caption", config=after) if d.kind == "choice"]
    assert picks and choices
    for d in picks + choices:
        assert "- " + d.sample.answer in d.sample.question and d.sample.answer[-4:] in {" (A)", " (B)", " (C)", " (D)"}
    twos = list(generate("corpus", 40, seed=0, task="skills", config=after, skills=("pick_two",)))
    for d in twos:  # the same picks with one distractor
        options = options_of(d.sample.question)
        assert list(options) == ["A", "B"] and "- " + d.sample.answer in d.sample.question
    assert {d.sample.answer[-3:] for d in twos} == {"(A)", "(B)"}
    with pytest.raises(ValueError, match="options"):
        WorldConfig(options="letter_last")


def test_the_listing_lookups_answer_in_the_singular_left_to_right():
    drawn = list(generate("corpus", 300, seed=0, task="skills", skills=("find_plural", "find_colour", "count")))
    assert {d.kind for d in drawn} == {"find_plural", "find_colour", "count"}
    plural = {f"{s}s" if s != "cross" else "crosses": s for s in SHAPES}
    seen_none = seen_many = False
    for d in (d for d in drawn if d.kind.startswith("find_")):
        if d.kind == "find_plural":  # "Find the circles."
            shape = plural[d.sample.question.removeprefix("Find the ").rstrip(".")]
            found = [o for o in d.objects if o.shape == shape]
        else:  # "List everything red."
            colour = d.sample.question.removeprefix("List everything ").rstrip(".")
            assert colour in COLOURS
            found = [o for o in d.objects if o.colour == colour]
        found = sorted(found, key=lambda o: (o.cell % 3, o.cell // 3))
        if not found:
            assert d.sample.answer == "There are none."
            seen_none = True
            continue
        assert d.sample.answer.lower() == "; ".join(f"a {o.size} {o.colour} {o.shape}" for o in found) + "."
        seen_many |= len(found) > 1
    assert seen_none and seen_many
    default = list(generate("corpus", 50, seed=0, task="skills"))
    assert not {"find_plural", "find_colour"} & {d.kind for d in default}
    # the default curriculum draws what it drew before the recipes could name their skills
    assert [(d.kind, d.sample.question, d.sample.answer) for d in default[:4]] == [
        ("name_shape", "Tell me which shape is yellow.", "The yellow one is a triangle."),
        ("look_for", "Look for a purple triangle.", "Found it."),
        ("name_shape", "Tell me which shape is purple.", "The purple one is a circle."),
        ("count", "Count the crosses.", "I count 1.")]


def test_spot_is_look_for_answered_yes_or_no_first():
    spots = list(generate("corpus", 60, seed=0, task="skills", skills=("spot",)))
    looks = list(generate("corpus", 60, seed=0, task="skills", skills=("look_for",)))
    downstream_answers = {d.sample.answer for d in generate("train", 200, seed=0, task="vqa")}
    assert {d.kind for d in spots} == {"spot"}
    for spot, look in zip(spots, looks):  # the same scenes and requests; only the answer's words differ
        assert spot.sample.question == look.sample.question and spot.sample.answer not in downstream_answers
        assert spot.sample.answer == {"Found it.": "Yes, it is there.",
                                      "It is not there.": "No, it is not there."}[look.sample.answer]
    assert {d.sample.answer for d in spots} == {"Yes, it is there.", "No, it is not there."}


def test_find_column_names_the_column_of_a_shape_that_occurs_once():
    from bye.data.world import COLUMN_NAMES

    drawn = [d for d in generate("corpus", 80, seed=0, task="skills", skills=("find_column", "count"))
             if d.kind == "find_column"]  # with a second skill: a scene where every shape repeats poses the other
    assert len(drawn) > 20
    for d in drawn:
        shape = d.sample.question.removeprefix("Which column is the ").removesuffix(" in?")
        (obj,) = [o for o in d.objects if o.shape == shape]
        assert d.sample.answer == f"The {shape} is in the {COLUMN_NAMES[obj.cell % 3]} column."
        assert not d.sample.question.startswith("Which is")  # never the downstream "Which is further left"


def test_skill_request_refuses_an_unknown_skill_and_declines_what_the_scene_cannot_pose():
    rng = np.random.default_rng(0)
    scene = draw_scene(rng, WorldConfig(image_size=64))
    with pytest.raises(ValueError, match="unknown skill"):
        skill_request(rng, scene.objects, "juggle")
    twins = [replace(scene.objects[0], cell=c) for c in (0, 4)]  # the same shape and colour twice
    assert skill_request(rng, twins, "read_colour") is None and skill_request(rng, twins, "name_shape") is None
    from bye.data.world import make_text
    with pytest.raises(ValueError, match="poses none"):  # a refusal, not an endless loop
        make_text("skills", rng, twins, skills=("read_colour", "find_column"))
    assert make_text("skills", rng, twins, skills=("read_colour", "count"))[0] == "count"
