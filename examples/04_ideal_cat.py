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
# # How a network sees a cat: the ideal class image
#
# The lesson starts from noise and changes the *image*, not the weights, until the network says "Siamese cat":
# cross-entropy alone gives a noise-like picture the network is sure about; adding total variation (smoothness)
# makes eyes and ears appear. headstart has the lesson's loop (`method="lesson"`) and the better practice of
# feature visualisation (`method="lucid"`: a Fourier-space, colour-decorrelated image, random jitter, scale and
# rotation each step). Every probability is measured on the saved 8-bit PNG, as a photo would be.
#
# The lesson ran 1,000 steps and more; `STEPS` is small here so the notebook runs in a minute. Raise it to 256 (and
# the lesson's loop to 1,000) for recognisable pictures.

# %%
STEPS = 8  # optimisation steps; 256 for lucid, 1000 for the lesson's loop give the real pictures
TARGET = "Siamese cat"  # ImageNet class 284; try "zebra" (340) or "water bottle" (898)
BACKBONE = "tf_efficientnet_lite0"  # the lesson used "vgg16" (weights from the hub)

# %%
from pathlib import Path

import headstart as hs

WORK = Path("headstart-examples")
WORK.mkdir(exist_ok=True)

# %% [markdown]
# ## The lesson's loop: cross-entropy and total variation on raw pixels

# %%
lesson = hs.dream(BACKBONE, TARGET, WORK / "lesson-cat.png", method="lesson", steps=STEPS)
lesson

# %% [markdown]
# ## Feature visualisation: a smoother image the network is just as sure of

# %%
lucid = hs.dream(BACKBONE, TARGET, WORK / "lucid-cat.png", method="lucid", steps=STEPS)
lucid

# %%
for name, result in (("lesson", lesson), ("lucid", lucid)):
    print(
        f"{name}: p({result.target_name}) {result.start_probability:.3f} → {result.probability:.3f}, "
        f"high-frequency energy {result.high_frequency_energy:.3f}, top answer {result.top_class}"
    )
assert lucid.probability > lucid.start_probability
