"""The probe objective computed directly, and scikit-learn's LogisticRegression on it: the
independent references the solver tests hold strata to."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression


def objective(X, y, coef, intercept, l1, l2):
    """The probe objective, computed directly: mean CE + l1*sum|W| + l2*sum W^2."""
    Z = X @ coef.T + intercept
    Z = Z - Z.max(axis=1, keepdims=True)
    log_p = Z - np.log(np.exp(Z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(y)), y].mean() + l1 * np.abs(coef).sum() + l2 * (coef ** 2).sum()


def sklearn_fit(X, y, l1, l2, **kw):
    """scikit-learn's LogisticRegression on the same objective: C = 1/(n(l1+2 l2)), rho = l1/(l1+2 l2)."""
    n = len(y)
    C, rho = 1.0 / (n * (l1 + 2 * l2)), l1 / (l1 + 2 * l2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, l1_ratio=rho, **kw).fit(X, y)
