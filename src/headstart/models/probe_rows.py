"""The linear probe on many rows: ``C`` chosen on a stratified sample, one full-batch L-BFGS fit over all rows.

:class:`~headstart.models.probe.LinearProbe` cross-validates ``C`` over its grid (5 folds, up to 8 values): a cost
that grows a little faster than the rows (n^1.1-1.3 measured) and that scikit-learn pays in float64 on one BLAS
thread, so 300,000 cached rows would take hours and 6 GB of copies. Beyond ``max_cv_rows`` the probe therefore:

1. holds out a stratified *calibration* slice (a tenth of the rows, at most :data:`CALIBRATION_ROWS`): the
   temperature is fitted on its logits, predictions of rows the final fit never saw;
2. chooses ``C`` by the usual cross-validation on a stratified sample of ``max_cv_rows`` of the other rows (the
   same code, the same grid; the sample's fit is the final fit's warm start);
3. fits on all the other rows at that ``C`` with torch's L-BFGS in float32, over the caller's matrix as it lies
   (no scaled copy: the centring and common scale are folded into the weights inside the loss), using every core
   and a CUDA device when there is one. One pass over the rows per iteration: cost linear in the rows.

The penalty has scikit-learn's meaning, ``C * sum(loss) + |W|^2 / 2``, so the same ``C`` regularises a larger data
set relatively less, which is what a larger data set wants. Two classes are fitted as a two-row softmax, which equals
scikit-learn's one-vector binomial fit at ``C / 2`` per row (the rows are ``-w/2``, ``w/2``).

Example:
    >>> probe = LinearProbe(max_cv_rows=5000).fit(X, y)            # doctest: +SKIP
    >>> probe.n_cv_rows_, probe.n_calibration_rows_                 # doctest: +SKIP
    (5000, 5000)
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = ["CALIBRATION_ROWS", "column_moments", "fit_rows", "stratified_rows"]

#: Most rows held out to fit the temperature on (a tenth of the rows below ten times this).
CALIBRATION_ROWS = 5000

_TOL = 1e-4  # the largest gradient entry at which L-BFGS stops (scikit-learn's lbfgs tol on the same objective)
_CHUNK_BYTES = 4_000_000  # float64 bytes per chunk when computing column moments (bounded temporaries)


def stratified_rows(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of about ``n`` rows with every class in proportion (each at least once), seeded."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    share = np.maximum(1, np.floor(counts * n / len(y))).astype(int)
    chosen = [rng.choice(np.flatnonzero(y == c), min(k, m), replace=False) for c, k, m in zip(classes, share, counts)]
    return np.sort(np.concatenate(chosen))


def column_moments(X: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """The column means of ``X[rows]`` and the square root of their mean variance, accumulated in float64 over
    chunks of rows: no copy of the matrix, whatever its dtype."""
    count = len(X) if rows is None else len(rows)
    total = np.zeros(X.shape[1])
    squares = np.zeros(X.shape[1])
    chunk = max(1, _CHUNK_BYTES // (8 * X.shape[1]))
    for start in range(0, count, chunk):
        part = X[start : start + chunk] if rows is None else X[rows[start : start + chunk]]
        block = np.asarray(part, dtype=np.float64)
        total += block.sum(axis=0)
        squares += np.square(block, out=block).sum(axis=0)
    n = max(count, 1)
    mean = total / n
    variance = np.maximum(squares / n - mean**2, 0.0)
    return mean, float(np.sqrt(variance.mean())) or 1.0


def fit_rows(
    X: np.ndarray,
    y: np.ndarray,
    rows: np.ndarray,
    *,
    C: float,
    mean: np.ndarray,
    scale: float,
    n_classes: int,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 1000,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Multinomial logistic regression on ``(X[rows] - mean) / scale`` at ``C`` (scikit-learn's objective), by
    full-batch L-BFGS in float32 on torch.

    Args:
        X: features, shape ``(n, d)``; a C-contiguous float32 matrix is used in place (the rows not in ``rows``
            weigh 0), another is converted once.
        y: class indices, shape ``(n,)``.
        rows: the rows to fit on.
        init: a warm start ``(weight (n_classes, d), bias (n_classes,))`` on the scaled features.

    Returns:
        ``(weight, bias, n_iter)``: the weights on the scaled features, shape ``(n_classes, d)`` (two rows for two
        classes), the biases and the L-BFGS iterations. A run that stops at ``max_iter`` warns a
        ``ConvergenceWarning`` (the probe turns it into its own warning).
    """
    import torch
    from sklearn.exceptions import ConvergenceWarning

    device = "cuda" if torch.cuda.is_available() else "cpu"
    # The rows left out weigh 0 in the loss rather than being gathered into a copy of the matrix.
    with warnings.catch_warnings():  # a read-only matrix (a memory map) is fine: it is only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        features = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(device)
    targets = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    mask = np.zeros(len(X), dtype=np.float32)
    mask[rows] = 1.0
    n, d = len(rows), X.shape[1]
    row_weight = torch.from_numpy(mask / n).to(device)
    weight0, bias0 = init if init is not None else (np.zeros((n_classes, d)), np.zeros(n_classes))
    # One flat parameter vector (weights, then biases): L-BFGS views its gradient flat.
    start = np.concatenate([np.asarray(weight0, dtype=np.float64).ravel(), np.asarray(bias0, dtype=np.float64)])
    params = torch.tensor(start, dtype=torch.float32, device=device, requires_grad=True)
    centre = torch.from_numpy(np.asarray(mean, dtype=np.float32)).to(device)
    # Two classes as a two-row softmax: scikit-learn's binomial fit at C has the two-row fit's C halved.
    penalty = 1.0 / (2.0 * (C / 2.0 if n_classes == 2 else C) * n)
    optimizer = torch.optim.LBFGS(
        [params],
        lr=1.0,
        max_iter=max_iter,
        max_eval=max_iter * 5 // 4,
        tolerance_grad=_TOL,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        weight, bias = params[: n_classes * d].view(n_classes, d), params[n_classes * d :]
        raw = weight / scale  # logits of the raw rows: x @ (W / s).T + b - (W / s) @ mean
        logits = features @ raw.T + (bias - raw @ centre)
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        loss = (losses * row_weight).sum() + penalty * weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    n_iter = int(optimizer.state[params].get("n_iter", 0))
    if n_iter >= max_iter:
        warnings.warn(f"L-BFGS stopped at max_iter={max_iter}", ConvergenceWarning, stacklevel=2)
    out = params.detach().to("cpu", torch.float64).numpy()
    return out[: n_classes * d].reshape(n_classes, d), out[n_classes * d :], n_iter
