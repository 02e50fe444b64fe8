"""``headstart.ImageClassifier``: photos in, labels out, in scikit-learn's conventions.

The constructor only stores hyper-parameters; :meth:`~ImageClassifier.fit` takes photos (a folder, a
:class:`~headstart.data.Dataset`, or ``(paths, labels)``) and learns; the fitted state is in attributes ending in
``_``; ``predict``, ``predict_proba`` and ``score`` take photos too. ``fit`` writes nothing but the feature cache
and its memo (fine-tuning checkpoints too, when ``checkpoint_dir`` is given): saving the model and the run folder
are separate steps (:meth:`~ImageClassifier.save`, :func:`headstart.workflows.training.write_run_folder`).

The class follows scikit-learn's estimator protocol by duck typing (``get_params``, ``set_params``,
``__sklearn_tags__``, ``__sklearn_clone__``, ``__sklearn_is_fitted__``) instead of inheriting ``BaseEstimator``:
importing scikit-learn costs more than a second, and a cached re-run of ``headstart train`` imports none of it.
``sklearn.base.clone``, ``check_is_fitted`` and ``is_classifier`` work on it as on any scikit-learn classifier.

Example:
    >>> import headstart as hs
    >>> clf = hs.ImageClassifier(backbone="tf_efficientnet_lite0").fit("photos/")
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
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from headstart._validation import check_choice, check_int, check_number, fail
from headstart.data import DEFAULT_MAX_PIXELS, Dataset, train_val_split
from headstart.errors import DataError
from headstart.features import PRECISIONS, FeatureCache, describe_unusable, extract_features
from headstart.models.classifier import Classifier
from headstart.models.finetune_config import Finetune
from headstart.models.inputs import ResolvedBackbone, as_dataset, feature_cache, photo_paths, split_keys
from headstart.models.memo import Memo, fit_probe
from headstart.models.protocol import ClassifierProtocol
from headstart.models.selection import parse_auto, select_for_fit
from headstart.reports import classification_metrics, public_metrics
from headstart.reports.calibration import calibration_metrics

__all__ = ["METHODS", "ImageClassifier", "SkippedFilesWarning", "load"]

METHODS = ("probe", "finetune", "scratch")
#: ``flip_average`` besides True/False/None: ``"auto"`` (= None: cross-validation chooses, computing the mirror
#: views), ``"cached"`` (the default: one view, unless the mirror views are cached; then cross-validation chooses).
FLIP_CHOICES = ("auto", "cached")
_CALLER = "ImageClassifier"


class SkippedFilesWarning(UserWarning):
    """Some photos could not be used and were left out; the message names them and says why."""


class ImageClassifier(ClassifierProtocol):
    """An image classifier on an ImageNet-pretrained backbone: a linear probe on its cached features, or the
    network fine-tuned (or trained from scratch).

    ``fit`` extracts the features of every usable photo (cached, so a re-run computes nothing), splits off a
    seeded, stratified validation part that keeps identical files on one side, fits the probe (its
    regularisation chosen by cross-validation on the training part), lets that cross-validation decide whether
    to average each photo with its mirror image (when asked, or when the mirror views are cached), scores the
    validation part, and then (``refit=True``) fits the probe again on all photos. Fine-tuning starts from the
    probe's head (LP-FT); validation chooses how many epochs, then the same schedule runs on all photos.
    Probabilities are temperature-calibrated on held-out predictions (out-of-fold for the probe, the validation
    part for networks), the temperature folded into the saved head.

    Args:
        backbone: a timm name; ``weights`` says where its weights come from (None: the offline package when
            installed, else the hub; ``"hub"``, ``"package"``, ``"none"`` or a checkpoint path). ``"auto"`` (the
            default): tf_efficientnet_lite1, unless lite2 or lite0 cross-validates better on the training part by
            more than 1.5 photos' worth (:mod:`headstart.models.selection`);
            ``"auto:resnet50,lite1"``: among those.
        method: ``"probe"``, ``"finetune"``, ``"scratch"`` (the same network from random weights, to see what
            transfer learning gives), or a :class:`~headstart.models.finetune_config.Finetune` (fine-tune with
            those options).
        finetune: options of ``"finetune"``/``"scratch"``: a ``Finetune`` or a dict of its fields; those left
            out are chosen by the number of photos.
        val_fraction: share of the photos held out for validation, in (0, 1).
        seed: seed of the split, the cross-validation folds and the training.
        refit: after validating, fit the saved model on all photos: the probe again; a network for as many
            epochs of the same schedule as validation chose (:mod:`headstart.models.network_fit`).
        flip_average: average each photo's features with its mirror image's, in training and in predictions:
            True, False, or ``None``/``"auto"`` to let the probe's cross-validation choose (only when it gains more
            than one photo's worth; the mirror views are computed for it). The default, ``"cached"``, computes each
            photo once: the photo alone, unless the mirror views are already in the cache (``headstart extract
            --flip-average``), and then cross-validation chooses at no cost.
        precision: ``auto`` (bf16 on CPUs with native bf16), ``fp32`` or ``bf16``.
        batch_size: photos per batch of feature extraction.
        max_pixels: photos larger than this are unusable (decompression-bomb guard); None: no limit.
        device: where fine-tuning runs: ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        reuse: read probe fits back from the cache's memo when their inputs are unchanged (same result, faster).
        cache: the feature cache: None (the default cache folder), a folder, a ``.sqlite`` file or a
            :class:`~headstart.features.FeatureCache`.
        checkpoint_dir: where fine-tuning writes its checkpoint, ``metrics.jsonl`` and ``curves.png`` each epoch;
            None writes none.
        resume: continue the fine-tuning run whose checkpoint is in ``checkpoint_dir``.
        progress: progress bars and per-epoch lines on stderr.

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

    Predictions need every photo usable: ``predict``, ``predict_proba`` and ``score`` raise a
    :class:`~headstart.errors.DataError` naming the unusable ones (rows must line up with the photos given);
    ``model_.predict`` skips them instead and reports them.

    Example:
        >>> import headstart as hs
        >>> clf = hs.ImageClassifier(method="probe").fit("photos/")
        >>> clf.score("test_photos/")
        0.917
        >>> ft = hs.ImageClassifier(method=hs.Finetune(epochs=5, lr=1e-4)).fit("photos/")
    """

    _shared_params = ("cache",)  # (a FeatureCache object is a store to share, not a value to copy)

    def __init__(
        self,
        *,
        backbone: str = "auto",
        weights: str | os.PathLike[str] | None = None,
        method: str | Finetune = "probe",
        finetune: Finetune | Mapping[str, Any] | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        refit: bool = True,
        flip_average: bool | str | None = "cached",
        precision: str = "auto",
        batch_size: int = 32,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        device: str = "auto",
        reuse: bool = True,
        cache: str | os.PathLike[str] | FeatureCache | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        progress: bool = False,
    ) -> None:
        self.backbone = backbone
        self.weights = weights
        self.method = method
        self.finetune = finetune
        self.val_fraction = val_fraction
        self.seed = seed
        self.refit = refit
        self.flip_average = flip_average
        self.precision = precision
        self.batch_size = batch_size
        self.max_pixels = max_pixels
        self.device = device
        self.reuse = reuse
        self.cache = cache
        self.checkpoint_dir = checkpoint_dir
        self.resume = resume
        self.progress = progress

    def _validated(self) -> tuple[str, dict[str, Any]]:
        """Check every hyper-parameter (scikit-learn's words); return the method's name and the options given."""
        if isinstance(self.method, Finetune):
            if self.finetune is not None:
                fail(
                    "finetune", _CALLER, "None when method is a Finetune (its options are the method's)", self.finetune
                )
            method, options = "finetune", self.method.validated().set_fields()
        else:
            if not isinstance(self.method, str) or self.method not in METHODS:
                fail("method", _CALLER, f"one of {', '.join(map(repr, METHODS))} or a Finetune", self.method)
            method, options = self.method, _finetune_options(self.finetune)
            if method == "probe" and options:
                fail(
                    "finetune",
                    _CALLER,
                    "None for method='probe' (fine-tuning options need method='finetune' or 'scratch')",
                    self.finetune,
                )
        if not isinstance(self.backbone, str) or not self.backbone:
            fail("backbone", _CALLER, "a timm model name (str), 'auto' or 'auto:NAME,NAME,…'", self.backbone)
        if parse_auto(self.backbone) is not None and self.weights is not None:
            fail(
                "weights",
                _CALLER,
                "None when backbone is 'auto' (each candidate uses its own offline or hub "
                "weights; to fine-tune from a file, name its backbone)",
                self.weights,
            )
        check_number(self.val_fraction, "val_fraction", _CALLER, low=0, high=1, low_open=True, high_open=True)
        check_int(self.seed, "seed", _CALLER, low=0, high=2**32 - 1)
        check_int(self.batch_size, "batch_size", _CALLER, low=1)
        if self.max_pixels is not None:
            check_int(self.max_pixels, "max_pixels", _CALLER, low=1)
        check_choice(self.precision, "precision", _CALLER, PRECISIONS)
        for name in ("refit", "reuse", "resume", "progress"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                fail(name, _CALLER, "a bool", getattr(self, name))
        if not (
            self.flip_average is None
            or isinstance(self.flip_average, (bool, np.bool_))
            or (isinstance(self.flip_average, str) and self.flip_average in FLIP_CHOICES)
        ):
            fail("flip_average", _CALLER, "a bool, None, 'auto' or 'cached'", self.flip_average)
        device = self.device
        if not isinstance(device, str) or not (
            device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            fail("device", _CALLER, "'auto', 'cpu', 'cuda' or 'cuda:N'", device)
        if not (self.cache is None or isinstance(self.cache, (str, os.PathLike, FeatureCache))):
            fail("cache", _CALLER, "None, a folder, a .sqlite file or a FeatureCache", self.cache)
        if self.resume and self.checkpoint_dir is None:
            fail(
                "checkpoint_dir",
                _CALLER,
                "the run folder to resume (resume=True continues its checkpoint)",
                self.checkpoint_dir,
            )
        return method, options

    # ----------------------------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Sequence[Any] | None = None) -> ImageClassifier:
        """Learn from labelled photos: a data set folder (class folders, Oxford-IIIT Pet, PetImages, a CSV), a
        :class:`~headstart.data.Dataset`, ``(paths, labels)``, or paths with ``y`` = their labels.

        Unusable photos are skipped, named in a :class:`SkippedFilesWarning` and kept in ``unusable_``.

        Returns:
            ``self``, fitted.

        Example:
            >>> clf = ImageClassifier().fit((["a.jpg", "b.jpg", "c.jpg", "d.jpg"], ["cat", "cat", "dog", "dog"]))
            >>> clf.classes_
            array(['cat', 'dog'], dtype='<U3')
        """
        started = time.perf_counter()
        method, options = self._validated()
        dataset = as_dataset(X, y, caller="fit")
        device = "cpu"
        if method != "probe":
            from headstart.features import init_from_env, resolve_device

            device = resolve_device(self.device)
            init_from_env(device)  # under torchrun: the processes share the extraction and the training
        cache = feature_cache(self.cache)
        memo = Memo.beside(cache) if self.reuse else None
        backbone, selection = self._backbone(dataset, cache, memo)
        s = self._split_and_probe(dataset, backbone, cache, memo, selection.split_keys if selection else None)
        if selection is not None and selection.first_extraction and selection.chosen == selection.rows[0]["backbone"]:
            s.feats.n_cached, s.feats.n_computed, s.feats.seconds = selection.first_extraction  # (done there)
        probe_proba = s.probe.predict_proba(s.X[s.va])  # (the probe that has not seen the validation photos)
        validation = {
            "paths": [s.usable.paths[i] for i in s.va],
            "labels": s.labels[s.va],
            "hashes": [s.feats.hashes[i] for i in s.va],
            "proba": probe_proba,
        }
        refit = fit_probe(s.X, s.labels, random_state=self.seed, memo=memo) if self.refit else None
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
                "C": float(final.C_),
                "temperature": float(final.temperature_),
                "refit_on_all": refit is not None,
            }
            config, history = None, None
        else:
            from headstart.models.network_fit import fit_network

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
                checkpoint_dir=self.checkpoint_dir,
                resume=bool(self.resume),
                progress=self.progress,
                lr_search=bool(config.lr_search),
            )
            model, history = fit.model, fit.history  # (config stays what was asked; the report has the lr used)
            if fit.val_proba is not None:  # (the validation run's network: it had not seen them)
                validation["proba"] = fit.val_proba
            specific = fit.report(float(np.mean(s.probe.classes_[probe_proba.argmax(axis=1)] == s.labels[s.va])))
        val = classification_metrics(validation["labels"], validation["proba"], model.classes)
        calibration = calibration_metrics(validation["labels"], validation["proba"], model.classes)
        feats = s.feats
        report: dict[str, Any] = {
            "val_accuracy": val["accuracy"],
            "val_top5_accuracy": val["top5_accuracy"],
            **specific,
            "n_images": len(dataset),
            "n_usable": len(s.usable),
            "n_train": len(s.tr),
            "n_val": len(s.va),
            "n_classes": len(model.classes),
            "skipped": [u.to_dict() for u in feats.unusable],
            "ignored": [str(p) for p in dataset.ignored],
            "features": {"cached": feats.n_cached, "computed": feats.n_computed, "seconds": round(feats.seconds, 3)},
            "backbone": backbone.name,
            **({"backbone_selection": selection.to_dict()} if selection else {}),
            "flip_average": s.flip,
            "flip_average_cv": s.flip_cv,
            "val_ece": calibration["ece"],
            "val_nll": calibration["nll"],
            "val_brier": calibration["brier"],
            "calibration": calibration,
            "seconds": round(time.perf_counter() - started, 3),
            "validation": public_metrics(val),
            **({"history": history} if history is not None else {}),
        }
        model.metadata.update(
            {
                "method": method,
                "metrics": {
                    k: v
                    for k, v in report.items()
                    if k not in ("skipped", "ignored", "validation", "history", "calibration")
                },
                "data": {
                    "source": str(dataset.root),
                    "kind": dataset.kind,
                    "seed": self.seed,
                    "val_fraction": self.val_fraction,
                },
                **({"finetune": asdict(config)} if config is not None else {}),
                "estimator": self._stored_params(),
            }
        )
        self._set_fitted(model, report, feats.unusable, config, validation)
        return self

    def _split_and_probe(
        self,
        dataset: Dataset,
        backbone: ResolvedBackbone,
        cache: FeatureCache,
        memo: Memo | None,
        keys: dict[str, str] | None = None,
    ) -> SimpleNamespace:
        """Features of the usable photos, the train/validation split (near duplicates on one side: ``keys``, the
        split keys ``auto`` chose on, else :func:`split_keys`), the probe on the training part, and the choice of
        mirror averaging (by that probe's cross-validation, unless ``flip_average`` says)."""
        from headstart.features import current

        extract = dict(cache=cache, precision=self.precision, batch_size=self.batch_size, max_pixels=self.max_pixels)
        mode, mirror = self._flip_mode()
        feats = extract_features(
            dataset.paths, backbone, progress=self.progress and current().is_main, flip_average=mirror, **extract
        )
        if isinstance(mode, str) and mode == "cached":  # one view, unless the mirror views cost nothing now
            mode = "auto" if feats.hashes and cache.has_views(feats.cache_key, feats.hashes, "mirror") else False
            if mode == "auto":
                one_view = feats
                feats = extract_features(dataset.paths, backbone, flip_average=True, **extract)  # (all cached)
                feats.n_cached, feats.n_computed, feats.seconds = (
                    one_view.n_cached,
                    one_view.n_computed,
                    one_view.seconds,
                )
        if feats.unusable:
            warnings.warn(describe_unusable(feats.unusable), SkippedFilesWarning, stacklevel=3)
        usable = dataset.subset(feats.indices.tolist())
        if len(set(usable.labels)) < 2:
            raise DataError(
                f"Only {len(usable)} usable photos in {len(set(usable.labels))} class(es) in "
                f"{dataset.root}: a classifier needs at least 2 classes."
            )
        labels = np.asarray(usable.labels)
        groups = (
            [keys[str(p)] for p in usable.paths]
            if keys is not None
            else split_keys(
                usable.paths,
                feats.hashes,
                feats.features,
                memo=memo,
                max_pixels=self.max_pixels,
                progress=self.progress and current().is_main,
            )
        )
        train_part, val_part = train_val_split(usable, val_fraction=self.val_fraction, seed=self.seed, groups=groups)
        row_of = {s.path: i for i, s in enumerate(usable.samples)}
        tr = np.array([row_of[s.path] for s in train_part.samples], dtype=np.int64)
        va = np.array([row_of[s.path] for s in val_part.samples], dtype=np.int64)

        probe = fit_probe(feats.features[tr], labels[tr], random_state=self.seed, memo=memo)
        flip, flip_cv = (None if isinstance(mode, str) else bool(mode)), {}
        if flip is None:  # the data decide: is a photo's mirror image the same class here?
            single = extract_features(dataset.paths, backbone, flip_average=False, **extract)
            single_probe = fit_probe(single.features[tr], labels[tr], random_state=self.seed, memo=memo)
            flip_cv = {"on": float(probe.cv_accuracy_), "off": float(single_probe.cv_accuracy_)}
            # Only when it helps by more than one photo's worth (a one-photo difference in CV is noise; nan: no).
            flip = bool(probe.cv_accuracy_ - single_probe.cv_accuracy_ > 1.5 / len(tr))
            if not flip:  # (the run's extraction numbers stay those of the pass that computed both)
                single.n_cached, single.n_computed, single.seconds = feats.n_cached, feats.n_computed, feats.seconds
                feats, probe = single, single_probe
        return SimpleNamespace(
            feats=feats,
            X=feats.features,
            usable=usable,
            labels=labels,
            train_part=train_part,
            val_part=val_part,
            tr=tr,
            va=va,
            probe=probe,
            flip=bool(flip),
            flip_cv=flip_cv,
        )

    def _flip_mode(self) -> tuple[bool | str, bool]:
        """``flip_average`` as the fit reads it (None is ``"auto"``), and whether the mirror views are computed
        from the start (``"auto"`` and True: yes; ``"cached"``: only if already cached; False: no)."""
        mode = "auto" if self.flip_average is None else self.flip_average
        return mode, mode == "auto" or (not isinstance(mode, str) and bool(mode))

    def _backbone(self, dataset: Dataset, cache: FeatureCache, memo: Memo | None) -> tuple[ResolvedBackbone, Any]:
        """The backbone named, or for ``auto`` the one chosen on the training part (:func:`select_for_fit`)."""
        from headstart.features import current

        if parse_auto(self.backbone) is None:
            return ResolvedBackbone(self.backbone, self.weights), None
        _, mirror = self._flip_mode()
        selection = select_for_fit(
            dataset,
            parse_auto(self.backbone),
            cache=cache,
            memo=memo,
            seed=self.seed,
            val_fraction=self.val_fraction,
            flip_average=mirror,
            weights=self.weights,
            precision=self.precision,
            batch_size=self.batch_size,
            max_pixels=self.max_pixels,
            progress=self.progress and current().is_main,
        )
        return ResolvedBackbone(selection.chosen, self.weights), selection

    def _set_fitted(
        self,
        model: Classifier,
        report: dict[str, Any],
        unusable: list,
        finetune: Finetune | None,
        validation: dict[str, Any] | None,
    ) -> None:
        self.model_ = model
        self.classes_ = np.asarray(model.classes)
        self.spec_ = model.spec
        self.report_ = report
        self.unusable_ = list(unusable)
        self.finetune_ = finetune
        self.validation_ = validation

    def _stored_params(self) -> dict[str, Any]:
        """The hyper-parameters as JSON, for the model file (so :func:`load` gives them back)."""
        params = self.get_params()
        if isinstance(params["method"], Finetune):
            params["method"], params["finetune"] = "finetune", params["method"].set_fields()
        else:
            params["finetune"] = _finetune_options(params["finetune"]) or None
        for name in ("weights", "cache", "checkpoint_dir"):
            value = params[name]
            params[name] = str(value) if isinstance(value, (str, os.PathLike)) else None
        params["resume"] = False  # a saved model has nothing left to resume
        return params

    # ------------------------------------------------------------------------------------------------- predict
    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities of photos (paths, a folder, a Dataset): ``(n_photos, n_classes)``, columns in the
        order of ``classes_``, rows in the order of the photos (a folder's: sorted, recursive).

        Raises:
            DataError: some photos are unusable (each is named with the reason).

        Example:
            >>> clf.predict_proba(["a.jpg"]).round(2)
            array([[0.01, 0.96, 0.  , ...]])
        """
        self._check_fitted()
        files = photo_paths(X)
        feats = self.model_.features(
            files,
            cache=feature_cache(self.cache),
            precision=self.precision,
            batch_size=self.batch_size,
            max_pixels=self.max_pixels,
            progress=self.progress,
        )
        if feats.unusable:
            raise DataError(
                f"{describe_unusable(feats.unusable)}\nEvery photo given to predict must be usable (its "
                "row must line up): leave them out (`headstart scan` finds them), or use "
                "clf.model_.predict(paths), which skips them and says which."
            )
        return self.model_.predict_proba_features(feats.features)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each photo: a numpy array of labels from ``classes_``.

        Example:
            >>> clf.predict(["a.jpg", "b.jpg"])
            array(['Bengal', 'pug'], dtype='<U17')
        """
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)] if len(proba) else self.classes_[:0]

    def score(self, X: Any, y: Sequence[Any] | None = None, sample_weight: Sequence[float] | None = None) -> float:
        """Accuracy on labelled photos (given as to :meth:`fit`): the share whose :meth:`predict` is the label.

        Example:
            >>> clf.score("test_photos/")
            0.917
        """
        dataset = as_dataset(X, y, caller="score")
        right = self.predict(dataset.paths) == np.asarray(dataset.labels)
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
        """The fitted estimator in a model file (see :func:`load`)."""
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
    names = set(ImageClassifier._get_param_names())
    stored = meta.get("estimator") if isinstance(meta.get("estimator"), dict) else {}
    params = {k: v for k, v in stored.items() if k in names}
    if not stored:  # a file from before the estimator: what it says about how it was made
        data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        params["backbone"] = model.spec.name
        if meta.get("method") in METHODS:
            params["method"] = meta["method"]
        if isinstance(meta.get("finetune"), dict) and params.get("method", "probe") != "probe":
            known = {f for f in asdict(Finetune())}
            params["finetune"] = {k: v for k, v in meta["finetune"].items() if k in known}
        for name in ("seed", "val_fraction"):
            if isinstance(data.get(name), (int, float)) and not isinstance(data.get(name), bool):
                params[name] = data[name]
    clf = ImageClassifier(**params)
    finetune = None
    if isinstance(meta.get("finetune"), dict):
        known = {f for f in asdict(Finetune())}
        finetune = Finetune(**{k: v for k, v in meta["finetune"].items() if k in known})
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
