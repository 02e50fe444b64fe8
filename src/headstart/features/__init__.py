"""Layer 2, features: pretrained backbones and what they make of photos.

======================  ==============================================================================
``backbones``           a timm model with its weights and preprocessing (:class:`BackboneSpec` keys the cache)
``spec``                :class:`BackboneSpec` as data, and :func:`trunk_sha256`: caches are keyed by content
``checkpoints``         reading weight files without running code; ``efficientnet_pytorch`` keys → timm
``catalogue``           what ``headstart backbones`` lists, and whether each is usable offline now
``cache``               :class:`FeatureCache`: SQLite, keyed by file content × backbone × view, claims, shared
``cache_schema``        the cache file's tables and layout version; migrating files older headstarts wrote
``cache_sql``           the SQLite machinery under the cache: queued transactions, lock retries, chunked queries
``extract``             :func:`extract_features`: cached, threaded decoding, batches committed as they finish
``sharing``             claimed batches (concurrent extractions compute a photo once), verdicts worth caching
``engines``             one batch → features, in PyTorch (bf16, OOM halving) or ONNX Runtime
``duplicates``          the same photo twice: same bytes, same pixels, or near (features, and the pixel hashes of
                        :mod:`headstart.data.hashing`)
======================  ==============================================================================

Every public name is importable from here (``from headstart.features import FeatureCache``); the modules load on
first use, so importing this package costs nothing. Each module's ``__all__`` and ``_MODULES`` below must agree
(a test checks): add a new public name to both.
"""

from __future__ import annotations

from headstart._lazy import lazy_exports

_MODULES = {
    "backbones": (
        "DEFAULT_BACKBONE",
        "OFFLINE_PACKAGES",
        "Backbone",
        "BackboneSpec",
        "cached_trunk_weights",
        "known_trunk_sha256",
        "load_backbone",
        "offline_choices",
        "offline_weight_file",
        "resolve_backbone",
        "trunk_sha256",
    ),
    "checkpoints": ("map_efficientnet_pytorch_keys", "read_checkpoint", "strip_wrapper_prefix"),
    "catalogue": ("CATALOGUE", "BackboneStatus", "hub_weights_cached", "list_backbones"),
    "cache": ("CLAIM_SECONDS", "SCHEMA_VERSION", "Claimed", "FeatureCache"),
    "extract": (
        "ENGINES",
        "FLIP_AVERAGE",
        "PRECISIONS",
        "Features",
        "bytes_preprocessor",
        "decode_size",
        "default_precision",
        "describe_unusable",
        "extract_features",
        "preprocessor",
    ),
    "sharing": ("claimed_batches", "decoder_id", "is_permanent", "wait_for_others"),
    "engines": (
        "ONNX_PRECISION",
        "VIEWS",
        "ViewEmbedder",
        "onnx_embedder",
        "prepare_model",
        "view_embedder",
    ),
    "duplicates": (
        "COSINE_THRESHOLD",
        "DUPLICATE_NEIGHBOURS",
        "HAMMING_THRESHOLD",
        "NEAR_RULES",
        "DuplicateGroup",
        "Signatures",
        "find_duplicates",
        "group_keys",
        "hamming",
        "image_signatures",
        "near_duplicate_keys",
        "perceptual_hash",
    ),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), _MODULES)
