"""Adversarial attacks on real photos and the real default backbone, judged on the saved 8-bit PNG.

One loaded lite0 network and one probe trained on the bundled sample are shared by the module; attacks use few
steps (PGD stops early once the goal holds with a margin) so the whole file stays around a minute on a laptop CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data
from PIL import Image
from typer.testing import CliRunner

from headstart._validation import ParameterError
from headstart.attacks.adversarial import attack, transfer
from headstart.attacks.budget import parse_eps, parse_eps_list
from headstart.attacks.optimise import perturb
from headstart.attacks.preprocessing import preprocess
from headstart.attacks.report import save_attack, save_robustness
from headstart.attacks.robustness_curve import robustness
from headstart.errors import HeadstartError, UnusableImageError

SIAMESE_CAT = 284


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small single-image forward/backward passes: one thread is as fast on an idle machine and 10-40× faster
    when other processes keep the cores busy (oversubscribed intra-op threads spin at every barrier)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def net():
    from headstart.models.target import load_target

    return load_target("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def dog(sample: Path) -> Path:
    return sample / "test" / "pug" / "pug_168.jpg"


@pytest.fixture(scope="module")
def probe(sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from headstart.workflows.training import train

    return train(sample / "train", out=tmp_path_factory.mktemp("probe") / "pets.safetensors").model_path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def timm_top1(net, path: Path) -> int:
    """The ordinary backbone path, written out independently of headstart.attacks: PIL → timm eval transform."""
    from timm.data import create_transform

    transform = create_transform(**{**net.spec.data_config, "mean": (0, 0, 0), "std": (1, 1, 1)})
    return int(net.probabilities(transform(Image.open(path).convert("RGB"))[None]).argmax())


# ---------------------------------------------------------------------------------------------- the package
def test_the_package_offers_exactly_the_public_names_of_before() -> None:
    """The split into modules kept ``headstart.attacks``' public face, and ``headstart``'s lazy exports reach it."""
    import headstart
    import headstart.attacks
    from headstart.attacks import adversarial as attack_module
    from headstart.attacks import budget, optimise, report
    from headstart.attacks import robustness_curve as robustness_module

    assert sorted(headstart.attacks.__all__) == sorted(
        [
            "AttackResult",
            "Robustness",
            "Verdict",
            "attack",
            "parse_eps",
            "parse_eps_list",
            "perturb",
            "plot_attack",
            "preprocess",
            "robustness",
            "save_attack",
            "save_robustness",
            "transfer",
            "METHODS",
            "NORMS",
        ]
    )
    homes = {
        "attack": attack_module,
        "transfer": attack_module,
        "AttackResult": attack_module,
        "parse_eps": budget,
        "METHODS": budget,
        "perturb": optimise,
        "save_attack": report,
        "save_robustness": report,
        "robustness": robustness_module,
        "Robustness": robustness_module,
    }
    for name, module in homes.items():
        assert getattr(headstart.attacks, name) is getattr(module, name), name
    for name in ("attack", "transfer", "robustness", "save_attack", "save_robustness", "parse_eps"):
        assert getattr(headstart, name) is getattr(headstart.attacks, name), name


# ---------------------------------------------------------------------------------------------------- budgets
def test_parse_eps_reads_fractions_and_decimals() -> None:
    assert parse_eps("4/255") == pytest.approx(4 / 255)
    assert parse_eps(" 8 / 255 ") == pytest.approx(8 / 255)
    assert parse_eps("0.0157") == pytest.approx(0.0157)
    assert parse_eps(0) == 0.0
    assert parse_eps("3", norm="l2") == 3.0
    assert parse_eps_list("0,2/255,1/255") == pytest.approx([0, 1 / 255, 2 / 255])


@pytest.mark.parametrize("bad", ["abc", "4/0", "-1/255", "1.5", "nan", "inf", ""])
def test_parse_eps_rejects_bad_budgets_with_a_clear_message(bad: str) -> None:
    with pytest.raises(ParameterError, match=f"^The 'eps' parameter of attack must be .* Got {bad!r} instead.$"):
        parse_eps(bad, caller="attack")


# ------------------------------------------------------------------------------- the attacked preprocessing
@pytest.mark.slow
def test_differentiable_preprocessing_matches_the_timm_transform(net, sample: Path, tmp_path: Path) -> None:
    import torch
    from timm.data import create_transform

    big = tmp_path / "big.png"  # a photo that has to be shrunk (the bundled ones are already small)
    Image.open(sample / "test" / "beagle" / "beagle_171.jpg").convert("RGB").resize((640, 480), Image.LANCZOS).save(big)
    transform = create_transform(**{**net.spec.data_config, "mean": (0, 0, 0), "std": (1, 1, 1)})
    pre = preprocess(net.spec.data_config)
    for path in [big, sample / "test" / "pug" / "pug_168.jpg", sample / "test" / "boxer" / "boxer_157.jpg"]:
        img = Image.open(path).convert("RGB")
        expected = transform(img)
        got = pre(torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 255)[0]
        assert got.shape == expected.shape
        assert float((got - expected).abs().mean()) < 0.5 / 255, path.name  # PIL rounds to 8 bits, we do not
        assert int(net.probabilities(got[None]).argmax()) == int(net.probabilities(expected[None]).argmax())


# ------------------------------------------------------------------------------------------- single photos
@pytest.mark.slow
def test_targeted_pgd_turns_a_dog_into_a_siamese_cat_on_the_saved_png(net, dog: Path, tmp_path: Path) -> None:
    result = attack(net, dog, target="Siamese cat", eps="4/255", steps=20)
    assert result.target == SIAMESE_CAT
    assert result.before.index != SIAMESE_CAT
    assert result.success, result.to_dict()
    paths = save_attack(result, tmp_path)
    png = paths["adversarial"]
    # measured again here, from the file on disk, independently of the library's own report
    assert np.abs(pixels(png) - pixels(dog)).max() <= 4
    assert pixels(png).shape == pixels(dog).shape  # the photo's own size, not the 224 crop
    assert timm_top1(net, png) == SIAMESE_CAT
    assert timm_top1(net, dog) == result.before.index
    report = json.loads(paths["json"].read_text())
    assert report["success"] is True and report["linf_8bit"] <= 4 and report["target"]["index"] == SIAMESE_CAT
    assert report["original"]["index"] == result.before.index and report["adversarial"]["index"] == SIAMESE_CAT
    assert 30 < report["psnr"] < 60 and report["l2"] > 0
    assert report["steps_used"] <= 20
    for kind in ("perturbation", "figure"):
        assert Image.open(paths[kind]).format == "PNG"
    assert Image.open(png).mode == "RGB"


def test_attacking_a_photo_again_says_it_replaces_the_earlier_files(net, dog: Path, tmp_path: Path, capsys) -> None:
    # `attack ... --target 340` after `--target "Siamese cat"` silently replaced attacks/pug_168.*
    result = attack(net, dog, method="fgsm", eps="1/255")
    save_attack(result, tmp_path)
    assert "replacing" not in capsys.readouterr().err
    paths = save_attack(result, tmp_path)
    err = capsys.readouterr().err
    assert f"replacing the earlier attack on {dog.stem} in {tmp_path}" in err, err
    assert paths["adversarial"].name in err and "--out another folder keeps both" in err


@pytest.mark.slow
def test_untargeted_pgd_at_one_step_of_255(net, dog: Path) -> None:
    result = attack(net, dog, eps="1/255", steps=10)
    assert result.success and result.after.index != result.before.index
    assert result.linf_8bit == 1


@pytest.mark.slow
def test_l2_budget_holds_on_the_saved_image(net, dog: Path, tmp_path: Path) -> None:
    result = attack(net, dog, target=SIAMESE_CAT, norm="l2", eps=2.0, steps=10)
    assert result.success and 0 < result.l2 <= 2.0 + 1e-6
    png = save_attack(result, tmp_path)["adversarial"]
    measured = float(np.sqrt((((pixels(png) - pixels(dog)) / 255.0) ** 2).sum()))  # from the file, not the report
    assert measured == pytest.approx(result.l2) and measured <= 2.0 + 1e-6
    assert timm_top1(net, png) == SIAMESE_CAT


@pytest.mark.slow
def test_fgsm_takes_one_step_of_exactly_the_budget(net, dog: Path) -> None:
    result = attack(net, dog, method="fgsm", eps="2/255")
    assert result.steps_used == 1 and result.step_size == pytest.approx(2 / 255)
    assert result.linf_8bit == 2  # one signed step of eps moves (almost) every value by exactly 2 steps
    assert result.success == (result.after.index != result.before.index)


@pytest.mark.slow
def test_lesson_method_is_unbounded(net, dog: Path) -> None:
    result = attack(net, dog, target=SIAMESE_CAT, method="lesson", steps=5)
    assert result.steps_used == 5 and result.step_size == 1.0
    assert result.linf_8bit > 4  # no budget: the lesson's descent moves pixels far more than 4/255
    report = result.to_dict()
    # pixels pushed outside 0-255 had to be clipped for the PNG: the lesson's image was not a valid photo
    assert report["clipped_values"] > 0 and report["eps"] is None and report["eps_8bit"] is None


@pytest.mark.slow
def test_transfer_reports_whether_the_attack_carried_over(net, dog: Path) -> None:
    result = attack(net, dog, target=SIAMESE_CAT, eps="4/255", steps=20)
    (row,) = transfer(result, ["tf_efficientnet_lite1"])
    assert row["model"] == "tf_efficientnet_lite1"
    assert isinstance(row["carried_over"], bool)
    assert row["carried_over"] == (row["adversarial"]["index"] == SIAMESE_CAT)
    assert 0 <= row["target_probability"] <= 1
    if row["carried_over"]:
        assert row["target_probability"] == pytest.approx(row["adversarial"]["probability"], abs=1e-6)
    assert result.to_dict()["transfer"] == [row]


@pytest.mark.slow
def test_ensemble_attack_fools_a_probe_and_the_imagenet_head_at_once(net, probe: Path, dog: Path) -> None:
    result = attack([probe, net], dog, target="Siamese", eps="4/255", steps=30)
    assert [m["success"] for m in result.members] == [True, True], result.members
    assert result.after.label == "Siamese"
    assert result.members[1]["adversarial"]["index"] == SIAMESE_CAT
    assert result.linf_8bit <= 4
    assert len(result.to_dict()["ensemble"]) == 2


@pytest.mark.slow
def test_probe_attack_is_checked_through_classifier_predict(probe: Path, sample: Path, tmp_path: Path) -> None:
    from headstart.models.classifier import Classifier

    photo = sample / "test" / "samoyed" / "samoyed_167.jpg"
    result = attack(probe, photo, target="Bombay", eps="4/255", steps=50)
    paths = save_attack(result, tmp_path)
    (prediction,) = Classifier.load(probe).predict([paths["adversarial"]]).predictions
    assert result.success and prediction.labels[0] == "Bombay"
    assert np.abs(pixels(paths["adversarial"]) - pixels(photo)).max() <= 4


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.slow
@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"target": "unicorn"}, HeadstartError, "Unknown class"),
        ({"target": 1000}, HeadstartError, "out of range"),
        ({"eps": "2"}, ParameterError, "^The 'eps' parameter of attack must be in \\[0, 1\\]"),
        ({"eps": "0.5/255"}, ParameterError, "at least 1/255"),
        ({"method": "cw"}, ParameterError, "^The 'method' parameter of attack must be one of 'pgd', 'fgsm', 'lesson'"),
        ({"steps": 0}, ParameterError, "^The 'steps' parameter of attack must be an int in \\[1, inf\\). Got 0"),
        ({"step_size": -1.0}, ParameterError, "'step_size' parameter of attack"),
        ({"model": []}, ParameterError, "'model' parameter of attack"),
    ],
)
def test_bad_parameters_raise_before_anything_runs(net, dog: Path, kwargs, error, words) -> None:
    with pytest.raises(error, match=words):
        attack(kwargs.pop("model", net), dog, **kwargs)


@pytest.mark.slow
def test_a_non_image_file_is_refused(net, tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("not a photo")
    with pytest.raises(UnusableImageError, match="not an image"):
        attack(net, fake)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--target", "unicorn"], "Unknown class"),
        (["--eps", "9/4"], "The '--eps' option must be in [0, 1]"),  # the option's name, not the Python parameter's
        (["--norm", "l1"], "The '--norm' option must be one of 'linf', 'l2'. Got 'l1' instead."),
        (["--transfer-to", "no_such_net_xyz"], ""),
    ],
)
def test_cli_bad_input_gives_one_error_line_and_no_files(dog: Path, tmp_path: Path, args, words) -> None:
    from headstart.cli import app

    out = tmp_path / "out"
    argv = ["attack", "tf_efficientnet_lite0", str(dog), "--steps", "2", "--out", str(out), *args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code != 0
    assert "error:" in result.output and words in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_cli_non_image_gives_an_error_and_no_files(tmp_path: Path) -> None:
    from headstart.cli import app

    fake, out = tmp_path / "x.png", tmp_path / "out"
    fake.write_bytes(b"\x00" * 100)
    result = CliRunner().invoke(app, ["attack", "tf_efficientnet_lite0", str(fake), "--out", str(out)])
    assert result.exit_code == 2 and "error:" in result.output  # 2: bad input for the whole command
    assert "x.png" in result.output and "Traceback" not in result.output
    assert not out.exists()


# --------------------------------------------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_cli_attack_json_with_transfer(dog: Path, tmp_path: Path) -> None:
    from headstart.cli import app

    argv = [
        "attack",
        "tf_efficientnet_lite0",
        str(dog),
        "--target",
        "284",
        "--eps",
        "4/255",
        "--steps",
        "20",
        "--transfer-to",
        "tf_efficientnet_lite1",
        "--out",
        str(tmp_path),
        "--json",
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["success"] is True and report["linf_8bit"] <= 4
    assert report["transfer"][0]["model"] == "tf_efficientnet_lite1"
    assert sorted(Path(p).name for p in report["files"].values()) == sorted(
        f"pug_168.{kind}" for kind in ("adversarial.png", "perturbation.png", "comparison.png", "attack.json")
    )


# -------------------------------------------------------------------------------------------------- robustness
@pytest.mark.slow
def test_robustness_curve_starts_at_evaluate_and_never_rises(probe: Path, sample: Path, tmp_path: Path) -> None:
    from headstart.data.datasets import load_dataset
    from headstart.workflows.evaluation import evaluate

    data = load_dataset(sample / "test")
    few = data.subset([0, 7, 14, 21])
    report = robustness(probe, few, "0,1/255,2/255", steps=5)
    assert report.eps == pytest.approx([0, 1 / 255, 2 / 255])
    assert report.accuracy[0] == report.clean_accuracy == evaluate(probe, few).accuracy
    assert all(b <= a for a, b in zip(report.accuracy, report.accuracy[1:])), report.accuracy
    # the probe is very confident (cross-entropy gradients underflow) yet fragile: the margin loss still finds it
    assert report.accuracy[-1] == 0.0, report.to_dict()
    # attack success = the share of the photos attacked at a budget (those still right) that it fooled
    assert report.attack_success[0] == 0.0, "eps 0 changes no photo: it fools none (was null in --json)"
    for k in range(1, len(report.eps)):
        before, after = report.accuracy[k - 1], report.accuracy[k]
        expected = None if before == 0 else pytest.approx(1 - after / before, abs=1e-6)
        assert report.attack_success[k] == expected, (k, report.to_dict())
    paths = save_robustness(report, tmp_path)
    saved = json.loads(paths["json"].read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))  # the report, whole
    assert [p["eps_8bit"] for p in saved["curve"]] == [0, 1, 2] and saved["n_images"] == 4
    assert Image.open(paths["curve"]).format == "PNG"


@pytest.mark.slow
def test_robustness_at_eps_0_scores_like_evaluate_with_unknown_and_wrong_labels(
    probe: Path, sample: Path, tmp_path: Path
) -> None:
    """Labels matched loosely (``PUG``), unknown labels (``unicorn``) left out, and a wrong label: eps 0 is
    exactly ``evaluate``'s accuracy, which is then neither 0 nor 1."""
    from headstart.workflows.evaluation import evaluate

    first = lambda split, breed: sorted((sample / split / breed).glob("*.jpg"))[0]  # noqa: E731
    layout = {
        "PUG": sorted((sample / "test" / "pug").glob("*.jpg"))[:2],
        "Siamese": [first("test", "Siamese"), first("train", "pug")],  # a pug filed as Siamese: wrong
        "unicorn": [first("test", "Bengal")],
    }
    for label, photos in layout.items():
        (tmp_path / label).mkdir()
        for photo in photos:
            (tmp_path / label / photo.name).write_bytes(photo.read_bytes())
    expected = evaluate(probe, tmp_path)
    report = robustness(probe, tmp_path, "0")
    assert expected.n_images == report.n_images == 4 and expected.unknown_labels == {"unicorn": 1}
    assert report.accuracy == [report.clean_accuracy] == [expected.accuracy] == [0.75]
    assert report.attack_success == [0.0]


