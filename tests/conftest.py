"""Shared fixtures: a tiny world and a tiny pre-trained base model, built once per session."""

from __future__ import annotations

from bye.env import apply_offline_defaults

apply_offline_defaults()

import pytest  # noqa: E402

from bye.data.world import WorldConfig  # noqa: E402
from bye.models.tiny import PretrainSpec, TinyLlavaSpec  # noqa: E402

# Smaller than the demo model so the suite stays fast; the same code builds both.
TEST_SPEC = TinyLlavaSpec(image_size=32, patch_size=8, vision_hidden=64, vision_layers=2, vision_heads=2,
                          vision_intermediate=128, text_hidden=64, text_layers=2, text_heads=2,
                          text_intermediate=128, vocab_size=400)
TEST_WORLD = WorldConfig(image_size=32)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    from bye.data.world import write_world

    out = tmp_path_factory.mktemp("world")
    write_world(out, n_train=96, n_test=32, seed=3, task="mixed", config=TEST_WORLD)
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    from bye.models.tiny import build_base

    out = tmp_path_factory.mktemp("models") / "base"
    build_base(out, TEST_SPEC, PretrainSpec(n_images=64, epochs=1, batch_size=16), TEST_WORLD, progress=False)
    return out
