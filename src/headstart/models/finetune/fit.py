"""Fine-tuning (or training from scratch) as the estimator runs it: validation chooses the schedule, then the
saved network learns from all the photos.

1. **Validation run**: score the probe on the validation part (epoch 0), then train on the training part from a
   zero head (``head_start="zero"``, the default) or the probe's head (``"probe"``, LP-FT) and score each epoch;
   the best epoch is how long to train, and it must beat the probe by more than chance (a sign test on the photos
   each gets right: :func:`~headstart.models.finetune.stopping.beats_start`), else the probe is the model (epoch
   0). With ``lr_search``, the same for lr ×⅓, ×1 and ×3, and the best lr is kept too.
2. **Calibration**: the temperature that makes the best epoch's validation probabilities honest
   (:func:`~headstart.models.temperature.fit_temperature`, guarded on tiny data) is folded into the saved head.
3. **Refit** (the default, as for the probe), when the network beat the probe: the same trunk start and head
   start, and the same schedule on all photos, for as many epochs as the validation run trained (all of them,
   unless its loss stopped it). The validation figures are those of step 1 (the refit has seen every photo); the
   temperature carries over.

The frozen stages' activations are shared by all these runs (:mod:`headstart.models.finetune.frozen`), so the refit
costs only its epochs of the trainable tail.

Example:
    >>> fit = fit_network("finetune", backbone, probe, probe_all, train_part, val_part, usable, hashes, config,
    ...                   flip=True, device="cpu")
    >>> fit.best_epoch, fit.refit["epochs"], round(fit.temperature, 2)
    (5, 5, 0.81)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from headstart._console import say
from headstart._math import softmax
from headstart.models.classifier import Classifier
from headstart.models.finetune.config import MIN_FIXES
from headstart.models.finetune.stopping import beats_start
from headstart.models.temperature import fit_temperature

if TYPE_CHECKING:
    from headstart.data import Dataset
    from headstart.models.finetune.config import Finetune

__all__ = ["LR_SEARCH_FACTORS", "NetworkFit", "fit_network"]

#: The learning rates ``lr_search`` tries, as factors of the configured one.
LR_SEARCH_FACTORS = (1 / 3, 1.0, 3.0)


@dataclass
class NetworkFit:
    """What :func:`fit_network` made.

    Attributes:
        model: the network to save (refit on all photos unless ``refit=False``), its head calibrated.
        val_proba: the validation photos' calibrated probabilities from the validation run (which had not seen
            them; each half calibrated by a temperature fit on the other half), rows in the order of
            ``val_part``, or None when the probe won (its own held-out probabilities stand); ``val_labels`` their
            class indices.
        history: the validation run's epochs (dicts of :class:`~headstart.models.finetune.EpochRecord`).
        best_epoch: the epoch validation chose (0: fine-tuning did not beat the probe by more than chance; never 0
            from scratch).
        stopping: where the validation run stopped and why, which epoch it kept by what
            (:mod:`~headstart.models.finetune.stopping`), and ``against_probe``: that epoch's fixes and breaks
            against the probe and the sign test's chance.
        temperature: the logit divisor folded into the saved head.
        refit: ``photos``, ``epochs``, ``seconds``, ``history`` and ``frozen_stages`` (what the frozen stages computed,
            read and reused) of the refit on all photos, or None.
        lr_search: per tried lr, its best validation accuracy and epoch (None without a search).
        config: the options that ran (``lr`` the chosen one).
        frozen: how the frozen stages ran (computed once: how many photo views, seconds, megabytes).
        skipped: why fine-tuning did not run (validation could not judge it: the probe is the model), or None.
        mirror: what the mirror check found (:func:`~headstart.models.finetune.views.mirror_check`), or None.
    """

    model: Classifier
    val_proba: np.ndarray | None
    val_labels: np.ndarray
    history: list[dict[str, Any]]
    best_epoch: int
    stopped_early: bool
    stopping: dict[str, Any]
    temperature: float
    refit: dict[str, Any] | None
    lr_search: list[dict[str, Any]] | None
    config: Finetune
    frozen: dict[str, Any]
    skipped: str | None = None
    mirror: dict[str, Any] | None = None

    def report(self, probe_val_accuracy: float) -> dict[str, Any]:
        """The estimator's ``report_`` entries of a network (beside the probe's validation accuracy)."""
        return {
            "probe_val_accuracy": probe_val_accuracy,
            "best_epoch": self.best_epoch,
            "epochs_run": sum(1 for r in self.history if r["epoch"] > 0),
            "stopped_early": self.stopped_early,
            "stopping": self.stopping,
            "cv_accuracy": float("nan"),
            "C": float("nan"),
            "temperature": self.temperature,
            "refit_on_all": self.refit is not None,
            "refit": self.refit,
            "frozen_stages": self.frozen,
            "lr": self.config.lr,
            **({"lr_search": self.lr_search} if self.lr_search is not None else {}),
            **({"finetune_skipped": self.skipped} if self.skipped is not None else {}),
            **({"mirror_check": self.mirror} if self.mirror is not None else {}),
        }


def fit_network(
    method: str,
    backbone: Any,
    probe: Any,
    probe_all: Any | None,
    train_part: Dataset,
    val_part: Dataset,
    everything: Dataset,
    hashes: dict[str, str],
    config: Finetune,
    *,
    flip: bool,
    features: tuple[np.ndarray, np.ndarray] | None = None,
    memo: Any = None,
    device: str = "cpu",
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    lr_search: bool = False,
    probe_val_proba: np.ndarray | None = None,
    extract: dict[str, Any] | None = None,
) -> NetworkFit:
    """Validation run(s), temperature, refit (see the module's docstring). ``backbone`` is an
    :class:`~headstart.models.inputs.ResolvedBackbone`; ``probe`` the probe fitted on ``train_part`` (the head
    fine-tuning starts from), ``probe_all`` the one refit on ``everything`` (None: no refit; it is the saved
    model when validation keeps epoch 0). ``features`` (of ``everything``, with labels) give the refit's
    starting head: a probe at the validation run's C, so both runs start at the same logit scale and the
    temperature carries over; ``memo`` remembers that fit. ``probe_val_proba`` (the probe's probabilities for
    ``val_part``, its rows in order) is what a trained network must beat by the sign test (without it, the
    network's own epoch 0: the probe's head on the trunk); where the probe misses fewer than
    :data:`~headstart.models.finetune.config.MIN_FIXES` of those photos and ``config.skip_unjudged``, validation
    could not tell a better network from luck, so the probe is kept at once and nothing is trained.
    ``extract`` (the fit's extraction options: cache, precision, ...) lets ``config.mirror="auto"`` ask the probe
    whether the validation photos' mirror images are the same class (:func:`~headstart.models.finetune.views.
    mirror_check`); without it, ``auto`` mirrors."""
    classes = [str(c) for c in probe.classes_]
    misses = None
    if probe_val_proba is not None:
        misses = int(np.sum(np.asarray(classes)[np.argmax(probe_val_proba, axis=1)] != np.asarray(val_part.labels)))
    if method == "finetune" and config.skip_unjudged and misses is not None and misses < MIN_FIXES:
        return _probe_kept(backbone, probe, probe_all, everything, classes, config, flip, misses, progress)
    import torch

    from headstart._distributed import current
    from headstart.features import load_backbone
    from headstart.models.finetune.loop import run_finetune
    from headstart.models.finetune.parts import build_network, start_from_probe

    mirror = None
    if method == "finetune" and config.mirror == "auto" and extract is not None and len(val_part):
        from headstart.models.finetune.views import mirror_check

        mirror = mirror_check(backbone, probe, [str(p) for p in val_part.paths], np.asarray(val_part.labels), **extract)
        config = replace(config, mirror="on" if mirror["mirror"] else "off")
        if progress and current().is_main:
            say(_mirror_line(mirror))
    if method == "scratch":
        torch.manual_seed(config.seed)  # the random initialisation is reproducible too
        loaded = load_backbone(backbone.name, "none")
    else:
        loaded = backbone.load()
    network = build_network(loaded, len(classes), config.head_dropout)
    start = {k: v.detach().clone() for k, v in network.trunk.state_dict().items()}  # pretrained (or the random init)
    spec = loaded.spec if method == "finetune" else None  # (a random trunk's activations are not worth sharing)

    def begin(head_probe: Any) -> Any:
        network.trunk.load_state_dict(start)
        if method == "finetune":  # the probe's head (uncalibrated): epoch 0 scores it; the loop zeroes a zero head
            centre = features[0].mean(axis=0) if features is not None else None  # (dropout around the mean)
            start_from_probe(network, head_probe.coef_, head_probe.intercept_, head_probe.temperature_, centre)
        else:
            torch.manual_seed(config.seed)
            network.head.reset_parameters()
        return network

    zero_head = method == "finetune" and config.head_start == "zero"
    common = dict(flip_average=flip, spec=spec, hashes=hashes, device=device, progress=progress, zero_head=zero_head)
    validation_run = dict(common, keep_start=method == "finetune")  # (a random start is no model to keep)
    tried = None
    if lr_search:
        tried, best = [], None
        for factor in LR_SEARCH_FACTORS:
            candidate = replace(config, lr=config.lr * factor)
            if progress and current().is_main:
                say(f"lr search: validation run at lr {candidate.lr:.2g}")
            result = run_finetune(
                begin(probe), train_part, val_part, classes, loaded.spec.data_config, candidate, None, **validation_run
            )
            score = _best_scores(result)
            tried.append({"lr": candidate.lr, "val_accuracy": score[0], "best_epoch": result.best_epoch})
            if best is None or score > best[0]:
                best = (
                    score,
                    candidate,
                    {k: v.detach().clone() for k, v in result.network.state_dict().items()},
                    result,
                )
        _, config, state, result = best
        network.load_state_dict(state)
    else:
        result = run_finetune(
            begin(probe),
            train_part,
            val_part,
            classes,
            loaded.spec.data_config,
            config,
            checkpoint_dir,
            resume=resume,
            **validation_run,
        )
    best_epoch, stopping = result.best_epoch, dict(result.stopping)
    probe_scores = probe_val_proba if probe_val_proba is not None else result.start_logits
    if method == "finetune" and best_epoch > 0 and probe_scores is not None:
        verdict = beats_start(result.val_logits, probe_scores, result.val_labels)
        stopping["against_probe"] = verdict
        if not verdict["gains"]:  # a win by a photo or two is luck: the probe is the model
            stopping["kept_epoch"], stopping["kept_by"] = 0, _probe_kept_by(verdict, best_epoch)
            best_epoch = 0
            if progress and current().is_main:
                say(f"kept epoch 0, {stopping['kept_by']}")
    if method == "finetune" and best_epoch == 0:
        temperature, val_proba = 1.0, None  # (the probe is the model, with its own calibration: below)
    else:
        temperature = fit_temperature(result.val_logits, result.val_labels) if len(result.val_labels) else 1.0
        val_proba = _cross_fitted(np.asarray(result.val_logits, dtype=np.float64), np.asarray(result.val_labels))
    history = [asdict(r) for r in result.history]
    frozen = dict(result.frozen)

    final, refit = result.network, None  # (with EMA, the network is its average's copy)
    # The refit trains as long as the validation run did (all its epochs, unless the loss stopped it), not just to
    # its best epoch: that best is often a peak of validation noise partway through the schedule, and a network
    # stopped there, with its rate still high, is not the one validation saw (measured: docs/TRAINING.md).
    trained = max((r.epoch for r in result.history), default=0)
    if probe_all is not None:
        began = time.perf_counter()
        refit_history: list[dict[str, Any]] = []
        if best_epoch > 0:
            from headstart.models.probe_fit import fit_probe

            same_c = (
                fit_probe(*features, random_state=config.seed, memo=memo, Cs=(float(probe.C_),))
                if features is not None and method == "finetune" and not zero_head
                else probe_all
            )
            begin(same_c)
            if progress and current().is_main:
                say(f"refit on all {len(everything)} photos: the {trained} epoch(s) the validation run trained")
            done = run_finetune(
                network,
                everything,
                None,
                classes,
                loaded.spec.data_config,
                config,
                checkpoint_dir,
                resume=resume,
                stop_after=trained,
                name="refit-",
                **common,
            )
            refit_history, final = [asdict(r) for r in done.history], done.network
        refit = {
            "photos": len(everything),
            "epochs": trained if best_epoch > 0 else 0,
            "seconds": round(time.perf_counter() - began, 3),
            "history": refit_history,
            "frozen_stages": dict(done.frozen) if best_epoch > 0 else None,
        }
        if best_epoch > 0 and progress and current().is_main:
            say(_refit_line(refit))
    if method == "finetune" and best_epoch == 0:  # the probe alone won: it is the model (its own calibration)
        head = probe_all if probe_all is not None else probe
        model = _probe_model(backbone, flip, classes, head)
        temperature, val_proba = float(head.temperature_), None  # (the estimator has the probe's own)
    else:
        model = Classifier.from_network(final, loaded.spec.with_flip_average(flip), classes)
        model.head_weight /= np.float32(temperature)
        model.head_bias /= np.float32(temperature)
    return NetworkFit(
        model,
        val_proba,
        np.asarray(result.val_labels),
        history,
        best_epoch,
        result.stopped_early,
        stopping,
        float(temperature),
        refit,
        tried,
        config,
        frozen,
        mirror=mirror,
    )


def _mirror_line(check: dict[str, Any]) -> str:
    """What the mirror check found, and what the training views will be."""
    found = (
        f"the probe labels the {check['photos']} validation photos at {check['accuracy']:.3f} and their mirror "
        f"images at {check['mirror_accuracy']:.3f}"
    )
    if check["mirror"]:
        return f"mirror images: {found}: training views include them"
    return (
        f"mirror images: {found} ({check['lost']} lost, {check['won']} won: chance {check['chance']:.1%}): a "
        "mirror image is not the same class here, so the training views are not mirrored (--mirror on to mirror them anyway)"
    )


def _probe_kept_by(verdict: dict[str, Any], best: int) -> str:
    """Why the probe stays the model though a trained epoch scored higher."""
    return (
        f"the probe: epoch {best}, the best trained, fixes {verdict['fixes']} validation photo(s) the probe misses "
        f"and breaks {verdict['breaks']}, a difference luck gives {verdict['chance']:.0%} of the time"
    )


def _refit_line(refit: dict[str, Any]) -> str:
    """One line on what the refit on all photos cost, and how much of the frozen stages' work it reused."""
    frozen = refit.get("frozen_stages") or {}
    said = ""
    if frozen.get("cached"):
        parts = [f"{frozen['photo_views']:,} new views"]
        if frozen.get("read_from_cache"):
            parts.append(f"{frozen['read_from_cache']:,} read from the cache")
        parts.append(f"{frozen['reused']:,} reused")
        said = f" (frozen stages: {', '.join(parts)})"
    return f"refit on all {refit['photos']:,} photos: {refit['epochs']} epoch(s), {refit['seconds']:.1f} s{said}"


def _probe_model(backbone: Any, flip: bool, classes: list[str], head: Any) -> Classifier:
    """The probe as the saved model: the pretrained trunk and the probe's head (its own calibration)."""
    return Classifier(backbone.spec.with_flip_average(flip), classes, head.coef_, head.intercept_, backbone.trunk())


def _probe_kept(
    backbone: Any,
    probe: Any,
    probe_all: Any | None,
    everything: Dataset,
    classes: list[str],
    config: Finetune,
    flip: bool,
    misses: int,
    progress: bool,
) -> NetworkFit:
    """Fine-tuning not run: the validation part cannot judge a network against the probe, which is kept."""
    from headstart._distributed import current

    reason = (
        f"the probe misses {misses} validation photo(s), fewer than the {MIN_FIXES} a fine-tuned network must fix "
        "for its gain to count, so validation could not tell a better network from luck; the probe is the model "
        "(--always-finetune to train anyway)"
    )
    if progress and current().is_main:
        say(f"fine-tuning skipped: {reason}")
    head = probe_all if probe_all is not None else probe
    refit = {"photos": len(everything), "epochs": 0, "seconds": 0.0, "history": []} if probe_all is not None else None
    return NetworkFit(
        _probe_model(backbone, flip, classes, head),
        None,
        np.zeros(0, dtype=np.int64),
        [],
        0,
        False,
        {},
        float(head.temperature_),
        refit,
        None,
        config,
        {},
        skipped=reason,
    )


def _cross_fitted(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Validation probabilities with a temperature each half did not see (fit on the other half): the report's
    calibration figures are then held-out ones, not those of a temperature fit on the very photos scored."""
    proba = np.zeros_like(logits)
    halves = [np.arange(len(y))[0::2], np.arange(len(y))[1::2]]
    for mine, other in (halves, halves[::-1]):
        t = fit_temperature(logits[other], y[other]) if len(other) else 1.0
        proba[mine] = softmax(logits[mine] / t, axis=1)
    return proba


def _best_scores(result: Any) -> tuple[float, float]:
    """(best validation accuracy, minus its loss): what the lr search maximises."""
    record = next(r for r in result.history if r.epoch == result.best_epoch)
    return float(record.val_accuracy), -float(record.val_loss)
