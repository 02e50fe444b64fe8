"""``train``: an :class:`~headstart.models.estimator.ImageClassifier` fitted on a folder of photos, its run folder
written, its model file saved; and the two experiments around fine-tuning, ``find_learning_rate`` and ``sweep``.

``train`` is what ``headstart train`` runs: ``ImageClassifier(...).fit(data)``, then :func:`write_run_folder`
(``config.json``, ``metrics.json``, ``confusion_matrix.png``, ``misclassified.png``; for networks also
``metrics.jsonl`` and ``curves.png``), then the model file, last and atomically: a model file means its run folder
is complete.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart._console import wants_progress
from headstart._io import write_json, write_text_atomic
from headstart._validation import check_choice, fail
from headstart.data import DEFAULT_MAX_PIXELS, Dataset, load_dataset
from headstart.features import DEFAULT_BACKBONE, FeatureCache, extract_features
from headstart.models.classifier import Classifier
from headstart.models.estimator import METHODS, ImageClassifier, SkippedFilesWarning
from headstart.models.finetune_config import Finetune
from headstart.models.inputs import ResolvedBackbone, feature_cache
from headstart.models.memo import Memo, fit_probe, memo_pictures
from headstart.reports import classification_metrics, write_metric_pictures
from headstart.workflows.pair import write_together

__all__ = [
    "METHODS",
    "SkippedFilesWarning",
    "TrainResult",
    "default_run_dir",
    "find_learning_rate",
    "refit_summary",
    "sweep",
    "train",
    "write_run_folder",
]


@dataclass
class TrainResult:
    """What :func:`train` produced: the model (saved at ``model_path``), its run folder, its metrics (those of
    ``metrics.json`` without the per-class details) and the fitted estimator."""

    model: Classifier
    model_path: Path
    run_dir: Path
    metrics: dict[str, Any]
    estimator: ImageClassifier | None = None
    files: list[Path] = field(default_factory=list)  # what the run folder got (empty on other torchrun ranks)


def default_run_dir(model_path: str | os.PathLike[str]) -> Path:
    """``pets.safetensors`` → ``pets-run/`` beside it.

    Example:
        >>> default_run_dir("models/pets.safetensors")
        PosixPath('models/pets-run')
    """
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + "-run")


def train(
    data: str | os.PathLike[str] | Dataset,
    classifier: ImageClassifier | None = None,
    *,
    out: str | os.PathLike[str] = "model.safetensors",
    run_dir: str | os.PathLike[str] | None = None,
    split: str = "all",
    resume: str | os.PathLike[str] | None = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
    device: str = "auto",
    batch_size: int = 32,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    reuse: bool = True,
    progress: bool | None = None,
    **params: Any,
) -> TrainResult:
    """Fit an :class:`~headstart.models.estimator.ImageClassifier` on ``data``, write its run folder, save it.

    What to learn is the estimator's: pass one (``classifier``), or its hyper-parameters as keywords
    (``backbone=``, ``method=``, ``finetune=``, ``seed=``, …: ``params``) for a new one. The other keywords say how
    to run (:meth:`ImageClassifier.fit`'s) and where the results go.

    Args:
        data: a data set folder, Oxford-IIIT Pet root, PetImages folder, CSV, or a loaded :class:`Dataset`.
        classifier: the estimator to fit (unfitted, or fitted again); None: ``ImageClassifier(**params)``.
        out: the model file to write; the run folder defaults to ``<out stem>-run/`` beside it.
        split: ``all``, or ``train``/``test`` for data sets with an official split (Oxford-IIIT Pet).
        resume: the run folder of an interrupted fine-tuning run: continue after its last finished epoch.
            Fine-tuning checkpoints into the run folder each epoch.
        cache, device, batch_size, max_pixels, reuse, progress: how to run
            (:class:`~headstart.models.run_options.RunOptions`).
        params: hyper-parameters of the new estimator (``finetune_options=``, the older name of ``finetune=``,
            still works, with a FutureWarning).

    Returns:
        :class:`TrainResult`; under torchrun only rank 0 writes files.

    Example:
        >>> result = train("photos/", backbone="tf_efficientnet_lite0", out="pets.safetensors")
        >>> result.metrics["val_accuracy"], result.run_dir
        (0.92, PosixPath('pets-run'))
        >>> train("photos/", ImageClassifier(method="finetune"), out="ft.safetensors", device="cuda")
    """
    clf = _estimator(classifier, params)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split=split)
    out = Path(out)
    run = Path(resume) if resume is not None else Path(run_dir) if run_dir is not None else default_run_dir(out)
    network = clf.method != "probe"
    clf.fit(
        dataset,
        cache=cache,
        device=device,
        batch_size=batch_size,
        max_pixels=max_pixels,
        reuse=reuse,
        checkpoint_dir=run if network or resume is not None else None,
        resume=resume is not None,
        progress=progress,
    )
    metrics = {k: v for k, v in clf.report_.items() if k not in ("validation", "history")}
    from headstart.features import current

    files: list[Path] = []
    if current().is_main:  # under torchrun the other processes trained their shards; rank 0 writes
        clf.model_.metadata["data"]["split"] = split
        files = write_together(
            clf, run, out, lambda folder, run_id: write_run_folder(clf, folder, out=out, split=split, run_id=run_id)
        )
    return TrainResult(clf.model_, out, run, metrics, clf, files)


def _estimator(classifier: ImageClassifier | None, params: dict[str, Any]) -> ImageClassifier:
    """The estimator :func:`train` fits: the one given, or one made of the hyper-parameters given."""
    if "finetune_options" in params:
        warnings.warn(
            "train(finetune_options=...) is deprecated and will stop working in headstart 0.3: pass "
            "finetune=... (a Finetune or a dict of its fields), the ImageClassifier's own name for it.",
            FutureWarning,
            stacklevel=3,
        )
        options = params.pop("finetune_options")
        params.setdefault("finetune", options or None)
    if classifier is not None:
        if not isinstance(classifier, ImageClassifier):
            fail("classifier", "train", "an ImageClassifier or None", classifier)
        if params:
            raise TypeError(
                f"train got a classifier and its hyper-parameters {', '.join(sorted(params))}: set them on the "
                "classifier (classifier.set_params(...)) or pass only the keywords."
            )
        return classifier
    unknown = sorted(set(params) - set(ImageClassifier._get_param_names()))
    if unknown:
        raise TypeError(
            f"train got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; it takes the "
            f"ImageClassifier's hyper-parameters ({', '.join(ImageClassifier._get_param_names())}) and how to run "
            "(out, run_dir, split, resume, cache, device, batch_size, max_pixels, reuse, progress)."
        )
    clf = ImageClassifier(**params)
    if not isinstance(clf.method, Finetune):
        check_choice(clf.method, "method", "train", METHODS)
    return clf


def write_run_folder(
    clf: ImageClassifier,
    folder: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    split: str = "all",
    run_id: str | None = None,
) -> list[Path]:
    """The run folder of a classifier fitted in this session: what it was asked and what was refit
    (``config.json``), how it went (``metrics.json``: validation accuracy, calibration, the refit), its
    validation photos' ``confusion_matrix.png``, ``misclassified.png`` and ``reliability.png`` (calibration,
    15 bins); for ``backbone="auto"`` the candidates' table (``backbone_selection.json``); for networks the
    validation run's epochs (``metrics.jsonl``, ``curves.png``). Pictures come from the cache's memo when drawn
    before.

    The validation figures are those of models that had not seen the validation photos; the saved model is
    (by default) refit on all photos, and ``config.json``'s ``refit`` says how. Pictures drawn before are read
    from the memo beside the fit's feature cache (``clf.run_options_``).

    Returns:
        The files written.

    Example:
        >>> clf = ImageClassifier().fit("photos/")
        >>> [p.name for p in write_run_folder(clf, "pets-run")]
        ['config.json', 'confusion_matrix.png', 'misclassified.png', 'reliability.png', 'metrics.json']
    """
    validation = getattr(clf, "validation_", None)
    if validation is None:
        fail(
            "clf",
            "write_run_folder",
            "an ImageClassifier fitted in this session (a loaded one has no validation photos to draw)",
            clf,
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = clf.model_.metadata
    config = {
        "data": meta.get("data", {}).get("source"),
        "backbone": clf.backbone,
        "weights": None if clf.weights is None else str(clf.weights),
        "method": meta.get("method"),
        "out": None if out is None else str(out),
        "split": split,
        "val_fraction": clf.val_fraction,
        "seed": clf.seed,
        "refit": clf.refit,
        "precision": clf.precision,
        "batch_size": clf.run_options_.batch_size,
        "max_pixels": clf.run_options_.max_pixels,
        "flip_average": clf.report_["flip_average"],
    }
    if run_id is not None:
        config["run_id"] = run_id  # (the model file's metadata carries the same)
    if clf.finetune_ is not None:
        config["finetune"] = asdict(clf.finetune_)
    report = clf.report_
    config["backbone_chosen"] = report.get("backbone", clf.spec_.name)
    config["refit"] = refit_summary(report, meta.get("method"))
    written = [write_json(folder / "config.json", config)]
    if report.get("backbone_selection"):
        written.append(write_json(folder / "backbone_selection.json", report["backbone_selection"]))

    val = classification_metrics(list(validation["labels"]), validation["proba"], list(clf.classes_))
    title = f"validation ({len(validation['paths'])} photos)"
    memo = Memo.beside(clf.run_options_.feature_cache()) if clf.run_options_.reuse else None
    written += memo_pictures(
        memo,
        [title, val, list(validation["hashes"])],
        folder,
        lambda: write_metric_pictures(val, validation["paths"], folder, title=title),
    )
    calibration = report.get("calibration")
    if calibration is not None:
        from headstart.models.memo import source_digest

        def draw() -> list[Path]:
            from headstart.reports.calibration import plot_reliability

            return [plot_reliability(calibration, folder / "reliability.png", title=f"Reliability, {title}")]

        written += memo_pictures(
            memo, ["reliability", source_digest("headstart.reports.calibration"), title, calibration], folder, draw
        )
    history = clf.report_.get("history")
    if history is not None:
        import json

        from headstart.models.finetune import EpochRecord, plot_curves

        written.append(write_text_atomic(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history)))
        written.append(plot_curves([EpochRecord(**r) for r in history], folder / "curves.png"))
    written.append(write_json(folder / "metrics.json", clf.report_))
    return written


def refit_summary(report: dict[str, Any], method: str | None) -> dict[str, Any]:
    """What the saved model learnt from, in words and numbers: the validation part only picked settings, or the
    model was refit on all photos (and, for networks, for how many epochs of which schedule).

    Example:
        >>> refit_summary({"refit_on_all": True, "n_usable": 259, "n_val": 52}, "probe")["what"]
        'the probe, fitted again on all 259 photos (C and the temperature from its cross-validation)'
    """
    n, n_train = report.get("n_usable"), report.get("n_train")
    if not report.get("refit_on_all"):
        return {
            "on_all_photos": False,
            "photos": n_train,
            "what": f"the model fitted on the {n_train} training photos; the {report.get('n_val')} validation "
            "photos were only scored",
        }
    if method == "probe":
        return {
            "on_all_photos": True,
            "photos": n,
            "what": f"the probe, fitted again on all {n} photos (C and the temperature from its cross-validation)",
        }
    refit = report.get("refit") or {}
    epochs = refit.get("epochs", report.get("best_epoch"))
    what = (
        f"the network trained again on all {n} photos for {epochs} epoch(s) of the same schedule (the epoch "
        f"validation chose), its temperature {report.get('temperature', 1.0):.3g} from validation"
        if epochs
        else f"validation kept epoch 0 (fine-tuning did not beat the probe): the probe refit on all {n} photos"
    )
    return {"on_all_photos": True, "photos": n, "epochs": epochs, "seconds": refit.get("seconds"), "what": what}


def find_learning_rate(
    data: str | os.PathLike[str] | Dataset,
    *,
    backbone: str = "auto",
    weights: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] = "lr-find.png",
    steps: int | None = None,
    budget_s: float | None = None,
    finetune: Finetune | dict[str, Any] | None = None,
    cache: FeatureCache | str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    finetune_options: dict[str, Any] | None = None,
):
    """The lr range test on the network fine-tuning would train (probe head, same unfrozen part); writes the plot.

    ``steps`` defaults to :data:`~headstart.models.lr_find.DEFAULT_STEPS` and ``budget_s`` (the most seconds the
    steps may take; None: the default, 0: none) to :data:`~headstart.models.lr_find.DEFAULT_BUDGET_S`. The
    frozen stages run once per photo, so on Oxford pets (259 photos, 2 CPU cores) the whole test takes well under
    a minute; the result says how many steps ran, why it stopped and the seconds per step. ``finetune``: the
    fine-tuning options to test under (a Finetune or a dict of its fields; ``finetune_options`` is its older,
    deprecated name).

    Returns:
        :class:`headstart.models.lr_find.LrFindResult` with ``suggestion``, ``stopped``/``why`` and ``seconds``.

    Example:
        >>> result = find_learning_rate("photos/", out="lr.png", steps=20)
        >>> result.suggestion, result.why
        (0.00021, 'all 20 steps')
    """
    from headstart.models.finetune import build_network, start_from_probe
    from headstart.models.lr_find import DEFAULT_BUDGET_S, DEFAULT_STEPS, lr_range_test, plot_lr_find
    from headstart.models.selection import parse_auto, select_for_fit

    if finetune_options is not None:
        warnings.warn(
            "find_learning_rate(finetune_options=...) is deprecated and will stop working in headstart 0.3: pass "
            "finetune=... (a Finetune or a dict of its fields).",
            FutureWarning,
            stacklevel=2,
        )
        finetune = finetune if finetune is not None else finetune_options
    if isinstance(finetune, Finetune):
        finetune = finetune.set_fields()
    progress = wants_progress(progress)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    store = feature_cache(cache)
    candidates = parse_auto(backbone)
    # one backbone object: extraction (on a cache miss) and the range test; for auto the one `train` would choose
    source = (
        ResolvedBackbone(backbone, weights)
        if candidates is None
        else select_for_fit(
            dataset,
            candidates,
            cache=store,
            memo=Memo.beside(store),
            seed=0,
            val_fraction=0.2,
            weights=weights,
            progress=progress,
        ).backbone
    )
    feats = extract_features(dataset.paths, source, cache=store, progress=progress, flip_average=False)
    usable = dataset.subset(feats.indices.tolist())
    probe = fit_probe(feats.features, np.asarray(usable.labels), memo=Memo.beside(store))
    config = Finetune.for_data_size(len(usable), **(finetune or {}))
    classes = [str(c) for c in probe.classes_]
    network = build_network(source.load(), len(classes), config.head_dropout)
    start_from_probe(network, probe.coef_, probe.intercept_, probe.temperature_)
    budget = DEFAULT_BUDGET_S if budget_s is None else (budget_s or None)
    result = lr_range_test(
        network,
        usable,
        classes,
        source.spec.data_config,
        config,
        steps=steps or DEFAULT_STEPS,
        budget_s=budget,
        progress=progress,
        spec=source.spec,
        hashes=dict(zip(map(str, usable.paths), feats.hashes)),
    )
    plot_lr_find(result, Path(out))
    return result


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

    check_choice(method, "method", "sweep", ("finetune", "scratch"))
    Finetune().replace(**{k: v[0] for k, v in settings.items()})  # unknown names fail before any training
    folder = Path(out_dir)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    keys = list(settings)
    rows: list[dict[str, Any]] = []
    for values in itertools.product(*(settings[k] for k in keys)):
        variant = dict(zip(keys, values))
        name = ",".join(f"{k}={v}" for k, v in variant.items())
        slug = "_".join(f"{k}-{v}" for k, v in variant.items()).replace("/", "-")
        result = train(
            dataset,
            method=method,
            backbone=backbone,
            out=folder / f"{slug}.safetensors",
            run_dir=folder / slug,
            finetune={**(base_options or {}), **variant},
            progress=progress,
        )
        m = result.metrics
        rows.append(
            {
                "variant": name,
                **variant,
                "val_accuracy": m["val_accuracy"],
                "best_epoch": m["best_epoch"],
                "epochs_run": m["epochs_run"],
                "seconds": m["seconds"],
                "history": result.estimator.report_.get("history", []),
            }
        )
    write_json(folder / "results.json", rows)
    table = ["| variant | validation accuracy | best epoch | epochs | seconds |", "|---|---|---|---|---|"]
    table += [
        f"| {r['variant']} | {r['val_accuracy']:.3f} | {r['best_epoch']} | {r['epochs_run']} | {r['seconds']:.0f} |"
        for r in rows
    ]
    write_text_atomic(folder / "results.md", "\n".join(table) + "\n")
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
