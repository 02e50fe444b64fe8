# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---


# %% [markdown]
# # The challenge: images nothing like ImageNet
#
# Transfer learning works best when the new photos look like ImageNet's (a new kind of animal). The lesson's
# challenge: try completely different images (factory parts, leaves, medical images, digits) and measure.
#
# Offline, the different images are scikit-learn's handwritten digits (8×8 grey scans, 10 classes), written out as
# PNGs; the pets are the bundled sample. Both get the same backbone, the same probe and the same number of
# training photos per class. For your own images, set `DIGITS` to a folder with one subfolder per class.

# %%
PER_CLASS = 5  # training photos per class for both data sets (the sample has 5 per breed)
TEST_PER_CLASS = 4
DIGITS = None  # None: scikit-learn's digits; or a folder of class folders of your own very different images
BACKBONE = "tf_efficientnet_lite0"

# %%
from pathlib import Path

import numpy as np
from PIL import Image

import headstart as hs

WORK = Path("headstart-examples") / "digits"


def write_digits(folder: Path, per_class: int, test_per_class: int) -> tuple[Path, Path]:
    """scikit-learn's 8×8 digit scans as 64×64 PNGs in train/<digit>/ and test/<digit>/."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for digit in range(10):
        rows = np.flatnonzero(digits.target == digit)[: per_class + test_per_class]
        for k, row in enumerate(rows):
            part = "train" if k < per_class else "test"
            pixels = (255 - digits.images[row] * 255 / 16).astype(np.uint8)  # dark ink on white paper
            target = folder / part / str(digit) / f"digit_{row}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).resize((64, 64), Image.NEAREST).convert("RGB").save(target)
    return folder / "train", folder / "test"


train, test = write_digits(WORK, PER_CLASS, TEST_PER_CLASS) if DIGITS is None else (Path(DIGITS), None)
print(len(hs.load_dataset(train)), "training images of", len(hs.load_dataset(train).classes), "classes")

# %% [markdown]
# ## The same recipe on both

# %%
digits_clf = hs.ImageClassifier(backbone=BACKBONE).fit(train)
digits_acc = hs.evaluate(digits_clf, test).accuracy if test else digits_clf.report_["val_accuracy"]
pets_clf = hs.ImageClassifier(backbone=BACKBONE).fit(hs.sample_data() / "train")
pets_acc = hs.evaluate(pets_clf, hs.sample_data() / "test").accuracy
chance_digits, chance_pets = 1 / len(digits_clf.classes_), 1 / len(pets_clf.classes_)
print(f"pets:   {pets_acc:.3f} on held-out photos (chance {chance_pets:.3f})")
print(f"digits: {digits_acc:.3f} on held-out scans (chance {chance_digits:.3f})")
digits_clf

# %% [markdown]
# ## What the network thinks a digit is
#
# Its ImageNet head has no digits: it says what the scan reminds it of.

# %%
scan = sorted((train / "3").glob("*.png"))[0] if DIGITS is None else next(iter(sorted(train.rglob("*.png"))))
seen = hs.explain(BACKBONE, scan)
print([(name, round(p, 3)) for name, p in seen.top])
seen
