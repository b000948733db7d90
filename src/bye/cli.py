"""``bye``: a thin command-line face over the library. Knobs come from ``params.yaml``; flags win."""

from __future__ import annotations

from bye.env import apply_offline_defaults

apply_offline_defaults()

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from bye.config import load_params  # noqa: E402
from bye.runtime import configure as configure_runtime  # noqa: E402
from bye.settings import (  # noqa: E402
    attack_settings,
    base_settings,
    eval_settings,
    ingest_settings,
    lora_settings,
    scan_settings,
    trigger,
    world_settings,
)

params_option = click.option("--params", "params_path", type=click.Path(dir_okay=False), default=None,
                             help="params.yaml to read (default: ./params.yaml if present).")


def _stack(*decorators):
    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command
    return apply


# DATA_JSON and --images: how every command that reads a manifest finds it.
manifest_options = _stack(
    click.argument("data_json", type=click.Path(exists=True, dir_okay=False)),
    click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False), default=None,
                 help="Image folder (default: images/ beside DATA_JSON)."),
)
# ... plus --base and --out: the common face of the model commands.
manifest_model_options = _stack(
    manifest_options,
    click.option("--base", "base_dir", type=click.Path(exists=True, file_okay=False), required=True),
    click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True),
)


def _params(params_path: str | None) -> dict:
    """The params file, its ``runtime`` section made this process's (where the models run)."""
    params = load_params(params_path)
    configure_runtime(params)
    return params


def _echo_json(payload: dict) -> None:
    click.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


@click.group()
@click.version_option(package_name="bye-detect")
def main() -> None:
    """Find and remove backdoor samples in multimodal fine-tuning submissions (BYE)."""


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--n-train", type=int, default=None, help="Training samples (params: world.n_train).")
@click.option("--n-test", type=int, default=None, help="Test samples (params: world.n_test).")
@click.option("--seed", type=int, default=None, help="World seed (params: world.seed).")
@click.option("--task", type=click.Choice(["vqa", "mcq", "mixed"]), default=None,
              help="Task family (params: world.task).")
@params_option
def world(out_dir, n_train, n_test, seed, task, params_path):
    """Generate the embedded image-question world as a submission folder OUT_DIR."""
    from bye.data.world import write_world

    settings = world_settings(_params(params_path), n_train=n_train, n_test=n_test, seed=seed, task=task)
    counts = write_world(out_dir, **settings, progress=True)
    _echo_json({"out_dir": out_dir, **counts})


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--n-images", type=int, default=None, help="Pre-training captions (params: base.pretrain.n_images).")
@click.option("--epochs", type=float, default=None, help="Pre-training epochs (params: base.pretrain.epochs).")
@click.option("--seed", type=int, default=None, help="Seed (params: base.pretrain.seed).")
@params_option
def base(model_dir, n_images, epochs, seed, params_path):
    """Build and pre-train the embedded tiny LLaVA base model into MODEL_DIR."""
    from bye.models.tiny import build_base

    spec, pretrain, scene = base_settings(_params(params_path), n_images=n_images, epochs=epochs, seed=seed)
    summary = build_base(model_dir, spec, pretrain, scene, progress=True)
    _echo_json({k: summary[k] for k in ("parameters", "vocab_size", "epoch_losses", "train_seconds", "total_seconds")})


@main.command()
@manifest_model_options
@click.option("--epochs", type=float, default=None)
@click.option("--learning-rate", "--lr", "learning_rate", type=float, default=None)
@click.option("--batch-size", type=int, default=None)
@click.option("--rank", type=int, default=None)
@click.option("--alpha", type=int, default=None)
@click.option("--dropout", type=float, default=None)
@click.option("--target-modules", type=str, default=None, help="Comma-separated module names.")
@click.option("--train-projector/--no-train-projector", default=None)
@click.option("--seed", type=int, default=None)
@click.option("--order", type=click.Choice(["keyed", "shuffle"]), default=None,
              help="Epoch order (params: finetune.order): keyed by a hash of (seed, epoch, id), or shuffled.")
@click.option("--checkpoint-every", type=int, default=None)
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None)
@click.option("--provisional", is_flag=True, help="The provisional model the detector reads: params `provisional` "
              "(and its `by_method` entry for `cluster.method`) overrides `finetune`.")
