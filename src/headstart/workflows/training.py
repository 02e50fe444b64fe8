"""``train``: an :class:`~headstart.models.estimator.ImageClassifier` fitted on a folder of photos, its run folder
written, its model file saved. The two experiments around fine-tuning, ``find_learning_rate`` and ``sweep``, are
in :mod:`headstart.workflows.experiments`.

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

from headstart._io import write_json, write_text_atomic
from headstart._validation import check_choice, fail
from headstart.data import DEFAULT_MAX_PIXELS, Dataset, load_dataset
from headstart.features import FeatureCache
from headstart.models.classifier import Classifier
from headstart.models.estimator import METHODS, ImageClassifier, SkippedFilesWarning
from headstart.models.finetune.config import Finetune
from headstart.models.memo import Memo, memo_pictures
from headstart.reports import classification_metrics, write_metric_pictures
from headstart.workflows.pair import write_together
from headstart.workflows.runs import ResumeError, check_fresh_start, resume_request, start_run

__all__ = [
    "METHODS",
    "SkippedFilesWarning",
    "TrainResult",
    "default_run_dir",
    "refit_summary",
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
    out: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    split: str | None = None,
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
        out: the model file to write (None: ``model.safetensors``); the run folder defaults to ``<out stem>-run/``
            beside it.
        split: ``all`` (None), or ``train``/``test`` for data sets with an official split (Oxford-IIIT Pet).
        resume: the run folder of an interrupted fine-tuning run: continue after its last finished epoch (one
            that had stopped early, or trained every epoch, goes straight to what is left: the refit, the
            saving). Fine-tuning checkpoints into the run folder each epoch. What this call leaves out (``out``,
            ``split``, the hyper-parameters) comes from the run folder, the model file too; what it gives must
            equal the run's, else :class:`~headstart.workflows.runs.ResumeError` names the differences
            (:mod:`headstart.workflows.runs`).
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
    if resume is not None:
        data, classifier, params, out, split = _resumed(resume, data, classifier, params, out, run_dir, split)
    clf = _estimator(classifier, params)
    split = split or "all"
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split=split)
    out = Path(out if out is not None else "model.safetensors")
    run = Path(resume) if resume is not None else Path(run_dir) if run_dir is not None else default_run_dir(out)
    network = clf.method != "probe"
    from headstart._distributed import current

    if resume is None and current().is_main:
        check_fresh_start(run)
        if network:
            asked = {"data": str(dataset.root), "split": split, **_asked(clf.get_params()), "out": str(out)}
            start_run(run, asked)
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


#: The estimator's hyper-parameters a run folder records (with the data, split, options and model file).
ASKED_PARAMS = ("method", "backbone", "weights", "val_fraction", "seed", "refit", "precision", "flip_average")


def _asked(params: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as a run folder records them: the fine-tuning options given (a dict), weights as text."""
    asked = {k: v for k, v in params.items() if k in ASKED_PARAMS}
    if asked.get("weights") is not None:
        asked["weights"] = str(asked["weights"])
    if "finetune" in params:
        options = params["finetune"]
        asked["finetune"] = (
            options if isinstance(options, Finetune) else Finetune().replace(**(options or {}))
        ).set_fields()
    return asked


def _resumed(
    resume: str | os.PathLike[str],
    data: Any,
    classifier: ImageClassifier | None,
    params: dict[str, Any],
    out: str | os.PathLike[str] | None,
    run_dir: str | os.PathLike[str] | None,
    split: str | None,
) -> tuple[Dataset, ImageClassifier | None, dict[str, Any], str, str]:
    """The run ``resume`` continues: what the call gave checked against its folder (every difference named at
    once), the rest filled from it (:func:`~headstart.workflows.runs.resume_request`)."""
    if run_dir is not None and Path(run_dir) != Path(resume):
        raise ResumeError(
            f"--run-dir {run_dir} and --resume {resume} name two run folders; a resumed run stays in its own "
            "folder: leave --run-dir out."
        )
    split = split or resume_request(resume, {}).get("split") or "all"  # (a missing or finished run ends here)
    dataset = data if isinstance(data, Dataset) else load_dataset(data, split=split)
    given = _asked(classifier.get_params() if classifier is not None else params)
    given.update({"data": dataset.root, "split": split, **({"out": out} if out is not None else {})})
    record = resume_request(resume, given)
    if classifier is None:
        params = {k: record[k] for k in ASKED_PARAMS if k in record}
        params["finetune"] = record.get("finetune") or None
    return dataset, classifier, params, record["out"], split


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
        "model": None if out is None else os.path.relpath(Path(out).absolute(), folder.absolute()),
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

        from headstart.models.finetune.parts import EpochRecord, plot_curves

        written.append(write_text_atomic(folder / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history)))
        written.append(
            plot_curves([EpochRecord(**r) for r in history], folder / "curves.png", kept=report.get("best_epoch"))
        )
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
    start = " from random weights" if method == "scratch" else ""
    what = (
        f"the network trained{start} again on all {n} photos for {epochs} epoch(s) of the same schedule (the "
        f"epoch validation kept), its temperature {report.get('temperature', 1.0):.3g} from validation"
        if epochs
        else f"fine-tuning skipped (validation could not judge it): the probe refit on all {n} photos"
        if report.get("finetune_skipped")
        else f"validation kept epoch 0 (fine-tuning did not beat the probe): the probe refit on all {n} photos"
    )
    return {"on_all_photos": True, "photos": n, "epochs": epochs, "seconds": refit.get("seconds"), "what": what}
