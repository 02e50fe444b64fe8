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
# # Audit the data before trusting the accuracy
#
# The lesson's Cats vs Dogs set holds broken files (the notebooks delete 2 or ~230 of them), and its splits are
# random and unseeded. Before training, look at the data: unreadable files, exact and near duplicates (and whether
# they cross the train/test split: a leak that inflates the test score), photos whose label the features disagree
# with, outliers, class balance, and how accuracy grows with more photos.
#
# Here on the bundled sample, with two faults planted in a copy: a duplicate across the split and a broken file.
# For the full Cats vs Dogs set, set `DATA` to `hs.download_dataset("catsdogs", "data")`.

# %%
DATA = None  # None: a copy of the bundled sample with planted faults; or a folder, e.g. hs.download_dataset(...)
BACKBONE = "tf_efficientnet_lite0"

# %%
import shutil
from pathlib import Path

import headstart as hs
from headstart.audit import audit

WORK = Path("headstart-examples") / "audit-data"
if DATA is None:
    shutil.rmtree(WORK, ignore_errors=True)
    shutil.copytree(hs.sample_data(), WORK)
    leaked = sorted((WORK / "test" / "beagle").glob("*.jpg"))[0]
    shutil.copy(leaked, WORK / "train" / "beagle" / "copied_from_test.jpg")  # a leak
    (WORK / "train" / "pug" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")  # a broken file
    train, test = WORK / "train", WORK / "test"
else:
    train, test = Path(DATA), None

# %% [markdown]
# ## Unreadable files: reported, never silently lost

# %%
scanned = hs.scan(train)
print([(u.path.name, u.reason) for u in scanned.unusable])

# %% [markdown]
# ## The audit

# %%
report = audit(train, test=test, backbone=BACKBONE)
report

# %%
report.save(Path("headstart-examples") / "audit")  # audit.json and a self-contained audit.html with thumbnails
if DATA is None:
    assert report.summary()["leaks"] >= 1 and report.summary()["unusable"] == 1
