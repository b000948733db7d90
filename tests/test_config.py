from pathlib import Path

import pytest

from bye.settings import lora_settings, scan_settings
from bye.config import build, load_params
from bye.models.finetune import LoraSettings


def test_params_file_builds_every_section(tmp_path):
    params = load_params(Path(__file__).parents[1] / "params.yaml")
    lora, scan = scan_settings(params)
    shared = {k: v for k, v in params["provisional"].items() if k != "by_method"}
    own = params["provisional"].get("by_method", {}).get(scan.method, {})
    assert lora == build(LoraSettings, {**params["finetune"], **shared, **own})
    assert scan.method == params["cluster"]["method"]
    chosen = params["cluster"]["detectors"][scan.method]
    assert scan.detector["verdict"]["max_flagged_fraction"] == chosen["verdict"]["max_flagged_fraction"]
    assert scan.extract.batch_size == params["extract"]["batch_size"]
    _, bye = scan_settings(params, method="bye")  # the separation rule lives with the profile stage
    assert bye.detector["verdict"] == params["cluster"]["detectors"]["bye"]["verdict"]
    assert (bye.detector["rule"], bye.detector["tau"]) == (params["profile"]["rule"], params["profile"]["tau"])


def test_an_exponent_without_a_dot_is_a_number_as_dvc_reads_it(tmp_path):
    # PyYAML's YAML 1.1 made "3e-4" a string, which crashed the base's optimiser minutes into a build
    path = tmp_path / "params.yaml"
    path.write_text("base:\n  pretrain:\n    learning_rate: 3e-4\n    seed: 7\n"
                    "finetune:\n  learning_rate: -2E+2\n  target: '3e-4'\n  tag: e3\n")
    params = load_params(path)
    assert params["base"]["pretrain"] == {"learning_rate": 0.0003, "seed": 7}
    assert params["finetune"] == {"learning_rate": -200.0, "target": "3e-4", "tag": "e3"}
    assert build(LoraSettings, {"learning_rate": params["base"]["pretrain"]["learning_rate"]}).learning_rate == 3e-4


def test_flags_override_params_and_unknown_keys_are_refused():
    assert build(LoraSettings, {"rank": 4}, rank=8).rank == 8
    assert build(LoraSettings, {"rank": 4}, rank=None).rank == 4
    with pytest.raises(ValueError, match="unknown keys"):
        build(LoraSettings, {"rnak": 4})


def test_missing_params_file_is_an_error_only_when_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_params() == {}
    with pytest.raises(FileNotFoundError):
        load_params(tmp_path / "nope.yaml")


def test_a_detector_trains_its_own_provisional_length_and_the_shared_one_ignores_it():
    params = {"finetune": {"epochs": 3, "rank": 8}, "provisional": {"epochs": 2, "by_method": {"answer_gain": {"epochs": 1}}},
              "cluster": {"method": "answer_gain"}}
    assert scan_settings(params)[0].epochs == 1
    assert scan_settings(params, method="bye")[0].epochs == 2
    assert scan_settings(params, epochs=0.5)[0].epochs == 0.5  # a flag still wins
    assert lora_settings(params, provisional=True).epochs == 2  # shared: no detector named
    assert lora_settings(params).epochs == 3 and lora_settings(params).rank == 8  # the clean fine-tune
