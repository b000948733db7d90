"""Where flows find their Prefect API: a running local server if there is one, else a temporary one.

``make demo`` starts one ``prefect server`` and every stage process reuses it (a temporary
server costs 11-25 s per process on a 2-core machine). Plain ``dvc repro`` without it still
works: each stage then starts Prefect's temporary server, with a startup timeout raised to fit
slow machines.
"""

from __future__ import annotations

import os
import urllib.request

from bye.env import apply_offline_defaults

LOCAL_API = "http://127.0.0.1:4200/api"


def server_is_up(api_url: str = LOCAL_API, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def configure() -> str:
    """Set the Prefect environment before Prefect is imported; return the API in use ('' = temporary)."""
    apply_offline_defaults()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if not os.environ.get("PREFECT_API_URL") and server_is_up():
        os.environ["PREFECT_API_URL"] = LOCAL_API
    return os.environ.get("PREFECT_API_URL", "")
