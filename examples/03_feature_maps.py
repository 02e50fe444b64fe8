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
# # Feature maps: what the trunk turns a photo into
#
# The lesson shows VGG-16's trunk turning a 224×224 cat photo into a 512×7×7 tensor, drawn as a 49×512 strip.
# Here the same for any backbone and any stage: the photo, the most active channels of a stage laid over it,
# and the final map as positions × channels. The result object draws itself.

# %%
PHOTO = "Siamese"  # a breed folder of the bundled sample, or set PHOTO_PATH to any photo of your own
PHOTO_PATH = None
BACKBONE = "tf_efficientnet_lite0"  # the lesson's "vgg16" works too (weights from the hub)
CHANNELS = 16

# %%
# %matplotlib inline
from pathlib import Path

import headstart as hs

photo = Path(PHOTO_PATH) if PHOTO_PATH else sorted((hs.sample_data() / "test" / PHOTO).glob("*.jpg"))[0]
for stage in hs.list_layers(BACKBONE):
    print(stage)

# %% [markdown]
# ## The last stage's feature map: the features the classifier reads
#
# Averaging this map over its positions gives the feature vector the linear probe is trained on.

# %%
maps = hs.feature_maps(BACKBONE, photo)
print(maps.layer, maps.activations.shape, "final map", maps.final.shape)
maps

# %% [markdown]
# ## An early stage: edges and colours, at high resolution
#
# `figure()` returns the picture as a matplotlib figure (to save, or to change), here with more channels.

# %%
early = hs.feature_maps(BACKBONE, photo, layer=hs.list_layers(BACKBONE)[1]["module"])
early.figure(n_channels=CHANNELS)

# %%
features = maps.final.reshape(maps.final.shape[0], -1).mean(axis=1)
print("feature vector:", features.shape, "most active channels:", maps.top_channels(5))
