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
# # A dog the network calls a cat: adversarial examples, with a budget
#
# The lesson nudges a dog photo by gradient descent until VGG-16 calls it a Siamese cat, while a person still sees
# the dog. Its loop has no budget and never clips to valid pixels; here the change is bounded (L∞: no pixel channel
# moves by more than `EPS`), the result is a real 8-bit PNG, and success is checked on that saved file. Then the
# lesson's question: does the same image fool a different network (transfer)?

# %%
EPS = 4 / 255  # the budget: at most 4 steps of 255 per pixel channel
STEPS = 10  # PGD steps (the lesson: 100 unbounded steps)
DOG = "pug"  # a dog breed folder of the bundled sample, or set DOG_PATH to a photo of your own
DOG_PATH = None
TARGET = "Siamese cat"  # ImageNet class 284
NETWORK = "tf_efficientnet_lite0"  # the lesson attacked "vgg16"
OTHER = "tf_efficientnet_lite1"  # the lesson tried "resnet50" for transfer

# %%
from pathlib import Path

import headstart as hs

WORK = Path("headstart-examples")
dog = Path(DOG_PATH) if DOG_PATH else sorted((hs.sample_data() / "test" / DOG).glob("*.jpg"))[0]

# %% [markdown]
# ## A targeted attack within the budget

# %%
result = hs.attack(NETWORK, dog, target=TARGET, eps=EPS, steps=STEPS)
result

# %% [markdown]
# ## Transfer: the same PNG, shown to another network
#
# The lesson found that its adversarial dog does not fool ResNet-50. Ensembles of different networks are the
# defence it suggests (`hs.attack([NETWORK, OTHER], ...)` attacks both at once).

# %%
hs.transfer(result, [OTHER])
result

# %%
hs.save_attack(result, WORK / "attack")
print(f"success: {result.success}; largest change {result.linf_8bit}/255; files: {sorted(result.files)}")
assert result.linf_8bit <= round(EPS * 255)  # the budget holds on the saved 8-bit PNG
