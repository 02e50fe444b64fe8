"""How a fit or a prediction runs, as opposed to what it learns: the cache, the device, batching, the bomb guard,
the memo, checkpoints and progress. These are keyword arguments of :meth:`ImageClassifier.fit
<headstart.models.estimator.ImageClassifier.fit>`, its predictions and :func:`headstart.train`; they never change
the model (scikit-learn's rule: what changes the model is a hyper-parameter of the constructor), so they are not in
``get_params`` and a clone does not copy them.

Example:
    >>> options = RunOptions(cache="/tmp/cache", progress=False).checked("ImageClassifier.fit")
    >>> options.feature_cache().path
    PosixPath('/tmp/cache/features.sqlite')
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from headstart._console import wants_progress
from headstart._validation import check_int, fail
from headstart.data import DEFAULT_MAX_PIXELS
from headstart.features import FeatureCache
from headstart.models.inputs import feature_cache

__all__ = ["RunOptions", "constructor_run_options"]


@dataclass(frozen=True)
class RunOptions:
    """The run options of a fit (all of them) or a prediction (``cache``, ``batch_size``, ``max_pixels``,
    ``progress``).

    Args:
        cache: the feature cache: None (the default cache folder), a folder, a ``.sqlite`` file or a
            :class:`~headstart.features.FeatureCache`.
        device: where fine-tuning runs: ``auto`` (the GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: photos per batch of feature extraction.
        max_pixels: photos larger than this are unusable (decompression-bomb guard); None: no limit.
        reuse: read probe fits back from the cache's memo when their inputs are unchanged (same result, faster).
        checkpoint_dir: where fine-tuning writes its checkpoint and ``metrics.jsonl`` each epoch, and ``curves.png``;
            None writes none.
        resume: continue the fine-tuning run whose checkpoint is in ``checkpoint_dir``.
        progress: progress bars and per-epoch lines on stderr; None (the default): when stderr is a terminal.
    """

    cache: str | os.PathLike[str] | FeatureCache | None = None
    device: str = "auto"
    batch_size: int = 32
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    reuse: bool = True
    checkpoint_dir: str | os.PathLike[str] | None = None
    resume: bool = False
    progress: bool | None = None

    def checked(self, caller: str) -> RunOptions:
        """The options checked (scikit-learn's message, naming ``caller``), ``progress`` decided."""
        if not (self.cache is None or isinstance(self.cache, (str, os.PathLike, FeatureCache))):
            fail("cache", caller, "None, a folder, a .sqlite file or a FeatureCache", self.cache)
        device = self.device
        if not isinstance(device, str) or not (
            device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        ):
            fail("device", caller, "'auto', 'cpu', 'cuda' or 'cuda:N'", device)
        check_int(self.batch_size, "batch_size", caller, low=1)
        if self.max_pixels is not None:
            check_int(self.max_pixels, "max_pixels", caller, low=1)
        for name in ("reuse", "resume"):
            if not _is_bool(getattr(self, name)):
                fail(name, caller, "a bool", getattr(self, name))
        if not (self.progress is None or _is_bool(self.progress)):
            fail("progress", caller, "a bool, or None (when stderr is a terminal)", self.progress)
        if self.resume and self.checkpoint_dir is None:
            fail("checkpoint_dir", caller, "the run folder to resume (resume=True continues its checkpoint)", None)
        return replace(self, progress=wants_progress(self.progress))

    def feature_cache(self) -> FeatureCache:
        """The :class:`FeatureCache` that ``cache`` names."""
        return feature_cache(self.cache)

    def filled_from(self, given: dict[str, Any] | None) -> RunOptions:
        """These options, with those ``given`` elsewhere (the constructor's, deprecated) where these are the
        defaults."""
        if not given:
            return self
        defaults = RunOptions()
        return replace(self, **{k: v for k, v in given.items() if getattr(self, k) == getattr(defaults, k)})

    def extraction(self) -> dict[str, Any]:
        """What feature extraction takes of these options."""
        return {"batch_size": self.batch_size, "max_pixels": self.max_pixels}


def constructor_run_options(given: dict[str, Any], params: list[str], removed_in: str) -> dict[str, Any]:
    """Run options given to :class:`~headstart.models.estimator.ImageClassifier`'s constructor, where they were
    before 0.2: a FutureWarning saying where they go now; ``fit`` and the predictions still use them unless given
    their own (:meth:`RunOptions.filled_from`); a clone does not keep them. Anything else is a TypeError naming
    the hyper-parameters (``params``) and the run options."""
    known = list(RunOptions.__dataclass_fields__)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(
            f"ImageClassifier got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; its "
            f"hyper-parameters are {', '.join(params)}, and how to run ({', '.join(known)}) goes to fit()."
        )
    names = ", ".join(f"{k}=..." for k in sorted(given))
    warnings.warn(
        f"ImageClassifier({names}): how to run is no longer a hyper-parameter and will not be accepted there from "
        f"headstart {removed_in}. Pass it to fit() (and to predict, for the cache): clf.fit(X, {names}).",
        FutureWarning,
        stacklevel=3,
    )
    return dict(given)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))
