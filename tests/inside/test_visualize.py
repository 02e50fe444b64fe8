"""Class images (dream), feature maps and heat maps: the Lucent-style pieces, on the real default backbone."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from headstart._validation import ParameterError
from headstart.cli import app
from headstart.errors import HeadstartError
from headstart.inside import objectives as obj
from headstart.inside import param, render
from headstart.inside import transforms as tr
from headstart.inside.activations import feature_maps, featuremaps, list_layers
from headstart.inside.class_image import canvas_size, dream, high_frequency_energy, probabilities_of_file
from headstart.inside.heatmap import explain
from headstart.models.target import load_target

runner = CliRunner()


@pytest.fixture(scope="module")
def net():
    return load_target("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, lite0) -> Path:
    """A headstart model file over lite0 with a fixed random 3-class head (no training needed to test the wiring)."""
    from headstart.models.classifier import Classifier

    rng = np.random.default_rng(0)
    trunk = {k: v.numpy() for k, v in lite0.state_dict_without_head().items()}
    head = rng.normal(0, 0.05, (3, lite0.spec.num_features)).astype(np.float32)
    model = Classifier(lite0.spec, ["beagle", "pug", "Siamese"], head, np.zeros(3, np.float32), trunk)
    return model.save(tmp_path_factory.mktemp("model") / "three.safetensors")


def _fake_T(values: dict[str, torch.Tensor]):
    return lambda name: values[name]


# ------------------------------------------------------------------------------------------------- objectives
def test_objective_algebra_values_and_names() -> None:
    T = _fake_T({"logits": torch.tensor([[1.0, 2.0, 3.0]]), "image": torch.full((1, 3, 4, 4), 0.5)})
    a, b = obj.class_logit(2), obj.class_logit(1)
    assert float((a + b)(T)) == 5.0 and float((a - b)(T)) == 1.0 and float((2 * a)(T)) == 6.0
    assert float((a / 2)(T)) == 1.5 and float((-a)(T)) == -3.0 and float(sum([a, b])(T)) == 5.0
    assert float(obj.total_variation()(T)) == 0.0 and float(obj.l2()(T)) == 0.0
    assert (a - 0.5 * obj.total_variation()).name == "class_logit(2) - 0.5·total_variation()"
    assert obj.as_objective("blocks.5:17").name == "channel('blocks.5', 17)"


@pytest.mark.parametrize("bad", ["text", [1], None])
def test_objective_algebra_refuses_other_types(bad) -> None:
    with pytest.raises(TypeError, match=f"got {type(bad).__name__}"):
        obj.class_logit(0) * bad
    with pytest.raises(TypeError, match=f"got {type(bad).__name__}"):
        obj.class_logit(0) + bad


def test_objective_arguments_are_checked() -> None:
    with pytest.raises(
        ParameterError, match=r"^The 'c' parameter of class_logit must be an int in \[0, inf\). Got -1 instead.$"
    ):
        obj.class_logit(-1)
    with pytest.raises(
        ParameterError, match="'n' parameter of channel must be below 4, the number of channels of layer 'x'"
    ):
        obj.channel("x", 4)(_fake_T({"x": torch.zeros(1, 4, 2, 2)}))
    with pytest.raises(TypeError, match="'layer:channel'"):
        obj.as_objective("blocks.5")


def test_importing_the_package_costs_no_torch() -> None:
    """``headstart dream --help`` and friends must stay fast: torch loads when a function first needs it."""
    code = (
        "import sys, headstart.inside, headstart.inside.class_image, headstart.inside.heatmap; "
        "print(sorted(m for m in ('torch', 'timm', 'matplotlib') if m in sys.modules))"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


# ------------------------------------------------------------------------------------- params and transforms
@pytest.mark.parametrize(
    "make",
    [
        lambda: param.fft_image((2, 3, 40, 56), seed=1),
        lambda: param.fft_image((1, 3, 33, 33), decorrelate=False),
        lambda: param.pixel_image((1, 3, 32, 48), seed=1),
        lambda: param.image(30, fft=False),
    ],
)
def test_parameterisations_give_valid_images_with_gradients(make) -> None:
    params, image_f = make()
    image = image_f()
    assert image.dim() == 4 and image.shape[1] == 3 and image.min() >= 0 and image.max() <= 1
    image.mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_seeds_repeat() -> None:
    assert torch.equal(param.fft_image((1, 3, 16, 16), seed=3)[1](), param.fft_image((1, 3, 16, 16), seed=3)[1]())
    with pytest.raises(ParameterError, match=r"'shape' parameter of fft_image must be \(batch, 3, height, width\)"):
        param.fft_image((3, 16, 16))
    start32 = param.pixel_image((1, 3, 8, 8), seed=3)[1]()
    start64 = param.pixel_image((1, 3, 8, 8), seed=3, dtype=torch.float64)[1]()
    assert start64.dtype == torch.float64 and torch.equal(start64.float(), start32)


def test_transforms_keep_channels_and_range() -> None:
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)
    for t in [
        *tr.standard_transforms(),
        tr.compose(tr.standard_transforms()),
        tr.center_crop(48),
        tr.pad(3, mode="reflect"),
    ]:
        y = t(x)
        assert y.shape[:2] == (2, 3) and y.min() >= -1e-5 and y.max() <= 1 + 1e-5
    assert tr.jitter(8)(x).shape[-2:] == (56, 56) and tr.center_crop(80)(x).shape[-2:] == (80, 80)
    assert torch.equal(tr.random_rotate([0])(x), x)
    with pytest.raises(
        ParameterError, match=r"^The 'd' parameter of jitter must be an int in \[1, inf\). Got 0 instead.$"
    ):
        tr.jitter(0)
    with pytest.raises(ParameterError, match="'scales' parameter of random_scale must be a non-empty list"):
        tr.random_scale([])


# ------------------------------------------------------------------------------------------------------ render
@pytest.mark.slow
def test_render_increases_the_objective(net) -> None:
    """Like Lucent's assert_gradient_descent, on the real network: a few Adam steps raise the objective."""
    seen: list[float] = []
    objective = obj.class_logit(340) - 0.1 * obj.total_variation()
    torch.manual_seed(0)
    images = render(
        net,
        objective,
        param_f=lambda: param.fft_image((1, 3, 128, 128), seed=0),
        steps=8,
        thresholds=(4,),
        callback=lambda step, image, value: seen.append(value),
    )
    assert len(seen) == 8 and seen[-1] > seen[0]
    assert len(images) == 2 and images[-1].shape == (1, 3, 128, 128)


