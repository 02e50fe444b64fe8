"""``headstart demo``: the whole path on bundled photos, offline, in about a minute on a laptop CPU."""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from headstart.features import DEFAULT_BACKBONE
from headstart.reports.metrics import format_accuracy


def sample_data() -> Path:
    """The bundled Oxford-IIIT Pet sample (12 breeds; ``train/`` 5 photos each, ``test/`` 2 each; CC BY-SA 4.0).

    Example:
        >>> import headstart as hs
        >>> hs.ImageClassifier().fit(sample_data() / "train").score(sample_data() / "test")
        0.958
    """
    return Path(str(files("headstart") / "sample_data" / "pets"))


def run_demo(out_dir: str | Path = "headstart-demo", *, console: Console | None = None) -> dict:
    """Train a breed classifier on the sample, evaluate it on held-out photos, predict three, say where it all is.

    Example:
        >>> run_demo("headstart-demo")["evaluate"]["accuracy"]
        0.958
    """
    from headstart.workflows.evaluation import evaluate
    from headstart.workflows.training import train

    console = console or Console(markup=False)  # paths are printed verbatim, brackets and all
    out_dir = Path(out_dir)
    sample = sample_data()
    start = time.perf_counter()
    console.print(
        f"[bold]headstart demo[/bold]: {DEFAULT_BACKBONE} (offline ImageNet weights) on {escape(str(sample))}",
        markup=True,
    )
    console.print("1. train a linear probe on 60 photos of 12 breeds (features cached for next time)")
    result = train(sample / "train", backbone=DEFAULT_BACKBONE, out=out_dir / "pets-sample.safetensors", progress=True)
    m = result.metrics
    accuracy = format_accuracy(m["val_accuracy"], m.get("val_accuracy_ci"), m["n_val"])
    console.print(f"   validation accuracy {accuracy}, model: {result.model_path}")

    console.print("2. evaluate on 24 held-out photos")
    report = evaluate(result.model_path, sample / "test", out_dir=out_dir / "evaluation")
    accuracy = format_accuracy(report.accuracy, report.details.get("accuracy_ci"), report.n_images)
    console.print(f"   accuracy {accuracy}, top-5 {report.top5_accuracy:.3f}")

    console.print("3. predict three photos")
    model = result.model
    photos = [sample / "test" / "Siamese", sample / "test" / "beagle", sample / "test" / "Persian"]
    picks = [sorted(p.glob("*.jpg"))[0] for p in photos]
    for p in model.predict(picks, top_k=3).predictions:
        shown = ", ".join(f"{l} {q:.2f}" for l, q in zip(p.labels, p.probabilities))
        console.print(f"   {p.path.parent.name}/{p.path.name}: {shown}", highlight=False)

    console.print(f"done in {time.perf_counter() - start:.0f} s. Look at:")
    for picture in [result.run_dir / "confusion_matrix.png", result.run_dir / "misclassified.png", *report.pictures]:
        console.print(f"   {picture}")
    return {"train": m, "evaluate": report.to_dict(), "seconds": time.perf_counter() - start}
