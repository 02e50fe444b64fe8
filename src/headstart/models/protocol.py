"""scikit-learn's estimator protocol without importing scikit-learn: a base class for headstart's estimators.

scikit-learn recognises estimators by duck typing: ``get_params``/``set_params`` (the constructor's arguments, by
name), ``__sklearn_clone__``, ``__sklearn_is_fitted__`` and ``__sklearn_tags__``. Inheriting its
``BaseEstimator`` would give the same, but importing scikit-learn takes more than a second, and a cached re-run of
``headstart train`` imports none of it. So :class:`ClassifierProtocol` implements the protocol here and imports
scikit-learn only where scikit-learn is already in use (its tags, and the error of an unfitted estimator):
``sklearn.base.clone``, ``sklearn.utils.validation.check_is_fitted`` and ``sklearn.base.is_classifier`` work on a
subclass as on any scikit-learn classifier.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

__all__ = ["ClassifierProtocol"]


class ClassifierProtocol:
    """Base of an estimator whose ``__init__`` only stores keyword arguments under their own names.

    Subclasses name the parameters not to deep-copy when cloned in ``_shared_params`` (e.g. a cache object) and
    are fitted once they have a ``model_`` attribute.

    Example:
        >>> class Majority(ClassifierProtocol):
        ...     def __init__(self, *, strategy="most_frequent"):
        ...         self.strategy = strategy
        >>> Majority().set_params(strategy="prior").get_params()
        {'strategy': 'prior'}
    """

    _estimator_type = "classifier"  # (scikit-learn before 1.6 reads this; later ones __sklearn_tags__)
    _shared_params: tuple[str, ...] = ()

    @classmethod
    def _get_param_names(cls) -> list[str]:
        return sorted(_named_parameters(cls))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyper-parameters, by name (what the constructor was given, or :meth:`set_params` set)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> Any:
        """Change hyper-parameters (they take effect at the next ``fit``); returns ``self``."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {self!r}. Valid parameters are: {valid!r}.")
            setattr(self, name, value)
        return self

    def __sklearn_clone__(self) -> Any:
        """An unfitted copy with the same hyper-parameters (deep copies, except the ``_shared_params``)."""
        params = {
            name: value
            if name in self._shared_params and not isinstance(value, (str, type(None)))
            else copy.deepcopy(value)
            for name, value in self.get_params().items()
        }
        return type(self)(**params)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def __sklearn_tags__(self) -> Any:
        """A classifier's tags; inputs are photos (paths, not a 2-d array), and a labelled folder needs no ``y``."""
        from sklearn.base import BaseEstimator, ClassifierMixin

        class _Classifier(ClassifierMixin, BaseEstimator):
            pass

        tags = _Classifier().__sklearn_tags__()
        tags.target_tags.required = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags

    def _check_fitted(self) -> None:
        """Raise scikit-learn's ``NotFittedError`` (its message) before ``fit``."""
        if not self.__sklearn_is_fitted__():
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def __repr__(self) -> str:
        defaults = _named_parameters(type(self))
        changed = [
            f"{name}={getattr(self, name)!r}" for name in defaults if not _same(getattr(self, name), defaults[name])
        ]
        return f"{type(self).__name__}({', '.join(changed)})"


def _named_parameters(cls: type) -> dict[str, Any]:
    """The constructor's named parameters and their defaults (not ``self``, not a ``**kwargs`` catch-all)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.name != "self" and p.kind is not p.VAR_KEYWORD}


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # (arrays and other values without a plain ==)
        return a is b
