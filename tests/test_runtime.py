"""Where the models run: params.yaml's ``runtime`` section, the device and dtype it resolves to,
and the same code path with a model in another dtype than float32 (what a GPU run gets)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from bye import runtime
from bye.data.submission import read_manifest
from bye.models.finetune import LoraSettings, finetune, training_fingerprint
from bye.models.loading import load_base, to_model
from bye.runtime import Runtime


@pytest.fixture(autouse=True)
def default_runtime():
    runtime.configure({})
    yield
    runtime.configure({})


def test_auto_is_the_cpu_in_the_checkpoints_dtype_without_a_gpu():
    rt = Runtime()
    expected = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert rt.torch_device() == expected
    if expected.type == "cpu":
        assert rt.torch_dtype(expected) is None
    assert Runtime(dtype="bfloat16").torch_dtype(torch.device("cpu")) is torch.bfloat16


def test_bad_settings_are_refused_with_the_knob_named():
    with pytest.raises(ValueError, match="runtime.dtype"):
        Runtime(dtype="float8")
    with pytest.raises(RuntimeError):
        Runtime(device="no-such-device")
    with pytest.raises(ValueError, match="unknown keys"):
        runtime.configure({"runtime": {"devices": "cpu"}})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            Runtime(device="cuda").torch_device()


def test_configure_reads_the_params_section_and_the_cli_applies_it(tmp_path, tiny_world):
    assert runtime.configure({"runtime": {"device": "cpu", "dtype": "bfloat16"}}) == runtime.current()
    assert runtime.current() == Runtime(device="cpu", dtype="bfloat16")
    runtime.configure({})
    params = tmp_path / "params.yaml"
    params.write_text("runtime:\n  device: cpu\n  dtype: float16\n")
    from bye.cli import main

    result = CliRunner().invoke(main, ["world", str(tmp_path / "w"), "--n-train", "2", "--n-test", "1",
                                       "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert runtime.current() == Runtime(device="cpu", dtype="float16")


def test_a_bfloat16_model_gets_its_batches_in_bfloat16_and_answers(tiny_base, tiny_world):
    from bye.detect.extract import image_attention
    from bye.models.chat import encode_batch
    from bye.models.chat import open_rgb
    from bye.models.evaluate import generate_answers

    runtime.configure({"runtime": {"dtype": "bfloat16"}})
    model, processor = load_base(tiny_base)
    assert next(model.parameters()).dtype is torch.bfloat16
    samples = read_manifest(tiny_world / "test.json")[:4]
    images = [open_rgb(tiny_world / "images" / s.image) for s in samples]
    encoded = encode_batch(processor, images, [s.question for s in samples])
    moved = to_model(model, {**encoded, "note": "kept"})
    assert moved["pixel_values"].dtype is torch.bfloat16 and moved["input_ids"].dtype is torch.long
    assert moved["note"] == "kept"
    answers = generate_answers(model, processor, images, [s.question for s in samples], max_new_tokens=3,
                               progress=False)
    assert len(answers) == 4
    attention = image_attention(model, processor, images, [s.question for s in samples], batch_size=3)
    assert attention.attention.shape[0] == 4
    assert abs(float(attention.attention.sum(-1).mean()) - 1) < 1e-3


def test_the_dtype_enters_the_fingerprint_and_a_bfloat16_fine_tune_trains(tiny_base, tiny_world, tmp_path):
    settings = LoraSettings(rank=4, epochs=0.25, batch_size=8, checkpoint_every=0)
    data, images = tiny_world / "train.json", tiny_world / "images"
    default = training_fingerprint(settings, data, images, tiny_base)
    runtime.configure({"runtime": {"device": "cpu"}})
    assert training_fingerprint(settings, data, images, tiny_base) == default  # the CPU default: as before
    runtime.configure({"runtime": {"dtype": "bfloat16"}})
    assert training_fingerprint(settings, data, images, tiny_base) != default
    summary = finetune(data, images, tiny_base, tmp_path / "adapter", settings, progress=False)
    assert all(loss == loss for loss in summary["epoch_losses"])  # finite, not NaN
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