@pytest.mark.slow
def test_render_channel_objective_reads_any_layer_and_stops_on_request(net) -> None:
    seen: list[float] = []
    render(
        net,
        "blocks.4:3",
        param_f=lambda: param.fft_image((1, 3, 96, 96), seed=0),
        transforms=[],
        steps=6,
        callback=lambda step, image, value: seen.append(value) or step == 4,
    )
    assert len(seen) == 4 and seen[-1] > seen[0]
    with pytest.raises(ValueError, match="no layer 'nope'"):
        render(net, obj.channel("nope", 0), steps=1)


# ------------------------------------------------------------------------------------------------------- dream
def test_canvas_is_what_the_eval_resize_keeps() -> None:
    assert canvas_size({"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"}) == (256, 256)
    assert canvas_size({"input_size": (3, 224, 224), "crop_pct": 1.0}) == (224, 224)


@pytest.mark.slow
def test_dream_raises_the_target_and_measures_the_saved_png(net, tmp_path: Path) -> None:
    result = dream(net, "zebra", tmp_path / "zebra.png", steps=30, strip=True)
    assert result.target == 340 and result.start_probability < 0.01 and result.probability > 0.5
    report = json.loads((tmp_path / "zebra.json").read_text())
    again = float(probabilities_of_file(net, tmp_path / "zebra.png")[340])
    assert report["probability"] == pytest.approx(again, abs=1e-6) and report["method"] == "lucid"
    assert "read back from disk" in report["measured_on"] and (tmp_path / "zebra-strip.png").stat().st_size > 0


@pytest.mark.slow
def test_lesson_method_runs_and_raises_the_target(net, tmp_path: Path) -> None:
    result = dream(net, 284, tmp_path / "cat.png", method="lesson", steps=8)
    assert result.steps == 8 and result.probability > 10 * result.start_probability
    assert result.settings["optimizer"].startswith("SGD")


