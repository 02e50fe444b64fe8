"""``headstart audit``: what is wrong with a data set before you train on it.

Duplicates and leaks across DATA and TEST, likely wrong labels (confident learning on out-of-fold probabilities),
outliers, balance and difficulty per class, and how many more photos would help; as an :class:`AuditReport`
(JSON + a self-contained HTML page), with ways to act on it that never delete anything.

Example::

    from headstart.audit import audit, apply_relabels, write_relabel_csv

    report = audit("photos/", test="test_photos/", progress=True)
    report.save("audit/")                       # audit.html, audit.json, learning_curve.png
    write_relabel_csv(report, "relabel.csv")    # review it, then:
    fixed = apply_relabels(load_dataset("photos/"), "relabel.csv")

Importing this package is cheap: its modules load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "audit": "headstart.audit.core",
    "AuditReport": "headstart.audit.core",
    "SCHEMA": "headstart.audit.core",
    "apply_relabels": "headstart.audit.actions",
    "quarantine_findings": "headstart.audit.actions",
    "write_relabel_csv": "headstart.audit.actions",
    "RelabelWarning": "headstart.audit.actions",
    "inject_faults": "headstart.audit.faults",
    "InjectedFaults": "headstart.audit.faults",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public API on first use."""
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'headstart.audit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
