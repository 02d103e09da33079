"""The multinomial logistic loss of many probes, one pass over the data.

A probe's datafit is the mean cross-entropy of ``softmax(x W + b)`` over the
training rows.  Probes that read the same features share every data pass: their
weights sit side by side, ``W`` of shape ``(d, P, C)`` seen as ``(d, P*C)``, so per
block of rows one GEMM gives all logits and one more gives all gradients (the
batching argument of the strata guide; the loss itself is as in Durrani et al.).
"""

from __future__ import annotations

import numpy as np

from probe_engine.backend import module_of, to_numpy
from probe_engine.blocks import ColumnBlocks
from probe_engine.row_tasks import map_row_slices


class MultinomialLogistic:
    """Mean cross-entropy of a softmax over ``C`` classes, for ``P`` probes at once."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self._narrowed = None  # (source blocks, columns as host bytes, ColumnBlocks): the last narrowing

    def value_and_gradient(self, blocks, W, b, columns=None):
        """One pass over ``blocks`` (pairs ``(X, y)``, class indices ``y``).

        Returns ``(loss (P,), grad_W (d, P, C), grad_b (P, C))``, every term
        divided by the number of rows.  ``columns`` (host int array, or ``None`` for all):
        the only features any probe may use (the penalty's :meth:`columns`); the pass then
        reads those columns alone and ``grad_W`` is 0 on the others.  So probes restricted
        to few neurons stop paying for the rest once the wider probes of their batch
        have finished.
        """
        xp = module_of(W)
        if columns is not None and len(columns) < W.shape[0]:
            narrow = self._narrow(blocks, columns, xp)
            loss, part_W, grad_b = self.value_and_gradient(narrow, W[narrow.columns], b)
            grad_W = xp.zeros_like(W)
            grad_W[narrow.columns] = part_W
            return loss, grad_W, grad_b
        d, P, C = W.shape
        W2 = W.reshape(d, P * C)
        loss = xp.zeros(P, dtype=np.float64)
        grad_W = xp.zeros((d, P * C), dtype=W.dtype)
        grad_b = xp.zeros((P, C), dtype=np.float64)

        def rows_terms(X, y):
            """One row slice's summed loss, X^T Z and Z column sums (a task of row_tasks)."""
            part_loss = xp.zeros(P, dtype=np.float64)
            Z = self._log_softmax_residual(X @ W2, b, y, part_loss)
            return part_loss, X.T @ Z.reshape(len(y), P * C), Z.sum(axis=0, dtype=np.float64)

        for X, y in blocks:
            for part_loss, part_W, part_b in map_row_slices(rows_terms, X, y):  # in row order: same bits always
                loss += part_loss
                grad_W += part_W
                grad_b += part_b
        n = blocks.n_rows
        return loss / n, grad_W.reshape(d, P, C) / n, (grad_b / n).astype(W.dtype)

    def _narrow(self, blocks, columns, xp):
        """``blocks`` restricted to ``columns``, kept while the columns stay the same (held
        blocks are gathered once per column set, not once per pass)."""
        key = np.asarray(columns).tobytes()
        if self._narrowed is None or self._narrowed[0] is not blocks or self._narrowed[1] != key:
            self._narrowed = None  # free the previous copy first: never two narrowed copies at once
            self._narrowed = (blocks, key, ColumnBlocks(blocks, columns, xp))
        return self._narrowed[2]

    def _log_softmax_residual(self, logits, b, y, loss_acc):
        """Turn logits (rows, P*C) into ``softmax - onehot(y)`` in place, adding each
        probe's summed cross-entropy to ``loss_acc``."""
        xp = module_of(logits)
        n, P, C = len(y), *b.shape
        Z = logits.reshape(n, P, C)
        Z += b
        Z -= Z.max(axis=2, keepdims=True)
        rows = xp.arange(n)
        z_true = Z[rows, :, y]  # (n, P), shifted logit of the true class
        xp.exp(Z, out=Z)
        total = Z.sum(axis=2)
        loss_acc += (xp.log(total) - z_true).sum(axis=0, dtype=np.float64)
        Z /= total[:, :, None]
        Z[rows, :, y] -= 1.0
        return Z

    def gram(self, blocks):
        """``([X 1]^T [X 1] / n)`` in float64 on the host, one pass: the curvature the
        Lipschitz bound and the solver's preconditioner are built from."""
        gram, col_sums = None, None
        for X, _ in blocks:
            g, s = (X.T @ X).astype(np.float64), X.sum(axis=0, dtype=np.float64)
            gram, col_sums = (g, s) if gram is None else (gram + g, col_sums + s)
        n = blocks.n_rows
        gram, col_sums = to_numpy(gram), to_numpy(col_sums)
        d = gram.shape[0]
        full = np.empty((d + 1, d + 1), dtype=np.float64)
        full[:d, :d], full[:d, d], full[d, :d], full[d, d] = gram, col_sums, col_sums, n
        return full / n

    @staticmethod
    def lipschitz_of(gram, xp=np) -> float:
        """A bound on the gradient's Lipschitz constant, shared by all probes, from
        :meth:`gram`: the softmax cross-entropy Hessian in the logits is at most I/2
        (Böhning 1992), so the bound is ``lambda_max([X 1]^T [X 1] / n) / 2``, the ones
        column standing for the intercept.  ``xp``: where to solve (the GPU's eigensolver
        for thousands of features)."""
        return 0.5 * float(xp.linalg.eigvalsh(xp.asarray(gram))[-1])

    def initial_intercept(self, class_counts, xp, dtype):
        """The exact optimum with all weights zero: log class frequencies."""
        freq = np.asarray(class_counts, dtype=np.float64) / np.sum(class_counts)
        return xp.asarray(np.log(freq), dtype=dtype)
