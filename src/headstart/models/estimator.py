"""``headstart.ImageClassifier``: photos in, labels out, in scikit-learn's conventions.

The constructor only stores hyper-parameters, what changes the model; :meth:`~ImageClassifier.fit` takes photos (a
folder, a :class:`~headstart.data.Dataset`, or ``(paths, labels)``) and, as keywords, how to run (the cache, the
device, checkpoints, progress: :class:`~headstart.models.run_options.RunOptions`), and learns; the fitted state is
in attributes ending in ``_``; ``predict``, ``predict_proba`` and ``score`` take photos too (paths, folders, PIL
images or uint8 arrays). ``fit`` writes nothing but the feature cache and its memo (fine-tuning checkpoints too,
when ``checkpoint_dir`` is given): saving the model and the run folder are separate steps
(:meth:`~ImageClassifier.save`, :func:`headstart.workflows.training.write_run_folder`). :func:`load` is the one way
back from a model file.

The class follows scikit-learn's estimator protocol by duck typing (``get_params``, ``set_params``,
``__sklearn_tags__``, ``__sklearn_clone__``, ``__sklearn_is_fitted__``) instead of inheriting ``BaseEstimator``:
importing scikit-learn costs more than a second, and a cached re-run of ``headstart train`` imports none of it.
``sklearn.base.clone``, ``check_is_fitted`` and ``is_classifier`` work on it as on any scikit-learn classifier.

Example:
    >>> import headstart as hs
    >>> clf = hs.ImageClassifier(backbone="tf_efficientnet_lite0").fit("photos/", cache="/tmp/cache")
    >>> clf.predict(["a.jpg", "b.jpg"])
    array(['Bengal', 'pug'], dtype='<U17')
    >>> clf.save("pets.safetensors"); hs.load("pets.safetensors").classes_[:2]
    array(['Abyssinian', 'Bengal'], dtype='<U17')
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from headstart._distributed import current
from headstart._validation import check_choice, check_int, check_number, fail
from headstart.data import DEFAULT_MAX_PIXELS
from headstart.errors import DataError
from headstart.features import PRECISIONS, FeatureCache, describe_unusable
from headstart.models.backbone_names import check_backbone_choice
from headstart.models.classifier import Classifier
from headstart.models.finetune.config import Finetune
from headstart.models.fit_report import file_metadata, fit_report, params_from_file, stored_params
from headstart.models.fit_steps import (
    FLIP_CHOICES,
    SkippedFilesWarning,
    feature_blocks,
    fit_backbone,
    split_and_probe,
)
from headstart.models.inputs import as_dataset, photo_files
from headstart.models.memo import Memo
from headstart.models.probe_fit import fit_probe
from headstart.models.protocol import ClassifierProtocol
from headstart.models.run_options import RunOptions, constructor_run_options

__all__ = ["METHODS", "ImageClassifier", "SkippedFilesWarning", "load"]

METHODS = ("probe", "finetune", "scratch")
_CALLER = "ImageClassifier"
#: Where a deprecated spelling stops working (the warnings say so).
REMOVED_IN = "0.3"


class ImageClassifier(ClassifierProtocol):
    """An image classifier on an ImageNet-pretrained backbone: a linear probe on its cached features, or the
    network fine-tuned (or trained from scratch).

    ``fit`` extracts the features of every usable photo (cached, so a re-run computes nothing), splits off a
    seeded, stratified validation part that keeps identical files on one side, fits the probe (its
    regularisation chosen by cross-validation on the training part), lets that cross-validation decide whether
    to average each photo with its mirror image (when asked, or when the mirror views are cached), scores the
    validation part, and then (``refit=True``) fits the probe again on all photos. Fine-tuning trains the network
    (its head from zero by default); validation chooses how many epochs and whether the network beats the probe
    by more than chance, then the same schedule runs on all photos.
    Probabilities are temperature-calibrated on held-out predictions (out-of-fold for the probe, the validation
    part for networks), the temperature folded into the saved head.

    Args:
        backbone: a timm name; ``weights`` says where its weights come from (None: the offline package when
            installed, else the hub; ``"hub"``, ``"package"``, ``"none"`` or a checkpoint path). ``"auto"`` (the
            default): tf_efficientnet_lite1, unless lite2 or lite0 classifies the training part better photo by
            photo, by more than two paired standard errors (:mod:`headstart.models.selection`);
            ``"auto:resnet50,lite1"``: among those. With ``method="scratch"``, ``auto`` is its first candidate
            (the comparison of pretrained features says nothing of random weights).
        method: ``"probe"``, ``"finetune"`` or ``"scratch"`` (the same network from random weights, to see what
            transfer learning gives).
        finetune: the options of ``"finetune"``/``"scratch"``: a :class:`~headstart.models.finetune.config.Finetune`
            (or a dict of its fields); those left out are chosen by the number of photos.
        val_fraction: share of the photos held out for validation, in (0, 1).
        seed: seed of the split, the cross-validation folds and the training.
        refit: after validating, fit the saved model on all photos: the probe again; a network for as many
            epochs of the same schedule as validation chose (:mod:`headstart.models.finetune.fit`).
        flip_average: average each photo's features with its mirror image's, in training and in predictions:
            True, False, ``"auto"`` (the probe's cross-validation chooses, only when it gains more than one
            photo's worth; the mirror views are computed for it), or None (the default, as ``headstart train``
            without ``--flip-average``; also spelt ``"cached"``): each photo once, unless its mirror view is
            already in the cache (``headstart extract --flip-average``), and then cross-validation chooses at no
            cost.
        precision: ``auto`` (bf16 on CPUs with native bf16), ``fp32`` or ``bf16``.

    How to run (the cache, the device, batching, checkpoints, progress) is not a hyper-parameter: those are
    keywords of :meth:`fit` and of the predictions (:class:`~headstart.models.run_options.RunOptions`).

    Attributes:
        classes_: class names, the columns of :meth:`predict_proba`.
        model_: the fitted :class:`~headstart.models.classifier.Classifier` (trunk + linear head), what
            ``evaluate``, ``export_onnx`` and the attacks take.
        spec_: the backbone the model reads features from (weights, preprocessing, mirror averaging).
        unusable_: the photos ``fit`` skipped (each with the reason), also named by a :class:`SkippedFilesWarning`.
        report_: validation metrics and how the fit went: ``val_accuracy``, ``val_top5_accuracy``, ``val_ece``
            (15 bins), ``val_nll``, ``val_brier`` and ``calibration`` (with the reliability table),
            ``cv_accuracy``, ``C``, ``temperature``, ``flip_average`` and ``flip_average_cv``, ``backbone`` (and
            ``backbone_selection`` for ``auto``), ``n_train``/``n_val``, ``features`` (cached/computed),
            ``refit_on_all``, ``seconds``, ``validation`` (per class, confusion matrix); for networks also
            ``best_epoch``, ``epochs_run``, ``probe_val_accuracy``, ``history``, ``refit`` (photos, epochs,
            seconds, its epochs) and ``frozen_stages`` (how the frozen stages ran).
        validation_: the held-out photos: ``paths``, ``labels``, ``hashes`` and the fitted model's ``proba``
            (for a refit probe: the probe that had not seen them). None after :func:`load`.
        finetune_: the resolved fine-tuning options (None for the probe).
        run_options_: how ``fit`` ran (:class:`~headstart.models.run_options.RunOptions`; the defaults after
            :func:`load`); predictions read its ``cache`` unless given another.

    Predictions need every photo usable: ``predict``, ``predict_proba`` and ``score`` raise a
    :class:`~headstart.errors.DataError` naming the unusable ones (rows must line up with the photos given).

    Example:
        >>> import headstart as hs
        >>> clf = hs.ImageClassifier(method="probe").fit("photos/")
        >>> clf.score("test_photos/")
        0.917
        >>> ft = hs.ImageClassifier(method="finetune", finetune=hs.Finetune(epochs=5, lr=1e-4)).fit("photos/")
    """

    def __init__(
        self,
        *,
        backbone: str = "auto",
        weights: str | os.PathLike[str] | None = None,
        method: str = "probe",
        finetune: Finetune | Mapping[str, Any] | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        refit: bool = True,
        flip_average: bool | str | None = None,
        precision: str = "auto",
        **run_options: Any,
    ) -> None:
        if run_options:  # (where they were before 0.2: still used, with a FutureWarning)
            self._legacy_run = constructor_run_options(run_options, self._get_param_names(), REMOVED_IN)
        self.backbone = backbone
        self.weights = weights
        self.method = method
        self.finetune = finetune
        self.val_fraction = val_fraction
        self.seed = seed
        self.refit = refit
        self.flip_average = flip_average
        self.precision = precision

    def _validated(self) -> tuple[str, dict[str, Any], list[str] | None]:
        """Check every hyper-parameter (scikit-learn's words); return the method's name, the fine-tuning options
        given and ``auto``'s candidates (None for a named backbone): the backbone string is parsed here, once."""
        if isinstance(self.method, Finetune):  # (the older spelling: method=Finetune(...))
            warnings.warn(
                f"Passing a Finetune as 'method' is deprecated and will stop working in headstart {REMOVED_IN}. "
                "Pass method='finetune', finetune=Finetune(...) instead.",
                FutureWarning,
                stacklevel=4,  # (the caller of fit)
            )
            if self.finetune is not None:
                fail(
                    "finetune", _CALLER, "None when method is a Finetune (its options are the method's)", self.finetune
                )
            method, options = "finetune", self.method.validated().set_fields()
        else:
            if not isinstance(self.method, str) or self.method not in METHODS:
                fail("method", _CALLER, f"one of {', '.join(map(repr, METHODS))}", self.method)
            method, options = self.method, _finetune_options(self.finetune)
            if method == "probe" and options:
                fail(
                    "finetune",
                    _CALLER,
                    "None for method='probe' (fine-tuning options need method='finetune' or 'scratch')",
                    self.finetune,
                )
        candidates = check_backbone_choice(self.backbone, self.weights, method, _CALLER)
        check_number(self.val_fraction, "val_fraction", _CALLER, low=0, high=1, low_open=True, high_open=True)
        check_int(self.seed, "seed", _CALLER, low=0, high=2**32 - 1)
        check_choice(self.precision, "precision", _CALLER, PRECISIONS)
        if not isinstance(self.refit, (bool, np.bool_)):
            fail("refit", _CALLER, "a bool", self.refit)
        if not (
            self.flip_average is None
            or isinstance(self.flip_average, (bool, np.bool_))
            or (isinstance(self.flip_average, str) and self.flip_average in FLIP_CHOICES)
        ):
            fail("flip_average", _CALLER, "a bool, None, 'auto' or 'cached'", self.flip_average)
        return method, options, candidates

    # ----------------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        X: Any,
        y: Sequence[Any] | None = None,
        *,
        cache: str | os.PathLike[str] | FeatureCache | None = None,
        device: str = "auto",
        batch_size: int = 32,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        reuse: bool = True,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        progress: bool | None = None,
    ) -> ImageClassifier:
        """Learn from labelled photos: a data set folder (class folders, Oxford-IIIT Pet, PetImages, a CSV), a
        :class:`~headstart.data.Dataset`, ``(paths, labels)``, or paths with ``y`` = their labels.

        Unusable photos are skipped, named in a :class:`SkippedFilesWarning` and kept in ``unusable_``.

        Args:
            cache, device, batch_size, max_pixels, reuse, checkpoint_dir, resume, progress: how to run, not what
                to learn (:class:`~headstart.models.run_options.RunOptions`); ``progress`` defaults to showing
                bars when stderr is a terminal. Predictions read the same ``cache`` unless given another.

        Returns:
            ``self``, fitted.

        Example:
            >>> clf = ImageClassifier().fit((["a.jpg", "b.jpg", "c.jpg", "d.jpg"], ["cat", "cat", "dog", "dog"]))
            >>> clf.classes_
            array(['cat', 'dog'], dtype='<U3')
        """
        run = RunOptions(cache, device, batch_size, max_pixels, reuse, checkpoint_dir, resume, progress)
        return self._fit(X, y, run.filled_from(getattr(self, "_legacy_run", None)).checked(f"{_CALLER}.fit"))

    def _fit(self, X: Any, y: Sequence[Any] | None, run: RunOptions) -> ImageClassifier:
        started = time.perf_counter()
        method, options, candidates = self._validated()
        dataset = as_dataset(X, y, caller="fit")
        device = "cpu"
        if method != "probe":
            from headstart._distributed import init_from_env, resolve_device

            device = resolve_device(run.device)
            init_from_env(device)  # under torchrun: the processes share the extraction and the training
        cache = run.feature_cache()
        memo = Memo.beside(cache) if run.reuse else None
        common = dict(
            cache=cache,
            memo=memo,
            seed=self.seed,
            val_fraction=self.val_fraction,
            # (from scratch, unless asked: a pretrained probe's CV says nothing of how a random network sees mirrors)
            flip_average=False if method == "scratch" and self.flip_average is None else self.flip_average,
            progress=bool(run.progress) and current().is_main,
            precision=self.precision,
            **run.extraction(),
        )
        name = self.backbone
        if method == "scratch" and candidates is not None:  # pretrained features say nothing of random weights
            name, candidates = candidates[0], None
        backbone, selection = fit_backbone(
            dataset, name, candidates, self.weights, ensemble=method == "probe", **common
        )
        s = split_and_probe(dataset, backbone, keys=selection.split_keys if selection else None, **common)
        if selection is not None and selection.first_extraction and selection.chosen == selection.rows[0]["backbone"]:
            s.feats.n_cached, s.feats.n_computed, s.feats.seconds = selection.first_extraction  # (done there)
        probe_proba = s.probe.predict_proba(s.X[s.va])  # (the probe that has not seen the validation photos)
        validation = {
            "paths": [s.usable.paths[i] for i in s.va],
            "labels": s.labels[s.va],
            "hashes": [s.feats.hashes[i] for i in s.va],
            "proba": probe_proba,
        }
        blocks = feature_blocks(backbone.spec)
        refit = fit_probe(s.X, s.labels, random_state=self.seed, memo=memo, blocks=blocks) if self.refit else None
        if method == "probe":
            final = refit if refit is not None else s.probe
            model = Classifier(
                backbone.spec.with_flip_average(s.flip),
                [str(c) for c in final.classes_],
                final.coef_,
                final.intercept_,
                backbone.trunk(),
            )
            specific = {
                "cv_accuracy": float(final.cv_accuracy_),
                "C": [*final.member_C_] if final.member_C_ else float(final.C_),  # (an ensemble's: each member's)
                "temperature": float(final.temperature_),
                "refit_on_all": refit is not None,
            }
            config, history = None, None
        else:
            from headstart.models.finetune.fit import fit_network

            probe_right = s.probe.classes_[probe_proba.argmax(axis=1)] == s.labels[s.va]  # (validation photos)
            config = Finetune.for_data_size(
                len(s.usable), method=method, **{"seed": self.seed, "precision": self.precision, **options}
            )
            fit = fit_network(
                method,
                backbone,
                s.probe,
                refit,
                s.train_part,
                s.val_part,
                s.usable,
                dict(zip(map(str, s.usable.paths), s.feats.hashes)),
                config,
                flip=s.flip,
                features=(s.X, s.labels),
                memo=memo,
                device=device,
                checkpoint_dir=run.checkpoint_dir,
                resume=bool(run.resume),
                progress=bool(run.progress),
                lr_search=bool(config.lr_search),
                probe_val_proba=probe_proba,
                extract=dict(cache=cache, precision=self.precision, **run.extraction()),
            )
            model, history = fit.model, (fit.history if fit.skipped is None else None)  # (no epochs: no curves)
            if fit.val_proba is not None:  # (the validation run's network: it had not seen them)
                validation["proba"] = fit.val_proba
            specific = fit.report(float(np.mean(probe_right)) if method == "finetune" else None)  # (none: scratch)
        report = fit_report(dataset, s, backbone.name, model, validation, specific, selection, started, history)
        model.metadata.update(
            file_metadata(
                report,
                dataset,
                method,
                config,
                stored_params(self.get_params()),
                seed=self.seed,
                val_fraction=self.val_fraction,
            )
        )
        self._set_fitted(model, report, s.feats.unusable, config, validation, run)
        return self

    def _set_fitted(
        self,
        model: Classifier,
        report: dict[str, Any],
        unusable: list,
        finetune: Finetune | None,
        validation: dict[str, Any] | None,
        run: RunOptions | None = None,
    ) -> None:
        self.model_ = model
        self.classes_ = np.asarray(model.classes)
        self.spec_ = model.spec
        self.report_ = report
        self.unusable_ = list(unusable)
        self.finetune_ = finetune
        self.validation_ = validation
        self.run_options_ = run if run is not None else RunOptions()

    # ------------------------------------------------------------------------------------------------- predict
    def predict_proba(
        self,
        X: Any,
        *,
        cache: str | os.PathLike[str] | FeatureCache | None = None,
        batch_size: int = 32,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Class probabilities of photos: ``(n_photos, n_classes)``, columns in the order of ``classes_``, rows in
        the order of the photos (a folder's: sorted, recursive).

        Args:
            X: paths, a folder, a Dataset, a PIL image, an ``(H, W, 3)`` uint8 RGB array (one photo) or
                ``(N, H, W, 3)`` (N photos), or a list mixing them. Images in memory go through the decoding,
                preprocessing and cache that files go through (:func:`~headstart.models.inputs.photo_files`).
            cache, batch_size, max_pixels, progress: how to run (:class:`~headstart.models.run_options.RunOptions`);
                ``cache`` None: the one ``fit`` used, else the default cache folder.

        Raises:
            DataError: some photos are unusable (each is named with the reason).

        Example:
            >>> clf.predict_proba(["a.jpg", PIL.Image.open("b.jpg"), np.zeros((224, 224, 3), np.uint8)]).shape
            (3, 12)
        """
        self._check_fitted()
        if cache is None:
            cache = self.run_options_.cache
        run = RunOptions(cache=cache, batch_size=batch_size, max_pixels=max_pixels, progress=progress)
        run = run.filled_from(getattr(self, "_legacy_run", None)).checked(f"{_CALLER}.predict")
        with photo_files(X) as (files, names):
            feats = self.model_.features(
                files,
                cache=run.feature_cache(),
                precision=self.precision,
                progress=bool(run.progress),
                **run.extraction(),
            )
        if feats.unusable:
            named = [replace(u, path=names.get(Path(u.path), u.path)) for u in feats.unusable]  # (as given)
            raise DataError(
                f"{describe_unusable(named)}\nEvery photo given to predict must be usable (its "
                "row must line up): leave them out (`headstart scan` finds them), or use "
                "clf.model_.predict(paths), which skips them and says which."
            )
        return self.model_.predict_proba_features(feats.features)

    def predict(self, X: Any, **run: Any) -> np.ndarray:
        """The most probable class of each photo (given as to :meth:`predict_proba`, with its run options): a numpy
        array of labels from ``classes_``.

        Example:
            >>> clf.predict(["a.jpg", PIL.Image.open("b.jpg")])
            array(['Bengal', 'pug'], dtype='<U17')
        """
        proba = self.predict_proba(X, **run)
        return self.classes_[proba.argmax(axis=1)] if len(proba) else self.classes_[:0]

    def score(
        self, X: Any, y: Sequence[Any] | None = None, sample_weight: Sequence[float] | None = None, **run: Any
    ) -> float:
        """Accuracy on labelled photos (given as to :meth:`fit`): the share whose :meth:`predict` is the label.

        Example:
            >>> clf.score("test_photos/")
            0.917
        """
        dataset = as_dataset(X, y, caller="score")
        right = self.predict(dataset.paths, **run) == np.asarray(dataset.labels)
        return float(np.average(right, weights=sample_weight))

    # ------------------------------------------------------------------------------------------------ the file
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the fitted model as one self-contained safetensors file (atomic); :func:`load` reads it back.

        Example:
            >>> clf.save("pets.safetensors")
            PosixPath('pets.safetensors')
        """
        self._check_fitted()
        return Path(self.model_.save(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ImageClassifier:
        """The same as :func:`headstart.load` (the one loader), kept as an alias."""
        return load(path)

    def _repr_html_(self) -> str:
        """The model card a notebook shows (:mod:`headstart.models.card`)."""
        from headstart.models.card import model_card_html

        return model_card_html(self)


def load(path: str | os.PathLike[str]) -> ImageClassifier:
    """A fitted :class:`ImageClassifier` from a model file written by :meth:`ImageClassifier.save`, ``headstart
    train`` or any earlier headstart (whatever :meth:`Classifier.load` reads); no network, no code executed.

    Its hyper-parameters are those it was fitted with (from the file; for older files, what the file says: the
    backbone, method, seed); ``report_`` is the file's metrics; ``validation_`` is None.

    Example:
        >>> import headstart as hs
        >>> clf = hs.load("pets.safetensors")
        >>> clf.predict(["my_cat.jpg"])
        array(['Bengal'], dtype='<U17')
    """
    model = Classifier.load(path)
    meta = model.metadata
    params = params_from_file(meta, model.spec.name, ImageClassifier._get_param_names(), METHODS)
    clf = ImageClassifier(**params)
    finetune = None
    if isinstance(meta.get("finetune"), dict):
        finetune = Finetune(**{k: v for k, v in meta["finetune"].items() if k in Finetune.__dataclass_fields__})
    report = dict(meta.get("metrics")) if isinstance(meta.get("metrics"), dict) else {}
    clf._set_fitted(model, report, [], finetune, None)
    return clf


def _finetune_options(finetune: Finetune | Mapping[str, Any] | None) -> dict[str, Any]:
    """The fine-tuning options given (validated; unknown names fail), as a dict of set fields."""
    if finetune is None:
        return {}
    if isinstance(finetune, Finetune):
        return finetune.validated().set_fields()
    if isinstance(finetune, Mapping):
        return Finetune().replace(**finetune).set_fields()
    fail("finetune", _CALLER, "None, a Finetune or a dict of its fields", finetune)
    return {}
