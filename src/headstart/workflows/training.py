"""Train a classifier on a folder of photos: features from the cache, a linear probe, a run folder to look at."""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from headstart.features.backbones import DEFAULT_BACKBONE, cached_trunk_weights
from headstart.models.classifier import Classifier
from headstart.data.datasets import Dataset, load_dataset, train_val_split
from headstart.errors import DataError
from headstart.features.extract import FeatureCache, describe_unusable, extract_features
from headstart.data.images import DEFAULT_MAX_PIXELS
from headstart.models.memo import Memo, fit_probe, memo_pictures
from headstart.reports.metrics import classification_metrics, public_metrics, write_metric_pictures

METHODS = ("probe", "finetune", "scratch")


class SkippedFilesWarning(UserWarning):
    """Some files could not be used; the message names them and why."""


@dataclass
class TrainResult:
    """What :func:`train` produced: the model (also saved at ``model_path``), its run folder and metrics."""

    model: Classifier
    model_path: Path
    run_dir: Path
    metrics: dict[str, Any]


def default_run_dir(model_path: Path) -> Path:
    """``pets.safetensors`` → ``pets-run/`` beside it."""
    return model_path.with_name(model_path.stem + "-run")


def train(
    data: str | os.PathLike[str] | Dataset,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike[str] | None = None,
    method: str = "probe",
    out: str | os.PathLike[str] = "model.safetensors",
    run_dir: str | os.PathLike[str] | None = None,
    split: str = "all",
    val_fraction: float = 0.2,
    seed: int = 0,
    refit: bool = True,
    precision: str = "auto",
    batch_size: int = 32,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    cache: FeatureCache | None = None,
    progress: bool = False,
    finetune_options: dict[str, Any] | None = None,
    resume: str | os.PathLike[str] | None = None,
    device: str = "auto",
    reuse: bool = True,
    flip_average: bool | None = None,
) -> TrainResult:
    """Train a classifier for the classes in ``data`` and save it to ``out``.

    The probe: features of every usable photo (cached), a seeded stratified train/validation split that keeps
    identical files on one side, logistic regression whose regularisation is chosen by cross-validation on the
    training part, validation metrics and pictures, then (``refit=True``) a final fit on all the photos.

    Args:
        data: a data set folder, Oxford-IIIT Pet root, PetImages folder, CSV, or a loaded :class:`Dataset`.
        backbone: timm name; ``weights`` says where its weights come from (see :func:`load_backbone`).
        method: ``probe`` (logistic regression on cached features), ``finetune`` (the probe's head, then the
            backbone unfrozen at low depth-wise learning rates; see :mod:`headstart.models.finetune`) or ``scratch``
            (the same network from random weights, to see what transfer learning gives).
        finetune_options: fields of :class:`headstart.models.finetune.FinetuneConfig` overriding the size-based defaults.
        resume: the run folder of an interrupted fine-tuning run: continue after its last finished epoch.
        device: where fine-tuning runs: ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        out: the model file to write; the run folder defaults to ``<out stem>-run/`` beside it.
        split: ``all``, or ``train``/``test`` for data sets with an official split (Oxford-IIIT Pet).
        flip_average: each photo's features are the mean over it and its mirror image, in training and in the
            saved model's predictions: about a point of accuracy on pet photos, but wrong where a mirror image
            means something else (digits, text). ``None`` (default) lets the probe's cross-validation on the
            training part choose: averaging only when it scores higher by more than one training photo's worth
            (otherwise the cheaper single view); both feature sets come from one extraction pass.
        reuse: read probe fits and run pictures back from the cache's memo when their inputs are unchanged
            (see :mod:`headstart.models.memo`); ``False`` computes them again (the result is the same).

    Example:
        >>> result = train("photos/", out="pets.safetensors")
        >>> result.metrics["val_accuracy"]
        0.92
    """
    if method not in METHODS:
        raise ValueError(f"The 'method' parameter of train must be one of {METHODS}. Got {method!r} instead.")
    start = time.perf_counter()
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split=split)
    out = Path(out)
    run = Path(resume) if resume is not None else Path(run_dir) if run_dir is not None else default_run_dir(out)
    cache = cache if cache is not None else FeatureCache()

    from headstart.features.distributed import init_from_env, resolve_device

    if method != "probe":
        device = resolve_device(device)
    group = init_from_env(device) if method != "probe" else None  # under torchrun: the processes share the extraction
    feats = extract_features(
        dataset.paths, backbone, weights=weights, cache=cache, precision=precision, batch_size=batch_size,
        max_pixels=max_pixels, progress=progress and (group is None or group.is_main),
        flip_average=True if flip_average is None else flip_average,
    )
    if feats.unusable:
        warnings.warn(describe_unusable(feats.unusable), SkippedFilesWarning, stacklevel=2)
    usable = dataset.subset(feats.indices.tolist())
    if len(set(usable.labels)) < 2:
        raise DataError(f"Only {len(usable)} usable photos in {len(set(usable.labels))} class(es): a classifier needs at least 2 classes.")
    labels = np.asarray(usable.labels)
    X = feats.features

    train_part, val_part = train_val_split(usable, val_fraction=val_fraction, seed=seed, groups=feats.hashes)
    row_of = {s.path: i for i, s in enumerate(usable.samples)}
    tr = np.array([row_of[s.path] for s in train_part.samples])
    va = np.array([row_of[s.path] for s in val_part.samples])

    memo = Memo.beside(cache) if reuse else None
    probe = fit_probe(X[tr], labels[tr], random_state=seed, memo=memo)
    flip_cv: dict[str, float] = {}
    if flip_average is None:  # the data decide: is a photo's mirror image the same class here?
        single = extract_features(dataset.paths, backbone, weights=weights, cache=cache, precision=precision,
                                  batch_size=batch_size, max_pixels=max_pixels, flip_average=False)
        single_probe = fit_probe(single.features[tr], labels[tr], random_state=seed, memo=memo)
        flip_cv = {"on": float(probe.cv_accuracy_), "off": float(single_probe.cv_accuracy_)}
        # Only when it helps by more than one photo's worth (a one-photo difference in CV is noise; nan: no).
        flip_average = bool(probe.cv_accuracy_ - single_probe.cv_accuracy_ > 1.5 / len(tr))
        if not flip_average:  # (the run's extraction numbers stay those of the pass that computed both)
            single.n_cached, single.n_computed, single.seconds = feats.n_cached, feats.n_computed, feats.seconds
            feats, X, probe = single, single.features, single_probe
    val_metrics = classification_metrics(labels[va], probe.predict_proba(X[va]), [str(c) for c in probe.classes_])
    if method != "probe":
        return _train_network(dataset, usable, train_part, val_part, probe, feats, dict(
            method=method, backbone=backbone, weights=weights, out=out, run=run, split=split, seed=seed,
            val_fraction=val_fraction, precision=precision, finetune_options=finetune_options, progress=progress,
            started=start, probe_val_accuracy=val_metrics["accuracy"], resume=resume is not None, device=device,
            flip_average=flip_average, flip_cv=flip_cv))
    final = fit_probe(X, labels, random_state=seed, memo=memo) if refit else probe  # C chosen again, by CV on all

    spec, trunk = cached_trunk_weights(backbone, weights)
    spec = spec.with_flip_average(flip_average)
    metrics = {
        "val_accuracy": val_metrics["accuracy"],
        "val_top5_accuracy": val_metrics["top5_accuracy"],
        "cv_accuracy": float(final.cv_accuracy_),
        "C": float(final.C_),
        "temperature": float(final.temperature_),
        "n_images": len(dataset),
        "n_usable": len(usable),
        "n_train": int(len(tr)),
        "n_val": int(len(va)),
        "n_classes": len(final.classes_),
        "skipped": [u.to_dict() for u in feats.unusable],
        "ignored": [str(p) for p in dataset.ignored],
        "features": {"cached": feats.n_cached, "computed": feats.n_computed, "seconds": round(feats.seconds, 3)},
        "refit_on_all": refit,
        "flip_average": flip_average,
        "flip_average_cv": flip_cv,
        "seconds": None,
    }
    model = Classifier(
        spec,
        [str(c) for c in final.classes_],
        final.coef_,
        final.intercept_,
        trunk,
        {
            "method": method,
            "metrics": {k: v for k, v in metrics.items() if k not in ("skipped", "ignored")},
            "data": {"source": str(dataset.root), "kind": dataset.kind, "split": split, "seed": seed,
                     "val_fraction": val_fraction},
        },
    )
    model.save(out)

    run.mkdir(parents=True, exist_ok=True)
    config = {"data": str(dataset.root), "backbone": backbone, "weights": None if weights is None else str(weights),
              "method": method, "out": str(out), "split": split, "val_fraction": val_fraction, "seed": seed,
              "refit": refit, "precision": precision, "batch_size": batch_size, "max_pixels": max_pixels,
              "flip_average": flip_average}
    (run / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    val_paths = [usable.samples[i].path for i in va]
    title = f"validation ({len(va)} photos)"
    memo_pictures(memo, [title, val_metrics, [feats.hashes[i] for i in va]], run,
                  lambda: write_metric_pictures(val_metrics, val_paths, run, title=title))
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    (run / "metrics.json").write_text(json.dumps({**metrics, "validation": public_metrics(val_metrics)}, indent=2) + "\n")
    return TrainResult(model, out, run, metrics)


def _train_network(dataset, usable, train_part, val_part, probe, feats, o: dict[str, Any]) -> TrainResult:
    """Fine-tune (from the probe's head) or train from scratch; keep the best epoch; save like a probe."""
    import torch

    from headstart.features.backbones import load_backbone
    from headstart.features.distributed import current
    from headstart.models.finetune import FinetuneConfig, build_network, network_to_classifier, run_finetune

    user = dict(o["finetune_options"] or {})
    config = FinetuneConfig.for_data_size(len(usable), **{"seed": o["seed"], "precision": o["precision"], **user})
    if o["method"] == "scratch":  # nothing pretrained to protect or keep: every layer, full rate, own BN statistics
        config = config.replace(**{"unfreeze": "all", "layer_decay": 1.0, "freeze_bn": False, "lr": 1e-3,
                                   "patience": 0, **user})
    classes = [str(c) for c in probe.classes_]
    backbone = load_backbone(o["backbone"], "none" if o["method"] == "scratch" else o["weights"])
    network = build_network(backbone, len(classes), config.head_dropout)
    if o["method"] == "finetune":  # LP-FT: the head starts where the linear probe ended (before calibration)
        with torch.no_grad():
            network.head.weight.copy_(torch.from_numpy(probe.coef_ * probe.temperature_).float())
            network.head.bias.copy_(torch.from_numpy(probe.intercept_ * probe.temperature_).float())
    run = Path(o["run"])
    if current().is_main:
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(json.dumps(
            {"data": str(dataset.root), "backbone": o["backbone"],
             "weights": None if o["weights"] is None else str(o["weights"]), "method": o["method"], "out": str(o["out"]),
             "split": o["split"], "val_fraction": o["val_fraction"], "finetune": asdict(config)}, indent=2) + "\n")
    result = run_finetune(network, train_part, val_part, classes, backbone.spec.data_config, config, run,
                          resume=bool(o.get("resume")), progress=o["progress"], device=o["device"])
    model = network_to_classifier(result.network, backbone.with_flip_average(o["flip_average"]), classes,
                                  {"method": o["method"]})
    val_feats = model.features(val_part.paths, precision=config.precision)  # under torchrun: shared out too
    if not current().is_main:  # the other processes trained their shards; rank 0 scores and writes
        return TrainResult(model, Path(o["out"]), run, {"best_epoch": result.best_epoch})
    val_metrics = classification_metrics(val_part.subset(val_feats.indices.tolist()).labels,
                                         model.predict_proba_features(val_feats.features), classes)
    metrics = {
        "val_accuracy": val_metrics["accuracy"], "val_top5_accuracy": val_metrics["top5_accuracy"],
        "probe_val_accuracy": o["probe_val_accuracy"], "best_epoch": result.best_epoch, "epochs_run": sum(1 for r in result.history if r.epoch > 0),
        "stopped_early": result.stopped_early, "n_images": len(dataset), "n_usable": len(usable),
        "n_train": len(train_part), "n_val": len(val_part), "n_classes": len(classes),
        "skipped": [u.to_dict() for u in feats.unusable],
        "ignored": [str(p) for p in dataset.ignored], "refit_on_all": False,
        "flip_average": o["flip_average"], "flip_average_cv": o.get("flip_cv", {}),
        "features": {"cached": feats.n_cached, "computed": feats.n_computed, "seconds": round(feats.seconds, 3)},
        "cv_accuracy": float("nan"), "C": float("nan"),
    }
    model.metadata.update({"metrics": {k: v for k, v in metrics.items() if k not in ("skipped", "ignored")},
                           "finetune": asdict(config),
                           "data": {"source": str(dataset.root), "kind": dataset.kind, "split": o["split"],
                                    "seed": o["seed"], "val_fraction": o["val_fraction"]}})
    model.save(o["out"])
    write_metric_pictures(val_metrics, val_part.subset(val_feats.indices.tolist()).paths, run,
                          title=f"validation ({len(val_part)} photos)")
    metrics["seconds"] = round(time.perf_counter() - o["started"], 3)
    (run / "metrics.json").write_text(json.dumps({**metrics, "validation": public_metrics(val_metrics),
                                                  "history": [asdict(r) for r in result.history]}, indent=2) + "\n")
    return TrainResult(model, Path(o["out"]), run, metrics)


def find_learning_rate(
    data: str | os.PathLike[str] | Dataset,
    *,
    backbone: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "lr-find.png",
    steps: int = 60,
    finetune_options: dict[str, Any] | None = None,
    progress: bool = False,
):
    """The lr range test on the network fine-tuning would train (probe head, same unfrozen part); writes the plot.

    Returns:
        :class:`headstart.models.finetune.LrFindResult` with ``suggestion``.
    """
    import torch

    from headstart.features.backbones import load_backbone
    from headstart.models.finetune import FinetuneConfig, build_network, lr_range_test, plot_lr_find

    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    feats = extract_features(dataset.paths, backbone, weights=weights, progress=progress)
    usable = dataset.subset(feats.indices.tolist())
    from headstart.models.probe import LinearProbe

    probe = LinearProbe(calibrate=False).fit(feats.features, np.asarray(usable.labels))
    config = FinetuneConfig.for_data_size(len(usable), **(finetune_options or {}))
    classes = [str(c) for c in probe.classes_]
    loaded = load_backbone(backbone, weights)
    network = build_network(loaded, len(classes), config.head_dropout)
    with torch.no_grad():
        network.head.weight.copy_(torch.from_numpy(probe.coef_).float())
        network.head.bias.copy_(torch.from_numpy(probe.intercept_).float())
    result = lr_range_test(network, usable, classes, loaded.spec.data_config, config, steps=steps, progress=progress)
    plot_lr_find(result, Path(out))
    return result


def parse_settings(items: list[str]) -> dict[str, list[Any]]:
    """``["head_dropout=0,0.2,0.5", "lr=1e-4"]`` → ``{"head_dropout": [0, 0.2, 0.5], "lr": [0.0001]}``."""
    import yaml

    out: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ValueError(f"--set needs NAME=V1,V2,… (e.g. head_dropout=0,0.2,0.5); got {item!r}.")
        out[key.strip().replace("-", "_")] = [yaml.safe_load(v.strip()) for v in values.split(",")]
    return out


def sweep(
    data: str | os.PathLike[str] | Dataset,
    settings: dict[str, list[Any]],
    *,
    method: str = "finetune",
    out_dir: str | os.PathLike[str] = "sweep",
    backbone: str = DEFAULT_BACKBONE,
    base_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Train one variant per combination of ``settings`` (a grid) and compare them in a table and one picture.

    Writes ``results.json``, ``results.md`` and ``comparison.png`` (validation accuracy per epoch, and the best of
    each variant) in ``out_dir``; each variant's model and run folder sit beside them.

    Example:
        >>> sweep("photos/", {"head_dropout": [0, 0.2, 0.5, 0.8]})   # the lesson's dropout experiment
    """
    import itertools

    from headstart.models.finetune import FinetuneConfig

    if method not in ("finetune", "scratch"):
        raise ValueError(f"sweep trains networks: --method finetune or scratch, not {method!r}.")
    FinetuneConfig().replace(**{k: v[0] for k, v in settings.items()})  # unknown names fail before any training
    folder = Path(out_dir)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    keys = list(settings)
    rows: list[dict[str, Any]] = []
    for values in itertools.product(*(settings[k] for k in keys)):
        variant = dict(zip(keys, values))
        name = ",".join(f"{k}={v}" for k, v in variant.items())
        slug = "_".join(f"{k}-{v}" for k, v in variant.items()).replace("/", "-")
        result = train(dataset, method=method, backbone=backbone, out=folder / f"{slug}.safetensors",
                       run_dir=folder / slug, finetune_options={**(base_options or {}), **variant}, progress=progress)
        history = json.loads((result.run_dir / "metrics.json").read_text()).get("history", [])
        rows.append({"variant": name, **variant, "val_accuracy": result.metrics["val_accuracy"],
                     "best_epoch": result.metrics["best_epoch"], "epochs_run": result.metrics["epochs_run"],
                     "seconds": result.metrics["seconds"], "history": history})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    table = ["| variant | validation accuracy | best epoch | epochs | seconds |", "|---|---|---|---|---|"]
    table += [f"| {r['variant']} | {r['val_accuracy']:.3f} | {r['best_epoch']} | {r['epochs_run']} | {r['seconds']:.0f} |"
              for r in rows]
    (folder / "results.md").write_text("\n".join(table) + "\n")
    _plot_sweep(rows, folder / "comparison.png")
    return rows


def _plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    from matplotlib.figure import Figure

    from headstart._io import save_figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    curves, bars = fig.subplots(1, 2)
    for r in rows:
        h = r["history"]
        curves.plot([e["epoch"] for e in h], [e["val_accuracy"] for e in h], "o-", label=r["variant"])
        curves.plot([e["epoch"] for e in h], [e["train_accuracy"] for e in h], ":", color=curves.lines[-1].get_color())
    curves.set(xlabel="epoch", ylabel="accuracy", title="Validation (solid) and training (dotted) accuracy")
    curves.grid(alpha=0.3)
    curves.legend(fontsize=8)
    bars.barh([r["variant"] for r in rows], [r["val_accuracy"] for r in rows], color="tab:blue")
    bars.set(xlabel="validation accuracy (best epoch)", title="Variants", xlim=(0, 1))
    for i, r in enumerate(rows):
        bars.text(r["val_accuracy"], i, f" {r['val_accuracy']:.3f}", va="center")
    return save_figure(fig, path)
