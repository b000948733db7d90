"""``python -m flows STAGE [--root DIR] [--params FILE]``: run one pipeline stage's flow (what dvc.yaml calls)."""

from __future__ import annotations

from flows.runtime import configure

configure()

import click  # noqa: E402


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("stage", type=click.Choice(["world", "base", "submission", "ingest", "provisional_finetune", "extract",
                                            "profile", "cluster", "detection", "clean_finetune",
                                            "undefended_finetune", "eval", "eval_undefended", "eval_base", "report"]))
@click.option("--root", default=".", show_default=True, help="Folder the stage layout is relative to.")
@click.option("--params", "params_path", default="params.yaml", show_default=True)
@click.option("--submission", default=None, help="ingest: the uploaded folder or archive (default data/submission).")
def main(stage, root, params_path, submission):
    """Run one stage of the BYE pipeline as a Prefect flow."""
    from flows import stages

    if stage == "ingest":
        stages.ingest_flow(submission=submission, root=root, params_path=params_path)
    elif stage.endswith("_finetune") and stage != "provisional_finetune":
        stages.finetune_flow(which=stage.removesuffix("_finetune"), root=root, params_path=params_path)
    elif stage.startswith("eval"):
        stages.eval_flow(which=stage.removeprefix("eval_") if "_" in stage else "clean", root=root,
                         params_path=params_path)
    else:
        stages.STAGES[stage](root=root, params_path=params_path)


if __name__ == "__main__":
    main()
