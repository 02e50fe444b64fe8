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
# # Cats vs dogs: a pretrained network as a feature extractor
#
# The lesson's first notebook: take a network pretrained on ImageNet, check that it really is pretrained, run
# photos through its convolutional trunk once, and train a small linear classifier on the features. headstart
# does each step for you (features cached, a seeded split that never leaks, the classifier's strength chosen by
# cross-validation, calibrated probabilities) and shows what it did.
#
# This runs in a minute or two on the photos bundled with headstart. For the lesson's data set, Microsoft's
# Kaggle Cats and Dogs (25,000 photos, ~800 MB, downloaded once), set `FULL = True` below.

# %%
FULL = False  # True: the full Kaggle Cats and Dogs set instead of the bundled sample
N_PHOTOS = 800  # photos to train on from the full set (the lesson used 800); the sample has 60
BACKBONE = "tf_efficientnet_lite0"  # any timm name: "resnet50", "vgg16", "mobilenetv2_100" (weights from the hub)

# %%
import csv
import random
from pathlib import Path

import headstart as hs

WORK = Path("headstart-examples")
WORK.mkdir(exist_ok=True)

# %% [markdown]
# ## The photos
#
# The bundled sample holds 12 Oxford-IIIT Pet breeds; cat breeds are the capitalised ones, so "cat" or "dog" is
# the first letter's case. We write that as a CSV of `path,label`, one of the layouts `load_dataset` reads. The
# full set comes as `PetImages/Cat` and `PetImages/Dog`, which `load_dataset` reads as it is (and its broken
# files are reported and skipped, never silently lost).


# %%
def cats_and_dogs(folder: Path, csv_path: Path) -> Path:
    """A CSV of path,label with the breed folders of ``folder`` relabelled as cat or dog."""
    breeds = hs.load_dataset(folder)
    with csv_path.open("w", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(["path", "label"])
        for sample in breeds.samples:
            rows.writerow([sample.path.resolve(), "cat" if sample.label[0].isupper() else "dog"])
    return csv_path


if FULL:
    photos = hs.load_dataset(hs.download_dataset("catsdogs", WORK / "catsdogs"))
    chosen = random.Random(0).sample(range(len(photos)), N_PHOTOS)
    train_data = photos.subset(chosen)
    rest = sorted(set(range(len(photos))) - set(chosen))
    test_data = photos.subset(random.Random(1).sample(rest, 400))
else:
    train_data = hs.load_dataset(cats_and_dogs(hs.sample_data() / "train", WORK / "cats_dogs_train.csv"))
    test_data = hs.load_dataset(cats_and_dogs(hs.sample_data() / "test", WORK / "cats_dogs_test.csv"))
print(len(train_data), "training photos,", len(test_data), "test photos; classes", train_data.classes)

# %% [markdown]
# ## Is the network really pretrained?
#
# Ask the backbone's own ImageNet head what it sees in one photo (the lesson: VGG-16 says "tiger cat" for its
# cat). The heat map shows where in the photo the evidence for that class is (Grad-CAM).

# %%
cat_photo = next(p for p, label in zip(test_data.paths, test_data.labels) if label.lower() == "cat")
seen = hs.explain(BACKBONE, cat_photo)
print([(name, round(p, 3)) for name, p in seen.top])
seen

# %% [markdown]
# ## Features once, then a linear classifier
#
# `fit` extracts the features of every photo (cached: a second run computes nothing), holds out a seeded,
# stratified fifth for validation, and fits a logistic-regression probe. The model shows itself as a card.

# %%
clf = hs.ImageClassifier(backbone=BACKBONE).fit(train_data.paths, train_data.labels)
clf

# %% [markdown]
# ## How good is it on photos it has never seen?

# %%
model_file = clf.save(WORK / "cats_dogs.safetensors")
report = hs.evaluate(model_file, test_data)
report

# %%
print(clf.predict(test_data.paths[:4]), test_data.labels[:4])
assert report.accuracy >= 0.8, report.accuracy  # the lesson: 0.98 on 100 validation photos
