"""Linear probe: multinomial logistic regression on frozen features, with C chosen by cross-validation.

Features are centred and divided by one common scale (their root mean variance), not standardised per feature: a
backbone's rarely active features have tiny variances, and blowing them up to unit variance amplifies their noise
(on Oxford pets, per-feature standardisation cost about a point of accuracy at every C). The common scale keeps the
``Cs`` grid meaningful whatever the backbone's feature magnitudes.

The fitted probe is one linear layer over the raw features (the centring and scaling are folded into ``coef_`` and
``intercept_``), so it can be stored in a model file as a ``Linear(n_features -> n_classes)`` head.

Example:
    >>> import numpy as np
    >>> from headstart.models.probe import LinearProbe
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(60, 8)); y = (X[:, 0] > 0).astype(int)
    >>> probe = LinearProbe(cv=3).fit(X, y)
    >>> probe.predict_proba(X).shape
    (60, 2)
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from headstart._math import log_softmax, softmax
from headstart._validation import fail as parameter_error
from headstart.models.probe_rows import CALIBRATION_ROWS, column_moments, fit_rows, stratified_rows
from headstart.models.temperature import fit_temperature

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn

    def _validate_data(estimator, X="no_validation", y="no_validation", **kwargs):
        return estimator._validate_data(X, y, **kwargs)


__all__ = ["DEFAULT_CS", "MAX_CV_ROWS", "LinearProbe", "ProbeWarning"]

#: Regularisation strengths tried by default: 8 values log-spaced over 1e-4..1e1 (on features scaled to unit mean
#: variance).
DEFAULT_CS: tuple[float, ...] = (1e-4, 5.2e-4, 2.7e-3, 1.4e-2, 7.2e-2, 0.37, 1.9, 10.0)

#: Most rows ``C`` is cross-validated on; beyond, a stratified sample of this many (see ``max_cv_rows``).
MAX_CV_ROWS = 5000

_TOL = 1e-4  # lbfgs gradient tolerance
_PATIENCE = 2  # stop walking up the C path once this many larger Cs in a row did no better than the best
_EIGEN_CUTOFF = 1e-10  # directions with variance below this fraction of the largest are dropped from the row space


class ProbeWarning(UserWarning):
    """Something about a LinearProbe fit deserves attention; the message says what to change."""


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on scaled features, with its regularisation chosen by cross-validation.

    ``fit`` centres the features and divides them by one common scale (so that their variances average 1), then picks the inverse regularisation strength ``C`` from ``Cs`` by stratified
    k-fold cross-validation (highest mean accuracy; ties go to the lower mean log-loss), walking the grid from the
    strongest regularisation up with warm starts and stopping early once larger values stop helping. It then refits
    on all the data with that ``C``. When the smallest class has fewer than ``cv`` samples, fewer folds are used (at
    least 2); when a class has a single sample, cross-validation is skipped, the middle of ``Cs`` is used and a
    :class:`ProbeWarning` says so. With a single value in ``Cs`` there is nothing to choose: no cross-validation.

    The centre and scale come from all of ``X`` before cross-validation (they use no labels); the solver runs on the
    feature row space when there are fewer samples than features, which gives the same solution faster.

    Args:
        Cs: Inverse regularisation strengths to try (on the scaled features), each in (0, inf).
        cv: Number of stratified folds, at least 2.
        max_iter: Most lbfgs iterations per fit.
        random_state: Seed of the fold shuffling; the same seed gives the same probe.
        calibrate: Rescale the logits by the temperature that minimises the out-of-fold log-loss at ``C_``
            (temperature scaling): predictions are unchanged, probabilities mean what they say. On tiny data the
            temperature is bounded so that the mean out-of-fold top-1 probability stays at most (right + 1/2) /
            (n + 1) (:func:`~headstart.models.temperature.fit_temperature`): 10 of 10 right is not certainty.
        max_cv_rows: Most rows ``C`` is cross-validated on. With more, ``C`` is chosen on a stratified sample of
            this many, the temperature is fitted on a held-out stratified tenth (at most 5,000 rows) and the final
            fit runs over the other rows in float32 with torch's L-BFGS (:mod:`headstart.models.probe_rows`): cost
            linear in the rows, no float64 copy of the matrix.

    Attributes:
        classes_: Class labels, shape ``(n_classes,)``.
        n_features_in_: Number of features seen during ``fit``.
        coef_: Weights over the raw (unscaled) features, shape ``(n_classes, n_features)`` (two rows for
            binary problems), such that ``softmax(X @ coef_.T + intercept_) == predict_proba(X)``.
        intercept_: Biases, shape ``(n_classes,)``.
        C_: The chosen ``C``.
        cv_accuracy_: Mean cross-validated accuracy at ``C_`` (``nan`` when cross-validation was skipped).
        cv_accuracies_: Mean cross-validated accuracy for each value of ``Cs_`` (``nan`` where not tried).
        Cs_: The ``Cs`` grid, sorted ascending, shape ``(n_Cs,)``.
        n_splits_: Number of folds actually used (0 when cross-validation was skipped).
        n_iter_: lbfgs iterations of the final fit on all the data.
        n_cv_rows_: Rows ``C`` was cross-validated on (0 without cross-validation).
        n_calibration_rows_: Rows held out of the final fit for the temperature (0 up to ``max_cv_rows`` rows,
            where the out-of-fold predictions serve).
        temperature_: The logit divisor from calibration (1.0 without cross-validation or calibration): the
            out-of-fold temperature times ``logit_scale_ratio_``.
        logit_scale_ratio_: How much larger the final fit's weights are than the folds' (their norms' ratio,
            within 0.5..2): the final fit saw more photos, so the same temperature would make it overconfident.

    Example:
        >>> probe = LinearProbe().fit(train_features, train_labels)
        >>> probe.predict(test_features)
    """

    def __init__(
        self,
        Cs: Sequence[float] = DEFAULT_CS,
        cv: int = 5,
        max_iter: int = 1000,
        random_state: int | np.random.RandomState | None = 0,
        calibrate: bool = True,
        max_cv_rows: int = MAX_CV_ROWS,
    ) -> None:
        self.Cs = Cs
        self.cv = cv
        self.max_iter = max_iter
        self.random_state = random_state
        self.calibrate = calibrate
        self.max_cv_rows = max_cv_rows

    # ------------------------------------------------------------------------------------------------------- fit
    def fit(self, X, y) -> LinearProbe:
        """Learn the probe from features ``X`` of shape ``(n_samples, n_features)`` and labels ``y``.

        Returns:
            ``self``, fitted.
        """
        Cs = self._check_params()
        # float32 rows stay float32 (no 8-byte copy of a large matrix); up to max_cv_rows they become float64 below
        X, y = _validate_data(self, X, y, dtype=(np.float64, np.float32), y_numeric=False)
        check_classification_targets(y)
        classes, y_index, counts = np.unique(y, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ValueError(
                f"LinearProbe needs at least 2 classes, but y holds only one class ({classes[0]!r}). "
                "Add examples of the other classes."
            )
        if len(X) > self.max_cv_rows:
            return self._fit_many_rows(X, y_index, classes, Cs)
        X = np.asarray(X, dtype=np.float64)
        mean = X.mean(axis=0)
        scale = float(np.sqrt(X.var(axis=0).mean())) or 1.0  # one number for all features; 1 for constant features
        X_scaled = (X - mean) / scale

        n_splits = min(self.cv, int(counts.min())) if len(Cs) > 1 else 0  # one C: nothing to choose
        if n_splits < 2 and len(Cs) > 1:
            rare = [repr(c) for c, n in zip(classes.tolist(), counts) if n == 1]
            warnings.warn(
                f"LinearProbe: {len(rare)} class(es) have a single example ({', '.join(rare[:5])}"
                f"{', ...' if len(rare) > 5 else ''}), so C cannot be cross-validated; using C={Cs[len(Cs) // 2]:g}, "
                "the middle of Cs, and cv_accuracy_ is nan. Add at least 2 examples per class (ideally 5 or more).",
                ProbeWarning,
                stacklevel=2,
            )
        with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings(record=True) as caught:
            # One BLAS thread: numpy's and scipy's OpenBLAS pools spinning against each other make lbfgs ~10x slower.
            warnings.simplefilter("always", ConvergenceWarning)
            temperature, fold_norm = 1.0, 0.0
            if n_splits >= 2:
                accuracies, best, temperature, fold_norm = self._cross_validate(X_scaled, y_index, Cs, n_splits)
                C, cv_accuracy = float(Cs[best]), float(accuracies[best])
            else:  # a single given C, or a class too small to cross-validate: the middle of the grid
                C, cv_accuracy, n_splits = float(Cs[len(Cs) // 2]), float("nan"), 0
                accuracies = np.full(len(Cs), np.nan)
            weight, bias, n_iter, norm = _fit_logistic(X_scaled, y_index, C, self.max_iter, len(classes))
            # The fit on all the data has larger weights than the folds' at the same C (about n / n_fold times
            # under strong regularisation): its temperature is the folds' times that ratio, or every
            # probability of a small data set's final fit ends up at 1.000.
            ratio = float(np.clip(norm / fold_norm, 0.5, 2.0)) if fold_norm > 0 and norm > 0 else 1.0
            temperature *= ratio
            if self.calibrate:  # strong regularisation flattens probabilities; one scalar restores their meaning
                weight, bias = weight / temperature, bias / temperature
        self._warn_convergence(caught)

        # Fold the scaling into the linear layer: (x - mean) / scale @ W.T + b == x @ (W / scale).T + b'.
        coef = weight / scale
        self.coef_ = coef
        self.intercept_ = bias - coef @ mean
        self.classes_ = classes
        self.C_ = C
        self.Cs_ = Cs
        self.cv_accuracies_ = accuracies
        self.cv_accuracy_ = cv_accuracy
        self.n_splits_ = n_splits
        self.n_iter_ = n_iter
        self.temperature_ = temperature if self.calibrate else 1.0
        self.logit_scale_ratio_ = ratio
        self.n_cv_rows_ = len(X) if n_splits else 0
        self.n_calibration_rows_ = 0
        return self

    def _fit_many_rows(self, X: np.ndarray, y: np.ndarray, classes: np.ndarray, Cs: np.ndarray) -> LinearProbe:
        """More rows than ``max_cv_rows``: C by CV on a stratified sample, the temperature on a held-out slice,
        one L-BFGS fit over the rest (:mod:`headstart.models.probe_rows`)."""
        seed = self.random_state if _is_int(self.random_state) else 0
        calibrating = self.calibrate and len(Cs) > 1
        held = stratified_rows(y, min(CALIBRATION_ROWS, len(y) // 10), seed) if calibrating else np.array([], int)
        rest = np.setdiff1d(np.arange(len(y)), held)
        mean, scale = column_moments(X, rest)
        sample = rest[stratified_rows(y[rest], self.max_cv_rows, seed + 1)]
        small = clone(self).set_params(max_cv_rows=len(sample), calibrate=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ProbeWarning)
            small.fit(np.asarray(X[sample], dtype=np.float64), classes[y[sample]])
        start = (small.coef_ * scale, small.intercept_ + small.coef_ @ mean)  # back onto (x - mean) / scale
        with warnings.catch_warnings(record=True) as solver_warnings:
            warnings.simplefilter("always", ConvergenceWarning)
            weight, bias, n_iter = fit_rows(
                X,
                y,
                rest,
                C=small.C_,
                mean=mean,
                scale=scale,
                n_classes=len(classes),
                init=start,
                max_iter=self.max_iter,
            )
        self._warn_convergence(solver_warnings)
        for message in caught:  # the sample's own warnings (one-sample classes, convergence), as they were
            warnings.warn_explicit(message.message, message.category, message.filename, message.lineno)
        coef = weight / scale
        intercept = bias - coef @ mean
        temperature = 1.0
        if len(held):
            logits = np.asarray(X[held], dtype=np.float64) @ coef.T + intercept
            temperature = fit_temperature(logits, y[held])
            coef, intercept = coef / temperature, intercept / temperature
        self.coef_, self.intercept_, self.classes_ = coef, intercept, classes
        self.C_, self.Cs_ = small.C_, Cs
        self.cv_accuracies_, self.cv_accuracy_, self.n_splits_ = (
            small.cv_accuracies_,
            small.cv_accuracy_,
            small.n_splits_,
        )
        self.n_iter_ = n_iter
        self.temperature_ = temperature
        self.logit_scale_ratio_ = 1.0
        self.n_cv_rows_ = small.n_cv_rows_
        self.n_calibration_rows_ = len(held)
        return self

    def _cross_validate(
        self, X: np.ndarray, y: np.ndarray, Cs: np.ndarray, n_splits: int
    ) -> tuple[np.ndarray, int, float, float]:
        """Mean fold accuracy for each C (walking up the grid with warm starts), the index of the best C, the
        temperature that calibrates its out-of-fold probabilities and the folds' mean weight norm there."""
        folds = []
        n_classes = int(y.max()) + 1
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=self.random_state)
        for train, test in splitter.split(X, y):
            basis = _row_space_basis(X[train]) if _worth_reducing(len(train), X.shape[1], n_classes) else None
            folds.append((train, test, basis, _logistic(self.max_iter)))

        accuracies = np.full(len(Cs), np.nan)
        losses = np.full(len(Cs), np.nan)
        best = 0
        out_of_fold: dict[int, np.ndarray] = {}
        norms: dict[int, float] = {}
        for i, C in enumerate(Cs):
            fold_accuracy, fold_loss, fold_norm = [], [], []
            log_proba = np.zeros((len(y), n_classes))
            for train, test, basis, model in folds:
                X_train, X_test = X[train], X[test]
                if basis is not None:
                    X_train, X_test = X_train @ basis.T, X_test @ basis.T
                model.set_params(C=C).fit(X_train, y[train])
                proba = model.predict_proba(X_test)
                log_proba[test] = np.log(np.clip(proba, 1e-15, None))
                picked = proba[np.arange(len(test)), np.searchsorted(model.classes_, y[test])]
                fold_accuracy.append(np.mean(model.classes_[proba.argmax(axis=1)] == y[test]))
                fold_loss.append(-np.mean(np.log(np.clip(picked, 1e-15, None))))
                fold_norm.append(float(np.linalg.norm(model.coef_)))  # (the basis is orthonormal: same norm)
            accuracies[i], losses[i] = np.mean(fold_accuracy), np.mean(fold_loss)
            out_of_fold[i], norms[i] = log_proba, float(np.mean(fold_norm))
            if (accuracies[i], -losses[i]) > (accuracies[best], -losses[best]):
                best = i
            elif i - best >= _PATIENCE:  # (a plateau of equal accuracy still counts as progress while log-loss falls)
                break
        return accuracies, best, _temperature(out_of_fold[best], y), norms[best]

    def _warn_convergence(self, caught: list[warnings.WarningMessage]) -> None:
        """Re-emit the inner solver's warnings: ConvergenceWarnings as one ProbeWarning, others unchanged."""
        unconverged = 0
        for message in caught:
            if issubclass(message.category, ConvergenceWarning):
                unconverged += 1
            else:
                warnings.warn_explicit(message.message, message.category, message.filename, message.lineno)
        if unconverged:
            warnings.warn(
                f"LinearProbe: the lbfgs solver stopped at max_iter={self.max_iter} before converging in "
                f"{unconverged} fit(s); the probe may be slightly less accurate than it could be. Increase max_iter "
                f"(e.g. LinearProbe(max_iter={self.max_iter * 4})).",
                ProbeWarning,
                stacklevel=3,
            )

    def _check_params(self) -> np.ndarray:
        """Validate the constructor arguments (sklearn-style messages); return the sorted Cs grid."""
        name = type(self).__name__

        def fail(param: str, allowed: str) -> None:
            parameter_error(param, name, allowed, getattr(self, param))

        try:
            Cs = np.sort(np.asarray(self.Cs, dtype=np.float64).ravel())
        except (TypeError, ValueError):
            Cs = np.array([np.nan])
        if isinstance(self.Cs, (str, bytes)) or Cs.size == 0 or not np.all(np.isfinite(Cs)) or np.any(Cs <= 0):
            fail("Cs", "a non-empty sequence of floats in (0, inf)")
        if not _is_int(self.cv) or self.cv < 2:
            fail("cv", "an int in [2, inf)")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            fail("max_iter", "an int in [1, inf)")
        if not _is_int(self.max_cv_rows) or self.max_cv_rows < 2:
            fail("max_cv_rows", "an int in [2, inf)")
        if not isinstance(self.calibrate, (bool, np.bool_)):
            fail("calibrate", "a bool")
        if not (
            self.random_state is None
            or _is_int(self.random_state)
            or isinstance(self.random_state, np.random.RandomState)
        ):
            fail("random_state", "an int, an instance of 'numpy.random.RandomState' or None")
        return Cs

    # --------------------------------------------------------------------------------------------------- predict
    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = _validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_.T + self.intercept_

    def decision_function(self, X) -> np.ndarray:
        """Logits: shape ``(n_samples, n_classes)``, or ``(n_samples,)`` for binary problems (positive-class logit)."""
        logits = self._logits(X)
        return logits[:, 1] - logits[:, 0] if len(self.classes_) == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        return softmax(self._logits(X), axis=1)

    def predict_log_proba(self, X) -> np.ndarray:
        """Log of :meth:`predict_proba`, shape ``(n_samples, n_classes)``."""
        return log_softmax(self._logits(X), axis=1)

    def predict(self, X) -> np.ndarray:
        """Most probable class label for each row of ``X``, shape ``(n_samples,)``."""
        logits = self._logits(X)
        return self.classes_[logits.argmax(axis=1)]


# ------------------------------------------------------------------------------------------------------- helpers
def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _logistic(max_iter: int) -> LogisticRegression:
    return LogisticRegression(tol=_TOL, max_iter=max_iter, warm_start=True)


def _temperature(log_proba: np.ndarray, y: np.ndarray) -> float:
    """Temperature scaling of the out-of-fold predictions, guarded against degenerate fits on tiny data (the mean
    top-1 probability stays within what the held-out predictions showed: :mod:`headstart.models.temperature`)."""
    return fit_temperature(log_proba, y)


def _worth_reducing(n_samples: int, n_features: int, n_classes: int) -> bool:
    """Solving on the row space pays when it is much narrower than the features and there are many weight rows."""
    return n_classes > 2 and n_samples < 0.8 * n_features


def _row_space_basis(X: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the row space of ``X``, shape ``(rank, n_features)``, from the (cheap) Gram matrix.

    An L2-penalised linear model's weights lie in this space, so fitting on ``X @ basis.T`` and mapping the weights
    back with ``@ basis`` gives the same model with far fewer parameters when ``n_samples < n_features``.
    """
    values, vectors = np.linalg.eigh(X @ X.T)
    keep = values > max(values[-1], 0.0) * _EIGEN_CUTOFF
    if not keep.any():  # all-zero features: nothing to learn from; one arbitrary direction keeps shapes valid
        basis = np.zeros((1, X.shape[1]))
        basis[0, 0] = 1.0
        return basis
    return (vectors[:, keep] / np.sqrt(values[keep])).T @ X


def _fit_logistic(
    X: np.ndarray, y: np.ndarray, C: float, max_iter: int, n_classes: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Fit at one C on all the data; return weights ``(n_classes, n_features)``, biases, the iteration count and
    the norm of the solver's weights (comparable with the cross-validation folds')."""
    basis = _row_space_basis(X) if _worth_reducing(len(X), X.shape[1], n_classes) else None
    model = _logistic(max_iter).set_params(C=C, warm_start=False)
    model.fit(X if basis is None else X @ basis.T, y)
    weight, bias = model.coef_, model.intercept_
    if basis is not None:
        weight = weight @ basis
    if n_classes == 2:  # one logit w.x + b -> two with the same softmax: [-(w.x + b)/2, (w.x + b)/2]
        weight = np.vstack([-weight / 2, weight / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    return weight, bias, int(model.n_iter_.max()), float(np.linalg.norm(model.coef_))
