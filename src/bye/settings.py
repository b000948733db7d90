"""Settings of every stage, built from ``params.yaml`` sections plus explicit overrides.

The CLI and the pipeline's flows both build their settings here, so a knob means the same
thing from ``bye …``, ``dvc repro`` and a Prefect deployment. Overrides that are ``None`` are
ignored (an unset flag); unknown keys in a section are an error (see :func:`bye.config.build`).
"""

from __future__ import annotations

from dataclasses import replace

from bye.config import build


def world_settings(params: dict, *, n_train=None, n_test=None, seed=None, task=None) -> dict:
    """Keyword arguments of :func:`bye.data.world.write_world`."""
    from bye.data.world import WorldConfig

    section = dict(params.get("world", {}))
    scene = build(WorldConfig, section.pop("scene", {}))
    return {
        "n_train": n_train if n_train is not None else section.get("n_train", 2000),
        "n_test": n_test if n_test is not None else section.get("n_test", 500),
        "seed": seed if seed is not None else section.get("seed", 0),
        "task": task or section.get("task", "mixed"),
        "config": scene,
    }


def base_settings(params: dict, **pretrain_overrides):
    """(model spec, pre-training spec, scene config) of the embedded base model."""
    from bye.data.world import WorldConfig
    from bye.models.tiny import PretrainSpec, TinyLlavaSpec

    section = params.get("base", {})
    return (build(TinyLlavaSpec, section.get("model")), build(PretrainSpec, section.get("pretrain"), **pretrain_overrides),
            build(WorldConfig, params.get("world", {}).get("scene")))


def finetune_section(params: dict, *, provisional: bool = False, method: str | None = None) -> dict:
    """The ``finetune`` section, with ``provisional`` overriding it for the provisional model, and
    ``provisional.by_method[method]`` overriding that for the detector ``method`` (its own measured
    provisional length); without ``method``, the provisional model every detector can share."""
    section = dict(params.get("finetune", {}))
    if provisional:
        shared = dict(params.get("provisional") or {})
        by_method = shared.pop("by_method", None) or {}
        section.update(shared)
        if method is not None:
            section.update(by_method.get(method) or {})
    return section


def lora_settings(params: dict, *, provisional: bool = False, method: str | None = None, **overrides):
    from bye.models.finetune import LoraSettings

    return build(LoraSettings, finetune_section(params, provisional=provisional, method=method), **overrides)


def scan_settings(params: dict, *, method: str | None = None, epochs: float | None = None):
    """(provisional fine-tune settings, scan settings): ``extract``, ``profile`` and ``cluster`` sections."""
    from bye.detect.api import DETECTORS
    from bye.detect.scan import ExtractSettings, ProfileSettings, ScanSettings

    cluster = params.get("cluster", {})
    chosen = method or cluster.get("method", "bye")
    lora = lora_settings(params, provisional=True, method=chosen, epochs=epochs)
    profile = build(ProfileSettings, params.get("profile"))
    detector = dict(cluster.get("detectors", {}).get(chosen, {}))
    if chosen == "bye":  # the separation rule lives with the profile stage
        detector.update(rule=profile.rule, tau=profile.tau, residualise=profile.residualise)
    if chosen not in DETECTORS:
        raise ValueError(f"unknown detector {chosen!r}; available: {sorted(DETECTORS)}")
    extract = build(ExtractSettings, params.get("extract"))
    needed = tuple(sorted(set(extract.signals) | set(DETECTORS[chosen].signals)))
    return lora, ScanSettings(method=chosen, detector=detector, extract=replace(extract, signals=needed),
                              profile=profile)


def ingest_settings(params: dict, *, max_rejected_fraction: float | None = None):
    """(ingest limits, the bound on the rejected fraction)."""
    from bye.data.ingest import IngestLimits

    section = dict(params.get("ingest", {}))
    configured = section.pop("max_rejected_fraction", 0.05)  # a gate, not an IngestLimits field
    bound = max_rejected_fraction if max_rejected_fraction is not None else configured
    return build(IngestLimits, section), bound


def eval_settings(params: dict, **overrides):
    from bye.models.evaluate import EvalSettings

    return build(EvalSettings, params.get("eval"), **overrides)


def trigger(name: str, params: dict):
    """A registered trigger with its parameters from ``params.yaml`` (section ``attack.triggers``)."""
    from bye.attacks import get_trigger

    return get_trigger(name, **(params.get("attack", {}).get("triggers", {}).get(name) or {}))


def attack_settings(params: dict, *, rate=None, target=None, seed=None, questions=None) -> dict:
    """Keyword arguments of :func:`bye.attacks.poison.poison_submission` besides paths and trigger."""
    from bye.attacks.poison import DEFAULT_TARGET

    section = params.get("attack", {})
    return {"rate": rate if rate is not None else section.get("rate", 0.1),
            "target": target or section.get("target", DEFAULT_TARGET),
            "seed": seed if seed is not None else section.get("seed", 0),
            "questions": questions if questions is not None else section.get("questions")}
