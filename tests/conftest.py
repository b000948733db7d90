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
    build_base(out, TEST_SPEC, PretrainSpec(n_images=64, epochs=1, batch_size=16, skill_samples=96, skill_phase_steps=2,
                                                skill_final_steps=4, skill_pick_steps=2), TEST_WORLD, progress=False)
    return out


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect server on loopback for tests that run stage processes (``dvc repro``):
    each process would otherwise start its own temporary server (11-25 s each)."""
    import os
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from flows.runtime import server_is_up

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    home = tmp_path_factory.mktemp("prefect-home")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while not server_is_up(api):
        assert server.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()
        time.sleep(1)
    previous = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
    os.environ.update(PREFECT_API_URL=api, PREFECT_HOME=str(home))
    try:
        yield api
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
