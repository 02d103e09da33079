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
from probe_engine.column_groups import as_slice, column_order, partition
from probe_engine.row_tasks import map_row_slices


#: Logits up to this size are exponentiated as they are: exp stays finite and normal in
#: float32 (|x| < 87, with ln(classes) to spare for the sum); larger ones are shifted by
#: their row's max first, the usual log-sum-exp.
UNSHIFTED_LOGIT_LIMIT = 64.0

#: Features past which the host finds the Lipschitz bound's eigenvalue alone (Lanczos).
LANCZOS_FROM = 512

#: A grouped pass keeps its narrowed rows while they are at most this much wider than needed.
REUSE_WIDTH = 1.25


class MultinomialLogistic:
    """Mean cross-entropy of a softmax over ``C`` classes, for ``P`` probes at once."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes
        self._narrowed = None  # (source blocks, columns (host), ColumnBlocks): the last narrowing
        self._groups = (None, None)  # (supports as host bytes, probe groups): the last partition

    def value_and_gradient(self, blocks, W, b, supports=None):
        """One pass over ``blocks`` (pairs ``(X, y)``, class indices ``y``).

        Returns ``(loss (P,), grad_W (d, P, C), grad_b (P, C))``, every term
        divided by the number of rows.  ``supports`` (host bool ``(d, P)``, or ``None``:
        every probe reads every feature) are the features each probe may use (the
        penalty's :meth:`supports`).  The pass then reads the union of those columns alone
        (so probes restricted to few neurons stop paying for the rest once the wider probes
        of their batch have finished), and probes whose supports differ much in size are
        cut into groups, one GEMM per group over its own columns
        (:mod:`probe_engine.column_groups`).  ``grad_W`` is exact on each probe's group's
        columns and 0 elsewhere, which the penalty's support mask never reads.
        """
        xp = module_of(W)
        if supports is None:
            return self._pass(blocks, W, b, [(None, None)])
        supports = np.asarray(supports, dtype=bool)
        groups = self._partition(supports)
        used = supports.any(axis=1)
        if len(groups) == 1 or used.all():
            if used.all():
                source, columns = blocks, None
            else:
                source = self._narrow(blocks, np.flatnonzero(used), xp, exact=True)
                columns = to_numpy(source.columns)
            specs = [(None, None)] if len(groups) == 1 else self._specs(supports, groups, columns, xp)
        else:
            source = self._narrow(blocks, column_order(supports, groups), xp, exact=False)
            columns = to_numpy(source.columns)
            specs = self._specs(supports, groups, columns, xp)
        if columns is None:
            return self._pass(source, W, b, specs)
        loss, part_W, grad_b = self._pass(source, W[source.columns], b, specs)
        grad_W = xp.zeros_like(W)
        grad_W[source.columns] = part_W
        return loss, grad_W, grad_b

    def _pass(self, blocks, W, b, groups):
        """The pass itself: ``groups`` of ``(probes, columns)`` (device index arrays, a slice
        of columns, or ``None`` for all), one pair of GEMMs per group on every row slice."""
        xp = module_of(W)
        d, P, C = W.shape
        weights = []  # per group: its (columns, probes * classes) weights and (probes, classes) intercepts
        for probes, cols in groups:
            Wg = W if probes is None else W[:, probes]
            Wg = Wg if cols is None else Wg[cols]
            bg = b if probes is None else b[probes]
            weights.append((Wg.reshape(Wg.shape[0], -1), bg))
        sums = [[xp.zeros(bg.shape[0], dtype=np.float64), xp.zeros(W2.shape, dtype=W.dtype),
                 xp.zeros(bg.shape, dtype=np.float64)] for W2, bg in weights]

        def rows_terms(X, y):
            """One row slice's summed loss, X^T Z and Z column sums per group (a task of row_tasks)."""
            terms = []
            for (_, cols), (W2, bg) in zip(groups, weights):
                Xg = X if cols is None else X[:, cols]
                p = bg.shape[0]
                part_loss = xp.zeros(p, dtype=np.float64)
                Z = self._log_softmax_residual(Xg @ W2, bg, y, part_loss).reshape(len(y), p * C)
                # Column sums as a GEMV: a BLAS kernel, 3x faster than numpy's float64 reduction
                # here and as exact as X.T @ Z beside it (float32 over one slice's rows).
                terms.append((part_loss, Xg.T @ Z, (xp.ones(len(y), dtype=Z.dtype) @ Z).reshape(p, C).astype(np.float64)))
            return terms

        for X, y in blocks.row_sources():  # X may be unstandardized rows that each task finishes
            for terms in map_row_slices(rows_terms, X, y):  # in row order: same bits always
                for acc, part in zip(sums, terms):
                    for a, t in zip(acc, part):
                        a += t
        n = blocks.n_rows
        if len(groups) == 1 and groups[0][0] is None and groups[0][1] is None:  # every probe, every column
            loss, grad_W, grad_b = sums[0]
            return loss / n, grad_W.reshape(d, P, C) / n, (grad_b / n).astype(W.dtype)
        loss = xp.zeros(P, dtype=np.float64)
        grad_W = xp.zeros((d, P, C), dtype=W.dtype)
        grad_b = xp.zeros((P, C), dtype=np.float64)
        for (probes, cols), (g_loss, g_W, g_b) in zip(groups, sums):
            loss[probes] = g_loss
            g_W = g_W.reshape(g_W.shape[0], -1, C)
            if isinstance(cols, slice):
                grad_W[cols, probes] = g_W
            else:
                grad_W[xp.ix_(cols, probes)] = g_W
            grad_b[probes] = g_b
        return loss / n, grad_W / n, (grad_b / n).astype(W.dtype)

    def _partition(self, supports):
        """:func:`column_groups.partition` of ``supports``, kept while they stay the same."""
        key = (supports.shape, np.packbits(supports).tobytes())
        if self._groups[0] != key:
            self._groups = (key, partition(supports, self.n_classes))
        return self._groups[1]

    @staticmethod
    def _specs(supports, groups, columns, xp):
        """Each group's probes and its columns' positions in the narrowed rows (``columns``,
        or every column for ``None``): a slice when they are one run (no gather)."""
        position = None
        if columns is not None:
            position = np.full(supports.shape[0], -1, dtype=np.int64)
            position[columns] = np.arange(len(columns))
        specs = []
        for g in groups:
            cols = np.flatnonzero(supports[:, g].any(axis=1))
            cols = cols if position is None else np.sort(position[cols])
            run = as_slice(cols)
            specs.append((xp.asarray(g), run if run is not None else xp.asarray(cols)))
        return specs

    def _narrow(self, blocks, columns, xp, exact: bool):
        """``blocks`` restricted to ``columns`` (host ints, in that order), kept while they
        serve: the same columns (``exact``), or for grouped passes any kept copy that holds
        them all and is at most ``REUSE_WIDTH`` times as wide (probes leaving a grouped
        batch would otherwise regather the rows on every departure).  Held blocks are
        gathered once per column set, not once per pass."""
        kept = self._narrowed
        if kept is not None and kept[0] is blocks:
            if exact and np.array_equal(kept[1], columns):
                return kept[2]
            if not exact and len(kept[1]) <= REUSE_WIDTH * len(columns) and np.isin(columns, kept[1]).all():
                return kept[2]
        self._narrowed = None  # free the previous copy first: never two narrowed copies at once
        self._narrowed = (blocks, np.asarray(columns), ColumnBlocks(blocks, columns, xp))
        return self._narrowed[2]

    def _log_softmax_residual(self, logits, b, y, loss_acc):
        """Turn logits (rows, P*C) into ``softmax - onehot(y)`` in place, adding each
        probe's summed cross-entropy to ``loss_acc``."""
        xp = module_of(logits)
        n, P, C = len(y), *b.shape
        Z = logits.reshape(n, P, C)
        Z += b
        # Subtracting each row's largest logit only guards exp against overflow, and the
        # max over ~50 classes is a short-axis reduction, numpy's slowest kind (~8% of a
        # pass); so it is done only when some |logit| exceeds UNSHIFTED_LOGIT_LIMIT.
        if max(float(Z.max()), -float(Z.min())) > UNSHIFTED_LOGIT_LIMIT:
            Z -= Z.max(axis=2, keepdims=True)
        rows = xp.arange(n)
        z_true = Z[rows, :, y]  # (n, P), logit of the true class (shifted or not, as Z)
        xp.exp(Z, out=Z)
        # The sum over classes as a GEMV, for the same reason as the max above (2x faster).
        total = (Z.reshape(n * P, C) @ xp.ones(C, dtype=Z.dtype)).reshape(n, P)
        loss_acc += (xp.log(total) - z_true).sum(axis=0, dtype=np.float64)
        Z *= (1 / total)[:, :, None]
        Z[rows, :, y] -= 1.0
        return Z

    def gram(self, blocks):
        """``[X 1 Y]^T [X 1 Y] / n`` in float64 on the host, one pass (``Y`` the rows' one-hot
        classes).  Its ``[X 1]`` block is the curvature the Lipschitz bound and the solver's
        preconditioner are built from; its ``Y`` columns are the label moments the duality
        gap needs (``X^T Y / n`` and the class frequencies, see :meth:`dual_point`)."""
        C = self.n_classes
        xx, x1, xy, counts = None, None, None, np.zeros(C, dtype=np.float64)
        for X, y in blocks:
            xp = module_of(X)
            onehot = xp.zeros((len(y), C), dtype=X.dtype)
            onehot[xp.arange(len(y)), y] = 1
            parts = ((X.T @ X).astype(np.float64), X.sum(axis=0, dtype=np.float64), (X.T @ onehot).astype(np.float64))
            xx, x1, xy = parts if xx is None else (xx + parts[0], x1 + parts[1], xy + parts[2])
            counts += np.bincount(to_numpy(y), minlength=C)
        n = blocks.n_rows
        d = blocks.n_features
        xx, x1, xy = to_numpy(xx), to_numpy(x1), to_numpy(xy)
        full = np.zeros((d + 1 + C, d + 1 + C), dtype=np.float64)
        full[:d, :d], full[d, d], full[d + 1:, d + 1:] = xx, n, np.diag(counts)
        full[:d, d], full[d, :d] = x1, x1
        full[:d, d + 1:], full[d + 1:, :d] = xy, xy.T
        full[d, d + 1:], full[d + 1:, d] = counts, counts
        return full / n

    @staticmethod
    def intercept_step(step_b):
        """The part of an intercept step ``(P, C)`` the loss sees: softmax is unchanged when
        all of a probe's class intercepts move by the same amount, so each row's mean is
        removed.  The loss has no curvature along that shared shift and nothing pulls a
        step's component there back: float32 rounding put one into the quasi-Newton
        directions, the curvature pairs fed it back, it grew about 2x every 10 passes, and on
        a weakly penalized 3-class problem the intercepts reached 4e4 together, where float32
        logits keep ~4e-3 of precision and the probe stalled 1.6% above its optimum.  The
        intercept is unpenalized, so no penalty ever sees the shift either."""
        return step_b - step_b.mean(axis=1, keepdims=True)

    def lipschitz_of(self, gram, xp=np) -> float:
        """A bound on the gradient's Lipschitz constant, shared by all probes, from
        :meth:`gram`: the softmax cross-entropy Hessian in the logits is at most I/2
        (Böhning 1992), so the bound is ``lambda_max([X 1]^T [X 1] / n) / 2``, the ones
        column standing for the intercept.  ``xp``: where to solve (the GPU's eigensolver
        for thousands of features).

        On the host, past ``LANCZOS_FROM`` features only the largest eigenvalue is computed,
        by Lanczos iteration (ARPACK through SciPy, from a fixed start vector: the same bits
        every run): the full spectrum of 2,689 neuron-level features took 4.0 s, Lanczos
        0.2 s, agreeing to 1e-14 relative."""
        k = gram.shape[0] - self.n_classes
        block = gram[:k, :k]
        if xp is np and k > LANCZOS_FROM:
            from scipy.sparse.linalg import eigsh

            top = float(eigsh(block, k=1, which="LA", tol=1e-12, v0=np.ones(k))[0][0])
            return 0.5 * top * (1 + 1e-9)  # a bound: Lanczos approaches lambda_max from below
        return 0.5 * float(xp.linalg.eigvalsh(xp.asarray(block))[-1])

    def label_moments(self, gram, xp):
        """``(X^T Y / n (d, C) float32, class frequencies (C,) float64)`` on ``xp``, from :meth:`gram`."""
        d = gram.shape[0] - 1 - self.n_classes
        return xp.asarray(gram[:d, d + 1:], dtype=np.float32), xp.asarray(gram[d, d + 1:])

    def dual_point(self, moments, W, b, loss, grad_W, grad_b):
        """A point of the dual problem built from the primal point ``(W, b)`` and its pass, with
        no further pass: returns ``(bound (P,), V (d, P, C))`` such that the dual objective
        there is at least ``-bound - penalty_conjugate(V)`` (and at ``s`` times the point,
        which stays a point of the loss conjugate's domain, at least ``-s bound -
        penalty_conjugate(s V)``).

        Fenchel duality for ``mean_i l(x_i W + b; y_i) + penalty(W)`` with ``b`` free:
        ``D(T) = -sum_i l_i*(t_i) - penalty*(-X^T T)`` over rows ``t_i`` with
        ``sum_i t_i = 0`` (the free intercept), where ``l*`` is the negative entropy of
        ``n t_i + e_{y_i}`` on the simplex.  The dual point is ``T = (Q - Y) / n`` with ``Q``
        the softmax probabilities ``P`` corrected to meet ``sum_i t_i = 0``: a class whose
        mean probability ``m_k`` exceeds its frequency (``grad_b_k > 0``) gives up the share
        ``grad_b_k / m_k`` of its probability in every row, and the classes below their
        frequency receive that mass in proportion to their shortfall.  ``Q`` is linear in
        ``P``, so ``V = X^T T`` comes from ``X^T P / n = grad_W + X^T Y / n``.  The entropy
        of ``Q`` is bounded without the rows: the mean negative entropy of ``P`` is
        ``<grad_W, W> + <grad_b, b> - loss`` (Fenchel-Young's equality); a shrunk class adds
        at most ``grad_b_k log(1 / m_k) + f_k log(f_k / m_k)`` (Jensen), the receiving
        classes at most the mass moved.  At the optimum ``grad_b = 0`` and this is the
        exact dual optimum (zero gap).  ``moments``: :meth:`label_moments`.
        """
        xp = module_of(W)
        M, freq = moments
        gb = grad_b.astype(np.float64)
        m = xp.maximum(freq[None, :] + gb, np.finfo(np.float64).tiny)  # mean probability of each class
        over, short = xp.maximum(gb, 0.0), xp.maximum(-gb, 0.0)
        moved = over.sum(axis=1)  # (P,) probability mass moved per row, on average
        share = (over / m).astype(W.dtype)  # (P, C) what each shrunk class gives up
        to = (short / xp.maximum(short.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)).astype(W.dtype)
        H = grad_W + M[:, None, :]  # X^T P / n
        V = grad_W - H * share + (H * share).sum(axis=2, keepdims=True) * to
        neg_entropy = ((grad_W * W).sum(axis=(0, 2), dtype=np.float64) + (gb * b).sum(axis=1) - loss)
        shrunk = xp.where(over > 0, over * xp.log(1.0 / m) + freq * xp.log(freq / m), 0.0).sum(axis=1)
        return neg_entropy + shrunk + moved, V

    def initial_intercept(self, class_counts, xp, dtype):
        """The exact optimum with all weights zero: log class frequencies."""
        freq = np.asarray(class_counts, dtype=np.float64) / np.sum(class_counts)
        return xp.asarray(np.log(freq), dtype=dtype)
