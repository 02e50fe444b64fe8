"""Embedding engines and the shared photo preprocessing: one batch in, the backbone's features out."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from headstart.features.engines import _embed_fitting_memory, view_embedder
from headstart.features.extract import extract_features, preprocessor


@pytest.fixture(scope="module")
def batch(sample: Path, lite0) -> tuple[list[Path], torch.Tensor]:
    photos = sorted((sample / "test").glob("*/*.jpg"))[:3]
    decode = preprocessor(lite0)
    return photos, torch.stack([decode(p) for p in photos])


@pytest.mark.slow
def test_the_preprocessor_gives_extractions_pixels(lite0, cache, batch) -> None:
    """Features of preprocessor(photo) are what extract_features stores: every model run outside the cache (ONNX
    checks, int8 calibration, the server) sees the same pixels as extraction."""
    photos, x = batch
    assert x.shape == (3, *lite0.spec.data_config["input_size"])
    with torch.no_grad():
        want = lite0.features(x).numpy()
    got = extract_features(photos, lite0, cache=cache, precision="fp32").features
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_pipeline_averages_the_photo_and_its_mirror_image_when_the_spec_says_so(lite0, batch) -> None:
    from headstart.features.pipeline import Pipeline

    photos, x = batch
    flipped = lite0.with_flip_average(True)
    averaged_pipe = Pipeline(flipped.spec, flipped, engine="torch", precision="fp32")
    averaged = averaged_pipe.features([averaged_pipe.decode(p) for p in photos])
    pipe = Pipeline(lite0.spec, lite0, engine="torch", precision="fp32")
    plain = pipe.features([pipe.decode(p) for p in photos])
    assert averaged.shape == plain.shape == (3, 1280)
    with torch.no_grad():
        np.testing.assert_allclose(plain, lite0.features(x).numpy(), rtol=1e-4, atol=1e-4)
        mirrored = lite0.features(x.flip(-1)).numpy()
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=1e-4, atol=1e-4)
    assert np.abs(averaged - plain).max() > 1e-3, "mirror averaging changes the features"


@pytest.mark.slow
def test_the_views_asked_for_are_embedded_in_one_pass_each_as_on_its_own(lite0, batch) -> None:
    """Row r of ``embed(x, wanted)`` is photo ``x[i]`` as it is or mirrored: bit-identical to embedding that view
    alone (so a view computed by one command equals the same view computed by another), whatever the spec says
    about averaging."""
    _, x = batch
    wanted = [(0, "orig"), (2, "mirror"), (0, "mirror"), (1, "orig")]
    for backbone in (lite0, lite0.with_flip_average(True)):
        rows = view_embedder(backbone, precision="fp32", device="cpu")(x, wanted)
        with torch.no_grad():
            want = np.stack(
                [lite0.features((x[i] if v == "orig" else x[i].flip(-1))[None]).numpy()[0] for i, v in wanted]
            )
        np.testing.assert_array_equal(rows, want)
    with pytest.raises(ValueError, match="Unknown view.*'upside-down'.*orig, mirror"):
        view_embedder(lite0, precision="fp32", device="cpu")(x, [(0, "upside-down")])


def test_a_batch_that_does_not_fit_in_memory_is_split() -> None:
    """The device's out-of-memory error (injected: no test machine can be made to run out) halves the batch."""
    sizes = []

    def embed(chunk: torch.Tensor) -> np.ndarray:
        sizes.append(len(chunk))
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return chunk.sum(dim=(1, 2, 3), keepdim=False)[:, None].numpy()

    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1)
    out = _embed_fitting_memory(embed, x, contextlib.nullcontext())
    np.testing.assert_array_equal(out[:, 0], np.arange(8))
    assert sizes == [8, 4, 2, 2, 4, 2, 2]
    with pytest.raises(RuntimeError, match="other failure"):
        _embed_fitting_memory(
            lambda c: (_ for _ in ()).throw(RuntimeError("other failure")), x, contextlib.nullcontext()
        )