@pytest.mark.slow
def test_dream_for_a_trained_model(trained_model: Path, tmp_path: Path) -> None:
    result = dream(trained_model, "pug", tmp_path / "pug.png", steps=5)
    assert result.target_name == "pug" and result.probability > result.start_probability


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread inside a test (the count of before is restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_total_variation_lowers_high_frequency_energy(net, one_torch_thread) -> None:
    """The lesson's claim in small: the same pixel loop with total variation leaves a smoother image.

    In float64, on one thread. In float32 this 10-step loop (lr 2.5, a third of the pixels clipped to 0 or 1, the
    sign of |Δ| flipping at ties) amplifies rounding so much that the thread count alone, through the order of
    torch's reductions, moved the energy with TV from 0.59 to 0.67 (1 to 4 threads; at 2 threads 0.669 against
    0.85 × 0.770 failed), seeds and order of tests being equal. In float64 the energies were the same to every
    printed digit for 1, 2 and 4 threads (0.7597 without TV, 0.6202 with it); one thread makes it doubly sure,
    and is much faster than two when other processes keep the cores busy.
    """
    module = copy.deepcopy(net.module).double()  # the module-scoped network stays float32

    def energy(tv: float) -> float:
        torch.manual_seed(0)
        image = render(
            module,
            obj.class_log_prob(284) - tv * obj.total_variation(),
            param_f=lambda: param.pixel_image((1, 3, 96, 96), seed=0, dtype=torch.float64),
            optimizer=lambda p: torch.optim.SGD(p, lr=2.5),
            transforms=[],
            steps=10,
        )[-1]
        assert image.dtype == torch.float64
        return high_frequency_energy(image)

    rough, smooth = energy(0.0), energy(300.0)
    assert smooth < 0.85 * rough, (smooth, rough)
    assert high_frequency_energy(np.zeros((8, 8, 3), np.uint8)) == 0.0
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert 0.7 < high_frequency_energy(noise) < 0.9  # white noise: about 0.8 of its power above half Nyquist


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"target": "unicornx"}, HeadstartError, "Unknown class"),
        (
            {"target": 1, "method": "deepdream"},
            ParameterError,
            "^The 'method' parameter of dream must be one of 'lucid', 'lesson'",
        ),
        ({"target": 1, "steps": 0}, ParameterError, r"^The 'steps' parameter of dream must be an int in \[1, inf\)"),
        ({"target": 1, "tv": -1.0}, ParameterError, r"^The 'tv' parameter of dream must be a float in \[0, inf\)"),
        (
            {"target": 1, "stop_at": 1.5},
            ParameterError,
            r"^The 'stop_at' parameter of dream must be a float in \(0, 1\]",
        ),
        ({"target": 1, "out_name": "x.jpg"}, ParameterError, "'out' parameter of dream must be a path ending in .png"),
        ({"target": 1, "out_name": "folder.png"}, ParameterError, "must be a file to write, not a folder"),
    ],
)
def test_dream_bad_input_writes_nothing(net, tmp_path: Path, kwargs, error, words) -> None:
    out = tmp_path / kwargs.pop("out_name", "x.png")
    if out.name == "folder.png":
        out.mkdir()
    before = sorted(tmp_path.iterdir())
    with pytest.raises(error, match=words):
        dream(net, out=out, **kwargs)
    assert sorted(tmp_path.iterdir()) == before and not any(out.iterdir() if out.is_dir() else [])


# ------------------------------------------------------------------------------------------------- featuremaps
@pytest.mark.slow
def test_featuremaps_lists_timm_layers_and_draws(sample: Path, tmp_path: Path, lite0) -> None:
    layers = list_layers(lite0)
    # every stage that works is listed (blocks.3 and blocks.5 keep their input's resolution, so timm's feature_info
    # leaves them out), with channels and resolution as measured
    assert [row["module"] for row in layers] == [f"blocks.{i}" for i in range(7)] + ["forward_features"]
    assert [(r["num_chs"], r["reduction"]) for r in layers[3:6]] == [(80, 16), (112, 16), (192, 32)]
    photo = sample / "test" / "Siamese" / "Siamese_17.jpg"
    for row in layers[3:6:2]:  # the stages timm does not list draw too
        assert (
            featuremaps(lite0, photo, tmp_path / f"{row['module']}.png", layer=row["module"]).activations.shape[0]
            == row["num_chs"]
        )
    fm = featuremaps(lite0, photo, tmp_path / "fm.png", layer="blocks.2", n_channels=4)
    assert fm.activations.shape == (40, 28, 28) and fm.final.shape == (1280, 7, 7)
    assert len(fm.top_channels(4)) == 4 and (tmp_path / "fm.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(HeadstartError, match="no layer 'blocks.99'"):
        feature_maps(lite0, photo, layer="blocks.99")


# ----------------------------------------------------------------------------------------------------- explain
@pytest.mark.slow
def test_explain_overlay_has_the_photos_aspect(net, sample: Path, tmp_path: Path) -> None:
    photo = sample / "test" / "Bengal" / "Bengal_16.jpg"  # 384×256
    e = explain(net, photo, tmp_path / "cam.png", target="Siamese cat")
    assert e.heatmap.shape == (224, 336) and e.image.shape[:2] == e.heatmap.shape
    assert 0 <= e.heatmap.min() and e.heatmap.max() <= 1 and e.target == 284 and e.layer == "blocks.6"
    assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_explain_a_trained_model(trained_model: Path, sample: Path) -> None:
    e = explain(trained_model, sample / "test" / "pug" / "pug_17.jpg", method="gradcam++")
    assert e.target_name in ("beagle", "pug", "Siamese") and e.out is None and e.heatmap.shape[0] == 224
    assert e.top[0] == (e.target_name, pytest.approx(e.probability))  # default: the model's top class
    assert [name for name, _ in e.top] == sorted(["beagle", "pug", "Siamese"], key=dict(e.top).get, reverse=True)
    assert sum(p for _, p in e.top) == pytest.approx(1.0, abs=1e-5)  # all three classes of the head
    assert e.method == "gradcam++" and e.network == str(trained_model) and 0 <= e.heatmap.min() <= e.heatmap.max() <= 1


@pytest.mark.slow
def test_explain_replaces_an_earlier_output_and_says_so(net, sample: Path, tmp_path: Path, capsys) -> None:
    """A re-run replaces the PNG of the run before (nothing to clean up by hand); the path written is reported,
    and a line on stderr says an existing file was replaced. A folder is refused before any work."""
    photo, out = sample / "test" / "pug" / "pug_17.jpg", tmp_path / "cam.png"
    out.write_bytes(b"an older result")
    e = explain(net, photo, out, target="pug")
    assert e.out == out and out.read_bytes()[:4] == b"\x89PNG" and e.to_dict()["out"] == str(out)
    assert f"replacing {out}" in capsys.readouterr().err
    explain(net, photo, tmp_path / "new.png")
    assert "replacing" not in capsys.readouterr().err  # nothing was there: nothing to say
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ParameterError, match="'out' parameter of explain must be a file to write, not a folder"):
        explain(net, photo, tmp_path / "folder.png")
    with pytest.raises(ParameterError, match="'method' parameter of explain must be one of 'gradcam'"):
        explain(net, photo, method="cam")


