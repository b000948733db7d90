"""Serve the inbox scan on a cron schedule: ``python -m flows.deploy`` (knobs: params ``deploy``).

A long-running process (run it under systemd or a container) that registers the deployment
``bye-inbox`` with the Prefect server in ``PREFECT_API_URL`` and runs :func:`flows.pipeline.scan_inbox`
on every tick; each upload is scanned once, however many ticks see it.
"""

from __future__ import annotations

from flows.runtime import configure

configure()

import click  # noqa: E402

from bye.config import load_params  # noqa: E402


@click.command()
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--once", is_flag=True, help="Scan the inbox once now instead of serving the schedule.")
def main(params_path: str, once: bool) -> None:
    from flows.pipeline import scan_inbox

    section = load_params(params_path).get("deploy", {})
    parameters = {"inbox": section.get("inbox", "inbox"), "workdir": section.get("workdir", "runs"),
                  "base": section.get("base", "models/base"), "params_path": params_path,
                  "test_json": section.get("test_json")}
    if once:
        click.echo(scan_inbox(**parameters))
        return
    scan_inbox.serve(name="bye-inbox", cron=section.get("cron", "*/10 * * * *"), parameters=parameters)


if __name__ == "__main__":
    main()
