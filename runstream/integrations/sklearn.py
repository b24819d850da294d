"""scikit-learn: ``autolog(project)`` makes every top-level ``fit`` of an estimator a run: its params
(``get_params()``), ``training_score`` (``score`` on the training data, when y is given), ``fit_time_s`` and the
estimator class as a tag. Fits inside a fit (a pipeline's steps, a search's candidates) belong to the outer run.
``autolog(project, disable=True)`` undoes it."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any

from sklearn.base import BaseEstimator
from sklearn.utils import all_estimators

from runstream.sdk.run import Run, init

_local = threading.local()
_patched: dict[Any, Any] = {}  # the class that defines fit -> its own fit


def autolog(project: str = "sklearn", *, disable: bool = False, **init_kwargs: Any) -> None:
    """Patch (or with ``disable``, restore) ``fit`` of every scikit-learn estimator class."""
    if disable:
        for cls, fit in _patched.items():
            cls.fit = fit
        _patched.clear()
        return
    for _, estimator in all_estimators():
        # The class that defines fit (GridSearchCV's is BaseSearchCV's), patched once.
        owner: Any = next((c for c in estimator.__mro__ if "fit" in c.__dict__), None)
        if owner is not None and owner not in _patched:
            _patched[owner] = owner.__dict__["fit"]
            owner.fit = _wrap(owner.__dict__["fit"], project, init_kwargs)


def _wrap(fit: Any, project: str, init_kwargs: dict[str, Any]) -> Any:
    @functools.wraps(fit)
    def logged_fit(self: BaseEstimator, X: Any, y: Any = None, *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "depth", 0):  # inside another estimator's fit: that one's run
            return fit(self, X, y, *args, **kwargs)
        _local.depth = 1
        run: Run = init(project, name=type(self).__name__, **init_kwargs)
        try:
            params = {k: v for k, v in self.get_params(deep=True).items() if not isinstance(v, BaseEstimator)}
            run.log_params(params)
            run.set_tags({"estimator": f"{type(self).__module__}.{type(self).__name__}"})
            t0 = time.perf_counter()
            out = fit(self, X, y, *args, **kwargs)
            metrics = {"fit_time_s": time.perf_counter() - t0}
            if y is not None and hasattr(self, "score"):
                try:
                    metrics["training_score"] = float(self.score(X, y))
                except (TypeError, ValueError, AttributeError):
                    pass
            run.log(metrics, step=0)
            run.finish(timeout=0)  # sent in the background: a fit never waits for the network
            return out
        except BaseException:
            run.finish("failed", timeout=0)
            raise
        finally:
            _local.depth = 0

    return logged_fit
