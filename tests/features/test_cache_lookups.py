"""The cache's per-batch look-ups cost per batch, not per stored row: every query a batch runs on the tables keyed by
(fingerprint, view, sha256) searches by the whole key (SQLite's query plan says so)."""

from __future__ import annotations

import numpy as np

from headstart.features.cache import FeatureCache


def test_every_lookup_of_a_batch_binds_the_whole_primary_key(tmp_path):
    cache = FeatureCache(tmp_path / "features.sqlite")
    stored = [f"{i:064x}" for i in range(200)]
    cache.put_many("fp", [(sha, np.zeros(4)) for sha in stored])
    cache.put_many("fp", [(sha, np.ones(4)) for sha in stored[:100]], view="mirror")
    batch = [(f"{i:064x}", view) for i in range(150, 250) for view in ("orig", "mirror")]
    owner = cache.new_owner()

    db = cache._connection()
    statements: list[str] = []
    db.set_trace_callback(statements.append)
    try:
        claimed = cache.claim("fp", batch, owner=owner, max_pixels=None, decoder="pillow")
        cache.busy("fp", batch, owner=owner)
        cache.get_many("fp", [sha for sha, _ in batch], view="mirror")
        cache.has_views("fp", [sha for sha, _ in batch])
    finally:
        db.set_trace_callback(None)

    assert len(claimed.stored) == 50 and len(claimed.mine) == 150
    lookups = [s for s in statements if s.lstrip().upper().startswith("SELECT") and ("vectors" in s or "claims" in s)]
    assert len(lookups) >= 4
    for sql in lookups:
        plan = " / ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + sql).fetchall())
        assert "SCAN" not in plan and "sha256=?" in plan, f"{sql[:90]}... reads stored rows one by one: {plan}"
