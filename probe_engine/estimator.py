"""A scikit-learn estimator for one elastic-net probe.

``ElasticNetProbe`` solves the same problem as ``strata probe`` (see
probe_engine/train.py) and follows the scikit-learn contract (the constructor
only stores parameters; learned attributes end in ``_``), so one probe drops into
a ``Pipeline`` or ``GridSearchCV``.  It is the same problem scikit-learn's
``LogisticRegression(l1_ratio=rho, C=C, solver='saga')`` solves (multinomial,
three or more classes) with ``l1 = rho / (C n)`` and ``l2 = (1 - rho) / (2 C n)``;
for two classes (one binary weight vector there, two softmax columns here) with
``l2 = (1 - rho) / (C n)``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from probe_engine.backend import array_module
from probe_engine.blocks import InMemoryBlocks
from probe_engine.penalty import LARGEST_PENALTY
from probe_engine.train import DEFAULT_MAX_ITER, DEFAULT_TOL, train_probes
from store.errors import StrataError

BLOCK_ROWS = 8192


class ElasticNetProbe(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression with an elastic-net penalty, solved exactly.

    Parameters
    ----------
    l1, l2 : penalty strengths in ``mean CE + l1*sum|W| + l2*sum W**2``.
    standardize : standardize features with the training mean and (population)
        standard deviation before fitting, as strata does; ``coef_`` and
        ``intercept_`` are always for the features as given.
    tol : stop once the distance from 0 to the objective's subdifferential is at
        most ``tol`` in every coordinate.
    gap_tol : also stop once the duality gap certifies the objective within
        ``gap_tol`` (relative) of the optimum; ``None`` (default): ``tol`` alone.
    max_iter : data passes at most.
    device : ``cpu`` (NumPy) or ``cuda`` (CuPy).

    Attributes
    ----------
    coef_ (n_classes, n_features), coef_standardized_ (the same weights on the standardized
    features, where neurons compare: ``neurons.rank("lca", probe=...)`` ranks by its
    transpose), intercept_ (n_classes,), classes_ (for two classes,
    as scikit-learn's binary classifiers: coef_ (1, n_features) and intercept_ (1,), class
    1's weights minus class 0's), mean_ and scale_ (the standardization, float64),
    n_iter_, converged_, objective_ (on the standardized problem), optimality_,
    duality_gap_ (objective_ minus the optimum is at most this, up to float32 rounding of
    both: about 1e-7 of objective_, visible on problems of a few rows), n_nonzero_ (the non-zeros
    of coef_: for two classes, of its one row, not of the two softmax columns solved).
    """

    def __init__(self, l1=1e-4, l2=0.0, *, standardize=True, tol=DEFAULT_TOL, gap_tol=None,
                 max_iter=DEFAULT_MAX_ITER, device="cpu"):
        self.l1, self.l2 = l1, l2
        self.standardize = standardize
        self.tol, self.gap_tol, self.max_iter, self.device = tol, gap_tol, max_iter, device

    def _check_params(self):
        def number(value):  # bool is an int to Python, not a penalty to a user
            return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))

        for name in ("l1", "l2"):
            value = getattr(self, name)
            if not number(value) or not 0 <= value <= LARGEST_PENALTY:
                raise ValueError(f"{name} must be a number >= 0 and at most {LARGEST_PENALTY:g} (larger ones "
                                 f"overflow the float32 solver), got {value!r}")
        if not number(self.tol) or not 0 < self.tol < np.inf:
            raise ValueError(f"tol must be a finite number > 0, got {self.tol!r}")
        if self.gap_tol is not None and (not number(self.gap_tol) or not 0 < self.gap_tol < np.inf):
            raise ValueError(f"gap_tol must be a finite number > 0 or None, got {self.gap_tol!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or isinstance(self.max_iter, bool) or self.max_iter < 1:
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}")
        if not isinstance(self.standardize, (bool, np.bool_)):
            raise ValueError(f"standardize must be True or False, got {self.standardize!r}")

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self._check_params()
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            n = len(self.classes_)
            raise ValueError(f"need at least two classes, got {n} class{'' if n == 1 else 'es'}")
        # Standardized here in float64, not by blocks.standardize (float32 arithmetic): features
        # far from 0 (an offset of 1e5 and more) would lose their digits before the subtraction.
        if self.standardize:
            # scikit-learn's scaler: float64 statistics, and scale 1 for a feature constant up to
            # the variance's rounding (a std of ~1e-12 would blow its raw coefficient up to ~1e11)
            scaler = StandardScaler().fit(X)
            self.mean_, self.scale_ = scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64)
        else:
            self.mean_, self.scale_ = np.zeros(X.shape[1]), np.ones(X.shape[1])
        try:
            xp = array_module(self.device)
        except StrataError as e:  # worded for the command line's --device ('--device: ...', '--device cuda: ...')
            raise ValueError(f"device: {str(e).removeprefix('--device').removeprefix(':').lstrip()}") from None
        with np.errstate(over="ignore"):  # checked below
            rows = [((X[i:i + BLOCK_ROWS] - self.mean_) / self.scale_).astype(np.float32)
                    for i in range(0, len(X), BLOCK_ROWS)]
        # Finite in float64 is not finite in float32 (|x| > 3.4e38 after standardizing, or a
        # variance that overflowed the scaler), and the float32 Gram X^T X overflows from
        # |x| ~ 1e19: the solver would fail deep inside (LinAlgError, NaN).  The column sums
        # of squares, in float32 as the Gram's diagonal, find both.
        with np.errstate(over="ignore", invalid="ignore"):
            squares = sum(np.square(r).sum(axis=0) for r in rows)
        if not np.isfinite(squares).all():
            raise ValueError("X: values too large for the float32 solver"
                             + (" after standardizing" if self.standardize else " (standardize=False)")
                             + ": a feature's sum of squares overflows float32")
        blocks = InMemoryBlocks(((xp.asarray(r), xp.asarray(y_idx[i * BLOCK_ROWS:(i + 1) * BLOCK_ROWS]))
                                 for i, r in enumerate(rows)), X.shape[1])
        sol = train_probes(blocks, len(self.classes_), [self.l1], [self.l2], xp=xp,
                           tol=self.tol, gap_tol=self.gap_tol, max_iter=self.max_iter)
        W, b = sol.W[:, 0, :].astype(np.float64), sol.b[0].astype(np.float64)  # (d, C), (C,) standardized
        if len(self.classes_) == 2:  # scikit-learn's binary contract: one score, class 1 against class 0
            W, b = W[:, 1:] - W[:, :1], b[1:] - b[:1]
        self.coef_standardized_ = W.T.copy()
        self.coef_ = (W / self.scale_[:, None]).T
        self.intercept_ = b - (self.mean_ / self.scale_) @ W
        self.n_iter_ = int(sol.iterations[0])
        self.converged_ = bool(sol.converged[0])
        self.objective_ = float(sol.objective[0])
        self.optimality_ = float(sol.optimality[0])
        self.duality_gap_ = float(sol.gap[0])
        self.n_nonzero_ = int(np.count_nonzero(self.coef_standardized_))  # what coef_ shows
        if not self.converged_:  # scikit-learn's convention; the attributes say how far it got
            floor = "; a tol below ~1e-7 is under float32's resolution of the gradient" if self.tol < 1e-7 else ""
            warnings.warn(f"ElasticNetProbe did not reach tol={self.tol:g} in max_iter={self.max_iter} passes "
                          f"(optimality {self.optimality_:.3g}, duality gap {self.duality_gap_:.3g}){floor}",
                          ConvergenceWarning)
        return self

    def decision_function(self, X):
        """Per class logits ``(n, n_classes)``; for two classes the logit of class 1 minus
        that of class 0, ``(n,)`` (scikit-learn's binary contract)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Z = X @ self.coef_.T + self.intercept_
        return Z[:, 0] if len(self.classes_) == 2 else Z

    def predict_proba(self, X):
        Z = self.decision_function(X)
        if Z.ndim == 1:  # softmax of (0, z) is (1 - sigmoid(z), sigmoid(z))
            Z = np.stack([np.zeros_like(Z), Z], axis=1)
        Z = np.exp(Z - Z.max(axis=1, keepdims=True))
        return Z / Z.sum(axis=1, keepdims=True)

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]