# --------------------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_cli_dream_json(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["dream", "--target", "espresso", "--steps", "3", "--out", str(tmp_path / "e.png"), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"] == 967 and report["steps"] == 3 and Path(report["png"]).is_file()


@pytest.mark.slow
def test_cli_featuremaps_and_explain(sample: Path, tmp_path: Path) -> None:
    listed = runner.invoke(app, ["featuremaps", "--list-layers"])
    assert listed.exit_code == 0 and "blocks.4" in listed.stdout and "112 channels  1/16 resolution" in listed.stdout
    photo = sample / "test" / "pug" / "pug_17.jpg"
    made = runner.invoke(app, ["featuremaps", str(photo), "--layer", "blocks.1", "--out", str(tmp_path / "f.png")])
    assert made.exit_code == 0 and (tmp_path / "f.png").is_file(), made.output
    cam = runner.invoke(
        app,
        ["explain", "tf_efficientnet_lite0", str(photo), "--class", "pug", "--out", str(tmp_path / "c.png"), "--json"],
    )
    assert cam.exit_code == 0, cam.output
    assert json.loads(cam.stdout)["target_name"].startswith("pug") and (tmp_path / "c.png").is_file()


def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    # exit 2: bad usage or input for the whole command (the CLI's exit-code table)
    bad = runner.invoke(app, ["dream", "--target", "unicornx", "--out", str(tmp_path / "u.png")])
    assert bad.exit_code == 2 and "Unknown class 'unicornx'" in bad.stderr and "Traceback" not in bad.stderr
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    nonimage = runner.invoke(app, ["explain", "tf_efficientnet_lite0", str(text), "--out", str(tmp_path / "n.png")])
    assert nonimage.exit_code == 2 and "notes.jpg" in nonimage.stderr
    both = runner.invoke(app, ["dream", "--target", "1", "--backbone", "x", "--model", "y"])
    assert both.exit_code == 2 and "not both" in both.stderr
    folder = runner.invoke(app, ["featuremaps", str(text), "--out", str(tmp_path)])
    assert folder.exit_code == 2 and "--out" in folder.stderr and "folder" in folder.stderr
    assert "Traceback" not in folder.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.jpg"]


@pytest.mark.slow
def test_explain_is_faithful_on_sample_photos(net, sample: Path) -> None:
    """Blurring the heat map's top 20% lowers the top class's probability more than blurring a random 20%."""
    from PIL import Image, ImageFilter

    from headstart.data.images import load_image
    from headstart.inside.heatmap import explain_view, whole_view

    rng = np.random.default_rng(0)
    drops = {"heat": [], "random": []}
    for photo in sorted((sample / "test").glob("*/*.jpg"))[::4][:6]:
        view = whole_view(load_image(photo), net.spec.data_config)
        e = explain_view(net, view)
        blurred = (
            np.asarray(
                Image.fromarray((view * 255).round().astype(np.uint8)).filter(ImageFilter.GaussianBlur(8)), np.float32
            )
            / 255
        )
        for name, score in (("heat", e.heatmap), ("random", rng.random(e.heatmap.shape))):
            mask = score >= np.quantile(score, 0.8)
            x = torch.from_numpy(np.where(mask[..., None], blurred, view).transpose(2, 0, 1).copy()).unsqueeze(0)
            drops[name].append(e.probability - float(net.probabilities(x)[0, e.target]))
    assert np.mean(drops["heat"]) > np.mean(drops["random"]) + 0.05, drops