@pytest.mark.slow
def test_cli_robustness_json(probe: Path, sample: Path, tmp_path: Path) -> None:
    from headstart.cli import app

    folder = tmp_path / "two"
    for breed in ("pug", "Siamese"):
        (folder / breed).mkdir(parents=True)
        src = sorted((sample / "test" / breed).glob("*.jpg"))[0]
        (folder / breed / src.name).write_bytes(src.read_bytes())
    argv = [
        "robustness",
        str(probe),
        str(folder),
        "--eps",
        "0,1/255",
        "--steps",
        "3",
        "--out",
        str(tmp_path / "r"),
        "--json",
    ]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [p["eps_8bit"] for p in report["curve"]] == [0, 1]
    assert report["n_images"] == 2 and Path(report["files"]["curve"]).is_file()


# ------------------------------------------------------------------------------------- the reference check
@pytest.mark.slow
def test_pgd_agrees_with_torchattacks(net, sample: Path) -> None:
    """Same model, same 224 crops, same budget: without a random start both produce the same images; with one,
    the success rates agree within one photo of eight."""
    torchattacks = pytest.importorskip("torchattacks")
    import torch

    pre = preprocess(net.spec.data_config)
    photos = sorted((sample / "test").rglob("*.jpg"))[::3]
    crops = torch.cat(
        [
            pre(torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)[None].float() / 255)
            for p in photos
        ]
    )
    targets = torch.full((len(crops),), SIAMESE_CAT)
    eps, alpha, steps = 1 / 255, 0.5 / 255, 3

    def ours(random_start: bool, seed: int = 0) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed) if random_start else None
        delta, used = perturb(
            lambda x: [net.module(x)],
            crops,
            [targets],
            targeted=True,
            eps=eps,
            steps=steps,
            step_size=alpha,
            generator=generator,
            margin=None,
            quantise=False,
        )
        assert used == steps
        return crops + delta

    def theirs(random_start: bool, seed: int = 0) -> torch.Tensor:
        pgd = torchattacks.PGD(net.module, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
        pgd.set_mode_targeted_by_label(quiet=True)
        torch.manual_seed(seed)
        return pgd(crops, targets)

    differ = (ours(False) - theirs(False)).abs() > 1e-5  # only where a gradient sign is lost to float noise
    assert float(differ.float().mean()) < 0.02  # torchattacks against itself on a split batch: ~0.2–7%
    rate = lambda adv: float((net.probabilities(adv).argmax(1) == SIAMESE_CAT).float().mean())  # noqa: E731
    ours_rate, theirs_rate = rate(ours(True)), rate(theirs(True))
    assert abs(ours_rate - theirs_rate) <= 1 / len(crops) + 1e-9, (ours_rate, theirs_rate)


# ------------------------------------------------------------------------------------------- the real data set
@pytest.mark.slow
def test_targeted_pgd_on_unseen_pets_with_a_pets_dev_probe(sample: Path, tmp_path: Path) -> None:
    """The issue's measured claim, small: a 37-breed probe on pets-dev (the bundled test photos held out) is
    pushed to a fixed other breed at 4/255 in at most 50 steps; every saved PNG fools it and stays within 4."""
    from headstart.data.datasets import load_dataset
    from headstart.models.classifier import Classifier
    from headstart.workflows.training import train

    data = load_dataset(shared_data("pets-dev"))
    held = {p.name for p in (sample / "test").rglob("*.jpg")}
    unseen = [i for i, s in enumerate(data.samples) if s.path.name in held]
    model = train(
        data.subset([i for i in range(len(data)) if i not in set(unseen)]),
        backbone="tf_efficientnet_lite0",
        out=tmp_path / "pets-dev.safetensors",
    ).model_path
    photos = [data.samples[i].path for i in unseen[::4]]
    pngs = []
    for photo in photos:
        target = "Siamese" if photo.parent.name == "Bombay" else "Bombay"
        result = attack(model, photo, target=target, eps="4/255", steps=50)
        assert result.success and result.steps_used <= 50, result.to_dict()
        pngs.append((save_attack(result, tmp_path / "out")["adversarial"], photo, target))
    predictions = Classifier.load(model).predict([png for png, _, _ in pngs]).predictions
    for prediction, (png, photo, target) in zip(predictions, pngs):
        assert prediction.labels[0] == target
        assert np.abs(pixels(png) - pixels(photo)).max() <= 4
