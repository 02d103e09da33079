"""strata's probe engine: many exact elastic-net probes trained together from a store.

``from probe_engine import ElasticNetProbe`` gives the scikit-learn estimator;
it is imported on first use so the ``strata`` command starts without scikit-learn.
"""

__all__ = ["ElasticNetProbe"]


def __getattr__(name):
    if name == "ElasticNetProbe":
        from probe_engine.estimator import ElasticNetProbe
        return ElasticNetProbe
    raise AttributeError(name)