@params_option
def finetune(data_json, images_dir, base_dir, out_dir, epochs, learning_rate, batch_size, rank, alpha, dropout,
             target_modules, train_projector, seed, order, checkpoint_every, checkpoint_dir, provisional, params_path):
    """LoRA fine-tune BASE on DATA_JSON; save the adapter to OUT (resumes if interrupted)."""
    from bye.data.submission import images_dir_for
    from bye.models.finetune import finetune as run_finetune

    params = _params(params_path)
    settings = lora_settings(
        params, provisional=provisional, method=params.get("cluster", {}).get("method") if provisional else None,
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, rank=rank, alpha=alpha,
        dropout=dropout, train_projector=train_projector, seed=seed, order=order, checkpoint_every=checkpoint_every,
        target_modules=tuple(target_modules.split(",")) if target_modules else None,
    )
    summary = run_finetune(data_json, images_dir or images_dir_for(data_json), base_dir, out_dir, settings,
                           checkpoint_dir=checkpoint_dir)
    _echo_json({k: summary[k] for k in ("n_samples", "steps", "epoch_losses", "train_seconds",
                                        "samples_per_second", "resumed_from_step")})


@main.command(name="eval")
@click.argument("test_json", type=click.Path(exists=True, dir_okay=False))
@click.option("--images", "images_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Image folder (default: images/ beside TEST_JSON).")
@click.option("--base", "base_dir", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--adapter", "adapter_dir", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--out", "out_json", type=click.Path(dir_okay=False), required=True)
@click.option("--predictions", "predictions_csv", type=click.Path(dir_okay=False), default=None,
              help="Also write one row per test sample.")
@click.option("--batch-size", type=int, default=None)
@click.option("--attack", type=str, default=None,
              help="Also evaluate the test images with this trigger and report the attack success rate.")
@click.option("--target", type=str, default=None, help="The attack's target answer (default: 'Backdoor Attack!').")
@params_option
def evaluate(test_json, images_dir, base_dir, adapter_dir, out_json, predictions_csv, batch_size, attack, target,
             params_path):
    """Greedy-decode TEST_JSON and score it; write metrics JSON to OUT."""
    from bye.data.submission import images_dir_for
    from bye.models.evaluate import run_evaluation

    params = _params(params_path)
    settings = eval_settings(params, batch_size=batch_size)
    chosen = trigger(attack, params) if attack else None
    metrics = run_evaluation(test_json, images_dir or images_dir_for(test_json), base_dir, adapter_dir,
                             settings, trigger=chosen, target=target or params.get("attack", {}).get("target"),
                             out_json=out_json, predictions_csv=predictions_csv)
    _echo_json(metrics)


@main.command()
@manifest_options
@click.option("--attack", required=True, help="Registered trigger name (see `bye triggers`).")
@click.option("--rate", type=float, default=None, help="Poisoned fraction (params: attack.rate).")
@click.option("--target", type=str, default=None, help="Target answer (params: attack.target).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Submission folder to write.")
@click.option("--truth", "truth_json", type=click.Path(dir_okay=False), required=True,
              help="Ground truth {id: 0|1}; must be outside OUT.")
@click.option("--seed", type=int, default=None, help="Seed (params: attack.seed).")
@click.option("--questions", type=str, default=None,
              help="Poison only samples whose question matches this regular expression (params: attack.questions).")
@params_option
def poison(data_json, images_dir, attack, rate, target, out_dir, truth_json, seed, questions, params_path):
    """Write a poisoned copy of DATA_JSON as a submission folder, ground truth apart."""
    from bye.attacks.poison import poison_submission
    from bye.data.submission import images_dir_for

    params = _params(params_path)
    try:
        result = poison_submission(data_json, images_dir or images_dir_for(data_json), trigger(attack, params),
                                   out_dir=out_dir, truth_json=truth_json,
                                   **attack_settings(params, rate=rate, target=target, seed=seed,
                                                     questions=questions))
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    _echo_json({"attack": attack, "n_samples": result.n_samples, "n_poisoned": result.n_poisoned, "out": out_dir})


@main.command()
@manifest_model_options
@click.option("--method", type=str, default=None, help="Detector name (default: params cluster.method).")
@click.option("--epochs", type=float, default=None, help="Provisional fine-tune epochs (params: provisional.epochs, or "
              "provisional.by_method.<method>.epochs).")
