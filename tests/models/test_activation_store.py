"""The frozen stages' activations on disk: what is read back is what was written, bit for bit, and a file that is
not whole (truncated, a flipped byte, another entry's file under this name, an empty file) is missing, never used;
a store that cannot be written is only a miss later; pruning keeps the store in its bound, least recently used
key first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _store(root: Path, **identity):
    from headstart.models.finetune.store import ActivationStore

    return ActivationStore({"backbone": "lite", "where": "blocks.6", **identity}, root=root)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_what_is_read_back_is_what_was_written(tmp_path: Path, dtype) -> None:
    store = _store(tmp_path)
    a, plain = torch.randn(192, 7, 7).to(dtype), torch.randn(2, 192, 7, 7).to(dtype)
    store.put_many([("ab" * 32, 0, a), ("ab" * 32, "plain", plain)])
    assert torch.equal(store.get("ab" * 32, 0), a) and store.get("ab" * 32, 0).dtype == dtype
    assert torch.equal(_store(tmp_path).get("ab" * 32, "plain"), plain), "another process reads the same"
    assert store.get("ab" * 32, 1) is None and store.get("cd" * 32, 0) is None
    assert _store(tmp_path, seed=1).get("ab" * 32, 0) is None, "another identity is another key"


@pytest.mark.parametrize(
    "damage",
    ["truncated", "flipped byte", "empty", "another entry's file", "another key's file", "garbage"],
)
def test_an_entry_that_is_not_whole_is_missing_and_rewritten(tmp_path: Path, damage: str) -> None:
    store, other = _store(tmp_path), _store(tmp_path, seed=1)
    sha, sha2 = "ab" * 32, "cd" * 32
    a, b = torch.randn(16, 3, 3).to(torch.bfloat16), torch.randn(16, 3, 3).to(torch.bfloat16)
    store.put_many([(sha, 0, a), (sha2, 0, b)])
    other.put_many([(sha, 0, b)])
    path = store._path(sha, 0)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped byte":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "another entry's file":
        shutil.copy(store._path(sha2, 0), path)
    elif damage == "another key's file":
        shutil.copy(other._path(sha, 0), path)
    else:
        path.write_bytes(os.urandom(len(data)))
    assert store.get(sha, 0) is None and store.damaged == 1
    store.put_many([(sha, 0, a)])
    assert torch.equal(store.get(sha, 0), a), "the recomputed entry replaces the damaged one"


def test_a_store_that_cannot_be_written_is_only_a_miss(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's folder would be")
    store = _store(blocker)
    store.put_many([("ab" * 32, 0, torch.zeros(4, 2, 2, dtype=torch.bfloat16))])  # raises nothing
    assert store.get("ab" * 32, 0) is None and store.written == 0


def test_pruning_removes_the_least_recently_used_keys_first_never_the_current_one(tmp_path: Path) -> None:
    from headstart.models.finetune.store import ActivationStore

    entry = torch.zeros(64, 8, 8, dtype=torch.float32)  # 16 KiB a file
    stores = [_store(tmp_path, seed=i) for i in range(4)]
    for age, store in enumerate(stores):
        store.put_many([(f"{n:02x}" * 32, 0, entry) for n in range(4)])
        os.utime(store.folder / "key.json", (1e9 + age, 1e9 + age))  # store 0 used longest ago
    current = ActivationStore(stores[0].identity, root=tmp_path, max_bytes=int(3.5 * 4 * entry.nbytes))
    current.touch()  # (in use: never pruned, however old its last use was)
    current.prune()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([stores[0].key, stores[2].key, stores[3].key]), "store 1, the oldest not in use, went"
    assert current.get("00" * 32, 0) is not None


def test_headstart_cache_shows_the_stored_activations_and_cleans_them_by_backbone_and_age(tmp_path: Path) -> None:
    from headstart.features.housekeeping import ACTIVATIONS, cache_summary, clean_cache
    from headstart.models.finetune.store import ActivationStore

    root = tmp_path / "cache"
    entry = torch.zeros(8, 2, 2, dtype=torch.bfloat16)
    stores = {}
    for name in ("lite0", "lite2", "resnet"):
        stores[name] = ActivationStore({"backbone": name, "fingerprint": f"fp-{name}"}, root=root / ACTIVATIONS)
        stores[name].put_many([("ab" * 32, 0, entry), ("cd" * 32, "plain", entry)])
    os.utime(stores["resnet"].folder / "key.json", (1e9, 1e9))
    shown = {key["backbone"]: key for key in cache_summary(root)["activations"]}
    assert set(shown) == {"lite0", "lite2", "resnet"} and shown["lite0"]["files"] == 3
    assert shown["resnet"]["last_used_days"] > 365

    dry = clean_cache(backbone="lite2", dry_run=True, folder=root)
    assert len(dry["removed_files"]) == 3 and stores["lite2"].get("ab" * 32, 0) is not None
    clean_cache(backbone="lite2", folder=root)
    assert not stores["lite2"].folder.exists() and stores["lite0"].get("ab" * 32, 0) is not None
    clean_cache(older_than_s=30 * 86400, folder=root)
    assert not stores["resnet"].folder.exists() and stores["lite0"].folder.exists()
    assert [key["backbone"] for key in cache_summary(root)["activations"]] == ["lite0"]
