"""Drive the MLflow UI in a test: a real `mlflow server` on a store, headless Chromium over the DevTools protocol.

The runs page (``#/experiments/<id>/runs``) lists only the parents at first; their nested stage runs sit behind
the "+" expander in the Run Name cell, and MLflow keeps that expanded state in the browser's localStorage
(a shared view's URL leaves it out too). So ``--dump-dom`` alone never shows the stage rows: `runs_page` talks
to Chromium over the DevTools protocol (``--remote-debugging-pipe``, stdlib only), clicks the expanders, waits
for the stage rows, and returns the DOM and a screenshot.

Chromium must be installed (scripts/ensure_chromium.sh, run by `make test`).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End a process started here, with the children in its own session (server workers, renderers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextlib.contextmanager
def mlflow_server(root: Path):
    """`mlflow server` on ``root/mlflow.db`` and ``root/mlruns``; yields its URL."""
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--default-artifact-root", str(root / "mlruns")],
        cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)
        log.close()


def _high(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (JSON messages ending in NUL on fd 3/4)."""

    def __init__(self, binary: Path, profile: Path):
        # Chromium reads commands on fd 3 and answers on fd 4; our ends of the pipes are moved above 9 first,
        # so that the shell's `3<&A 4>&B` cannot clobber one with the other.
        to_chrome, self._send = map(_high, os.pipe())
        self._recv, from_chrome = map(_high, os.pipe())
        self._log = open(profile.parent / "chromium.log", "w")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,900", "--hide-scrollbars",
                 "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_chrome} 4>&{from_chrome}', "bash", str(binary), *flags],
            pass_fds=(to_chrome, from_chrome), stdout=subprocess.DEVNULL, stderr=self._log, start_new_session=True)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id, self.session = b"", 0, None
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 60, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:  # anything else is an event
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._recv], [], [], left)[0]:
                raise TimeoutError(f"no reply to {method} in {timeout}s")
            chunk = os.read(self._recv, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while not (value := self.js(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.25)
        return value

    def close(self) -> None:
        for fd in (self._send, self._recv):
            os.close(fd)
        _stop(self.proc)
        self._log.close()


# The names in the runs table: the Run Name cells link to "#/experiments/<id>/runs/<run id>".
RUN_NAMES = "[...document.querySelectorAll('.ag-cell a[href*=\"/runs/\"]')].map(a => a.textContent.trim())"
EXPANDERS = "document.querySelectorAll('[col-id*=\"Run Name\"] button[data-component-id*=\"runnamecellrenderer\"]')"


def runs_page(url: str, experiment_id: str, parents: list[str], stages: list[str], profile: Path,
              name: str = "mlflow_runs_page") -> tuple[list[str], str]:
    """Open the experiment's runs page, expand every parent, wait until every parent and stage name is listed;
    return the names shown and the DOM. The DOM and a screenshot are saved under tests/artifacts/ (a
    screenshot also on failure)."""
    browser = Browser(CHROMIUM, profile)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        browser.call("Page.navigate", url=f"{url}/#/experiments/{experiment_id}/runs")
        wanted = json.dumps(parents)
        browser.wait_for(f"(n => {wanted}.every(p => n.includes(p)) && n)({RUN_NAMES})", "the parent rows")
        browser.js(f"{EXPANDERS}.forEach(b => b.click())")  # MLflow 3 shows parents collapsed at first
        wanted = json.dumps(parents + stages)
        names = browser.wait_for(f"(n => {wanted}.every(s => n.includes(s)) && n)({RUN_NAMES})", "the stage rows")
        dom = browser.js("document.documentElement.outerHTML")
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    except (AssertionError, TimeoutError, RuntimeError):
        with contextlib.suppress(Exception):
            data = browser.call("Page.captureScreenshot", format="png", timeout=10)["data"]
            (ARTIFACTS / f"{name}.failed.png").write_bytes(base64.b64decode(data))
        raise
    finally:
        browser.close()
    assert shot.startswith(b"\x89PNG")
    (ARTIFACTS / f"{name}.png").write_bytes(shot)
    (ARTIFACTS / f"{name}.html").write_text(dom)
    return names, dom
