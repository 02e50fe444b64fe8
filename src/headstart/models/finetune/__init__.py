"""Fine-tuning: the network trained on the photos, its head from zero (or from the probe's, LP-FT), with the
probe as the model to beat, in its parts.

=============  =====================================================================================================
``config``     :class:`Finetune`, the options (one dataclass → the API, the ``headstart train`` flags, config files;
               defaults by the number of photos)
``parts``      the network, which parameters train, the optimiser and its schedule, the photos and their
               augmentation, the epoch records and the curves
``frozen``     the frozen stages run once per photo and view (an activation bank), not every epoch
``views``      which views it trains on: the augmentation, and whether a mirror image is the same class here
``feeds``      how the epochs get their batches: the frozen stages' activations, or whole photos every epoch
``loop``       the epochs: train, validate, keep the best, stop early, checkpoint and resume
``stopping``   when the epochs stop (validation loss) and which epoch is kept (validation accuracy), in words
``resume``     checkpoints: which one a resumed run continues, what each epoch writes, nothing-left runs
``fit``        what ``ImageClassifier.fit`` runs for a network: the validation run(s), the temperature, the refit on
               all photos
``lr_find``    the learning-rate range test
=============  =====================================================================================================

Names are re-exported lazily: ``from headstart.models.finetune import Finetune`` imports the options only.

Example:
    >>> from headstart.models.finetune import Finetune
    >>> Finetune(epochs=5).resolved(300).augment
    'light'
"""

from __future__ import annotations

from headstart._lazy import lazy_exports

_MODULES = {
    "config": ("Finetune", "FinetuneConfig", "help_texts", "load_config_file"),
    "parts": (
        "EpochRecord",
        "FinetuneResult",
        "PhotoDataset",
        "build_network",
        "curves_figure",
        "freeze_batchnorm",
        "lr_factor",
        "make_optimizer",
        "photo_transform",
        "plot_curves",
        "start_from_probe",
        "trainable_groups",
    ),
    "frozen": ("ActivationBank", "split_network"),
    "loop": ("run_finetune",),
    "fit": ("NetworkFit", "fit_network"),
    "lr_find": ("LrFindResult", "lr_range_test", "plot_lr_find", "suggest_lr"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULES)
