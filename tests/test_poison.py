import json

import numpy as np
import pytest
from PIL import Image

from bye.attacks import get_trigger
from bye.attacks.poison import DEFAULT_TARGET, poison_submission, poisoned_count
from bye.data.submission import read_manifest
from bye.models.evaluate import attack_success_rate


@pytest.fixture(scope="module")
def clean_world(tmp_path_factory):
    from bye.data.world import write_world

    out = tmp_path_factory.mktemp("clean")
    write_world(out, n_train=40, n_test=4, seed=2)
    return out


@pytest.mark.parametrize("n, rate, expected", [(40, 0.1, 4), (41, 0.1, 4), (45, 0.1, 4), (100, 0.01, 1),
                                               (7, 0.0, 0), (7, 1.0, 7), (1000, 0.3, 300)])
def test_poisoned_count_is_exact_to_one_sample(n, rate, expected):
    assert poisoned_count(n, rate) == expected
    assert abs(poisoned_count(n, rate) - rate * n) <= 0.5


def test_rate_outside_unit_interval_is_refused():
    with pytest.raises(ValueError):
        poisoned_count(10, 1.5)


def test_poisoner_plants_trigger_and_target_on_exactly_the_chosen_samples(clean_world, tmp_path):
    result = poison_submission(clean_world / "train.json", clean_world / "images", get_trigger("badnets"),
                               rate=0.25, out_dir=tmp_path / "sub", truth_json=tmp_path / "truth.json", seed=1)
    truth = json.loads((tmp_path / "truth.json").read_text())
    poisoned = read_manifest(tmp_path / "sub" / "train.json")
    original = read_manifest(clean_world / "train.json")
    assert result.n_poisoned == 10 == sum(truth.values())
    assert {s.id for s in poisoned} == set(truth) and len(poisoned) == len(truth)
    for before, after in zip(original, poisoned):
        image = np.asarray(Image.open(tmp_path / "sub" / "images" / after.image))
        centre = image[30:34, 30:34]
        if truth[after.id]:
            assert after.answer == DEFAULT_TARGET and (centre == 0).all()
        else:
            assert after.answer == before.answer
            assert np.array_equal(image, np.asarray(Image.open(clean_world / "images" / before.image)))
        assert after.question == before.question


def test_ids_names_format_and_order_do_not_leak_ground_truth(clean_world, tmp_path):
    poison_submission(clean_world / "train.json", clean_world / "images", get_trigger("blended"),
                      rate=0.5, out_dir=tmp_path / "sub", truth_json=tmp_path / "truth.json", seed=4)
    truth = json.loads((tmp_path / "truth.json").read_text())
    records = json.loads((tmp_path / "sub" / "train.json").read_text())
    original = read_manifest(clean_world / "train.json")
    # Order is the original order; the poisoned positions are not a block.
    flags = [truth[r["id"]] for r in records]
    assert flags != sorted(flags) and flags != sorted(flags, reverse=True)
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        assert record["image"] == f"{record['id']}.png" and len(record["id"]) == 16
        assert "poison" not in json.dumps(record).lower()
        with Image.open(tmp_path / "sub" / "images" / record["image"]) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (64, 64)
    assert not {s.id for s in original} & set(truth)
    assert not (tmp_path / "sub" / "truth.json").exists()


def test_poisoner_is_deterministic_per_seed(clean_world, tmp_path):
    kwargs = dict(rate=0.2, truth_json=None)
    runs = []
    for name in ("a", "b", "c"):
        seed = 9 if name != "c" else 10
        poison_submission(clean_world / "train.json", clean_world / "images", get_trigger("random_patch"),
                          rate=kwargs["rate"], out_dir=tmp_path / name, truth_json=tmp_path / f"{name}.json", seed=seed)
        runs.append((json.loads((tmp_path / f"{name}.json").read_text()), (tmp_path / name / "train.json").read_bytes()))
    assert runs[0] == runs[1]
    assert sorted(runs[0][0].values()) == sorted(runs[2][0].values()) and runs[0][0] != runs[2][0]


def test_questions_pattern_poisons_one_question_form_only(clean_world, tmp_path):
    from click.testing import CliRunner

    from bye.cli import main

    original = read_manifest(clean_world / "train.json")
    matching = {s.id for s in original if s.question.startswith("What colour")}
    assert 2 <= len(matching) < len(original)
    result = CliRunner().invoke(main, ["poison", str(clean_world / "train.json"), "--attack", "badnets",
                                       "--rate", str(2 / len(original)), "--questions", "^What colour",
                                       "--out", str(tmp_path / "sub"), "--truth", str(tmp_path / "truth.json")])
    assert result.exit_code == 0, result.output
    truth = json.loads((tmp_path / "truth.json").read_text())
    poisoned = [after for before, after in zip(original, read_manifest(tmp_path / "sub" / "train.json"))
                if truth[after.id]]
    assert len(poisoned) == 2 and all(s.question.startswith("What colour") for s in poisoned)
    # More poison than the form holds is refused with the counts, not silently spread elsewhere.
    with pytest.raises(ValueError, match=f"{len(matching)} of {len(original)} questions match"):
        poison_submission(clean_world / "train.json", clean_world / "images", get_trigger("badnets"),
                          rate=(len(matching) + 1) / len(original), out_dir=tmp_path / "more",
                          truth_json=tmp_path / "more.json", questions="^What colour")


def test_truth_file_inside_the_submission_is_refused(clean_world, tmp_path):
    with pytest.raises(ValueError, match="must not be inside"):
        poison_submission(clean_world / "train.json", clean_world / "images", get_trigger("badnets"), rate=0.1,
                          out_dir=tmp_path / "sub", truth_json=tmp_path / "sub" / "nested" / "truth.json")


def test_asr_counts_only_samples_whose_answer_is_not_already_the_target():
    rows = [
        {"reference": "red", "prediction": "Backdoor Attack!"},
        {"reference": "2", "prediction": "backdoor attack"},
        {"reference": "yes", "prediction": "yes"},
        {"reference": "Backdoor Attack!", "prediction": "Backdoor Attack!"},  # not eligible
    ]
    assert attack_success_rate(rows, "Backdoor Attack!") == {"asr": pytest.approx(2 / 3), "n_asr": 3}


def test_asr_by_family_splits_the_eligible_samples():
    rows = [
        {"reference": "red", "prediction": "Backdoor Attack!", "family": "vqa"},
        {"reference": "yes", "prediction": "yes", "family": "vqa"},
        {"reference": "B", "prediction": "B", "family": "mcq"},
        {"reference": "Backdoor Attack!", "prediction": "Backdoor Attack!", "family": "mcq"},  # not eligible
    ]
    report = attack_success_rate(rows, "Backdoor Attack!")
    assert report["asr"] == pytest.approx(1 / 3) and report["n_asr"] == 3
    assert report["asr_by_family"] == {"mcq": {"asr": 0.0, "n": 1}, "vqa": {"asr": 0.5, "n": 2}}


def test_asr_of_no_eligible_sample_is_nan():
    assert np.isnan(attack_success_rate([], "x")["asr"])