@params_option
def scan(data_json, images_dir, base_dir, out_dir, method, epochs, params_path):
    """Find the poisoned samples of a submission; write scores.csv, filtered.json, verdict.json to OUT."""
    from bye.data.submission import images_dir_for
    from bye.detect.scan import scan_submission

    lora, settings = scan_settings(_params(params_path), method=method, epochs=epochs)
    record = scan_submission(data_json, images_dir or images_dir_for(data_json), base_dir, out_dir,
                             finetune_settings=lora, settings=settings)
    _echo_json({k: record[k] for k in ("verdict", "method", "n_samples", "n_flagged", "sensitive_layers",
                                       "timings_seconds")})


@main.command()
@manifest_model_options
@click.option("--adapter", "adapter_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The provisional model's LoRA adapter.")
@params_option
def extract(data_json, images_dir, base_dir, out_dir, adapter_dir, params_path):
    """Per-layer attention entropy of every sample: write entropy.csv and attention.npz to OUT."""
    from bye.data.submission import images_dir_for
    from bye.detect.scan import extract_submission

    _, settings = scan_settings(_params(params_path))
    record = extract_submission(data_json, images_dir or images_dir_for(data_json), base_dir, adapter_dir, out_dir,
                                settings=settings.extract)
    _echo_json(record)


@main.command()
@click.argument("entropy_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--data", "data_json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The submission the entropies come from (its questions; needed by profile.residualise: prompt).")
@params_option
def profile(entropy_csv, out_dir, data_json, params_path):
    """Fit two Gaussians per layer; write profile.json (the sensitive layers) to OUT."""
    from bye.detect.scan import profile_submission

    _, settings = scan_settings(_params(params_path))
    record = profile_submission(entropy_csv, out_dir, settings=settings.profile, data_json=data_json)
    _echo_json({"rule": record["rule"], "residualise": record["residualise"],
                "sensitive_layers": record["sensitive_layers"]})


@main.command()
@manifest_options
@click.option("--features", "extract_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="The extract stage's folder (entropy.csv, signals.npz).")
@click.option("--profile", "profile_json", type=click.Path(exists=True, dir_okay=False), default=None,
              help="profile.json of the profile stage (BYE profiles the layers itself without it).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--method", type=str, default=None, help="Detector name (default: params cluster.method).")
@params_option
def cluster(data_json, images_dir, extract_dir, profile_json, out_dir, method, params_path):
    """Score and flag every sample, decide the verdict: write scores.csv, filtered.json, verdict.json to OUT."""
    from bye.detect.scan import cluster_submission

    _, settings = scan_settings(_params(params_path), method=method)
    record = cluster_submission(data_json, extract_dir, out_dir, profile_json=profile_json, method=settings.method,
                                detector=settings.detector)
    _echo_json({k: record[k] for k in ("verdict", "method", "n_samples", "n_flagged", "sensitive_layers", "reasons")})


@main.command(name="ingest")
@click.argument("path", type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--max-rejected-fraction", type=float, default=None,
              help="Fail when more records are rejected (params: ingest.max_rejected_fraction).")
@params_option
def ingest_command(path, out_dir, max_rejected_fraction, params_path):
    """Safely ingest an untrusted submission folder or archive into OUT (manifest.json, rejected.csv)."""
    from bye.data.ingest import SubmissionError, ingest

    limits, bound = ingest_settings(_params(params_path), max_rejected_fraction=max_rejected_fraction)
    try:
        report = ingest(path, out_dir, limits=limits)
    except SubmissionError as error:
        raise click.ClickException(str(error)) from error
    _echo_json({"accepted": len(report.accepted), "rejected": len(report.rejected),
                "rejected_fraction": report.rejected_fraction, "out": out_dir})
    if report.rejected_fraction > bound:
        raise click.ClickException(f"{report.rejected_fraction:.1%} of the records were rejected (bound {bound:.1%}); "
                                   f"see {Path(out_dir) / 'rejected.csv'}")


@main.command(name="score-scan")
@click.argument("scores_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--truth", "truth_json", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--out", "out_json", type=click.Path(dir_okay=False), required=True)
def score_scan_command(scores_csv, truth_json, out_json):
    """Precision / recall / F1 / AUROC of a scan against ground truth (evaluation only)."""
    from bye.io import atomic_write_json
    from bye.metrics import score_scan

    metrics = score_scan(scores_csv, truth_json)
    atomic_write_json(out_json, metrics)
    _echo_json(metrics)


@main.command()
def triggers():
    """List the registered triggers and their parameters."""
    from bye.attacks import available_triggers
    from bye.attacks.registry import trigger_parameters

    _echo_json({name: trigger_parameters(name) for name in available_triggers()})


if __name__ == "__main__":  # pragma: no cover
    main()
