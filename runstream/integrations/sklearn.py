"""scikit-learn: ``autolog(project)`` makes every top-level ``fit`` of an estimator a run: its params
(``get_params()``, numbers kept as numbers), ``training_score`` (``score`` on the training data, when the fit takes
and was given y), ``fit_time_s`` and the estimator class as a tag. Fits inside a fit (a pipeline's steps, a search's
candidates, a ``LabelEncoder`` inside a classifier) belong to the outer run, and each is called with exactly the
arguments it was given. A search (``GridSearchCV``, ``RandomizedSearchCV``, any estimator with ``cv_results_``) also
logs ``best.<param>``, ``best_score`` and one child run per candidate (its params, mean/std test score, rank, fit
time). ``cross_validate`` and ``cross_val_score`` make one run for all their folds. ``autolog(project,
disable=True)`` undoes it."""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Iterator
from typing import Any

from sklearn import model_selection
from sklearn.base import BaseEstimator
from sklearn.model_selection import _validation
from sklearn.utils import all_estimators

from runstream.sdk.run import Run, init

_local = threading.local()
_patched: dict[Any, Any] = {}  # the class that defines fit -> its own fit
_functions: dict[tuple[Any, str], Any] = {}  # (module, name) -> the function it had
CANDIDATE_METRICS = ("mean_test_score", "std_test_score", "rank_test_score", "mean_fit_time", "mean_score_time")


def autolog(project: str = "sklearn", *, disable: bool = False, **init_kwargs: Any) -> None:
    """Patch (or with ``disable``, restore) ``fit`` of every scikit-learn estimator class and cross-validation."""
    if disable:
        for cls, fit in _patched.items():
            cls.fit = fit
        _patched.clear()
        for (module, name), fn in _functions.items():
            setattr(module, name, fn)
        _functions.clear()
        return
    for _, estimator in all_estimators():
        # The class that defines fit (GridSearchCV's is BaseSearchCV's), patched once.
        owner: Any = next((c for c in estimator.__mro__ if "fit" in c.__dict__), None)
        if owner is not None and owner not in _patched:
            _patched[owner] = owner.__dict__["fit"]
            owner.fit = _wrap(owner.__dict__["fit"], project, init_kwargs)
    if (_validation, "cross_validate") not in _functions:
        wrapped = _wrap_cross_validate(_validation.cross_validate, project, init_kwargs)
        for module in (_validation, model_selection):  # cross_val_score calls _validation's
            _functions[(module, "cross_validate")] = module.cross_validate
            module.cross_validate = wrapped


def _x_and_y(sig: inspect.Signature, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """The fit's X and y as it was called: y only when the fit takes one beside X (LabelEncoder.fit(y) takes y alone)."""
    try:
        bound = sig.bind(self, *args, **kwargs).arguments
    except TypeError:
        return None, None
    names = list(sig.parameters)
    x = bound.get(names[1]) if len(names) > 1 else None
    y = bound.get("y") if "y" in names[2:] else None
    return x, y


@contextlib.contextmanager
def _outer_run(project: str, name: str, estimator: Any, init_kwargs: dict[str, Any]) -> Iterator[Run]:
    """The run of an outermost fit (or cross-validation): the estimator's params and class logged, finished in the
    background (a fit never waits for the network), as failed if the block raised; nested calls are marked."""
    _local.depth = 1
    run: Run = init(project, name=name, **init_kwargs)
    try:
        params = {k: v for k, v in estimator.get_params(deep=True).items() if not isinstance(v, BaseEstimator)}
        if params:
            run.log_params(params)
        run.set_tags({"estimator": f"{type(estimator).__module__}.{type(estimator).__name__}"})
        yield run
        run.finish(timeout=0)
    except BaseException:
        run.finish("failed", timeout=0)
        raise
    finally:
        _local.depth = 0


def _wrap(fit: Any, project: str, init_kwargs: dict[str, Any]) -> Any:
    sig = inspect.signature(fit)

    @functools.wraps(fit)
    def logged_fit(self: BaseEstimator, *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "depth", 0):  # inside another estimator's fit: that one's run
            return fit(self, *args, **kwargs)
        with _outer_run(project, type(self).__name__, self, init_kwargs) as run:
            t0 = time.perf_counter()
            out = fit(self, *args, **kwargs)
            metrics = {"fit_time_s": time.perf_counter() - t0}
            x, y = _x_and_y(sig, self, args, kwargs)
            if y is not None and hasattr(self, "score"):
                try:
                    metrics["training_score"] = float(self.score(x, y))
                except Exception:  # a score that cannot be computed is left out; it never breaks the fit
                    pass
            if hasattr(self, "cv_results_"):
                metrics.update(_log_search(self, run, project, init_kwargs))
            run.log(metrics, step=0)
            return out

    return logged_fit


def _log_search(search: Any, run: Run, project: str, init_kwargs: dict[str, Any]) -> dict[str, float]:
    """A search's best candidate on its run, and one child run per candidate."""
    results = search.cv_results_
    out: dict[str, float] = {}
    if getattr(search, "best_params_", None) is not None:
        run.log_params({f"best.{k}": v for k, v in search.best_params_.items()})
    if getattr(search, "best_score_", None) is not None:
        out["best_score"] = float(search.best_score_)
    for i, candidate in enumerate(results.get("params", [])):
        child = init(project, name=f"{type(search).__name__}-candidate-{i}", parent_run_id=run.id,
                     config=dict(candidate), **init_kwargs)
        child.log({k: float(results[k][i]) for k in CANDIDATE_METRICS if k in results}, step=0)
        child.finish(timeout=0)
    out["candidates"] = float(len(results.get("params", [])))
    return out


def _wrap_cross_validate(cross_validate: Any, project: str, init_kwargs: dict[str, Any]) -> Any:
    @functools.wraps(cross_validate)
    def logged(estimator: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_local, "depth", 0):
            return cross_validate(estimator, *args, **kwargs)
        with _outer_run(project, f"cross_validate-{type(estimator).__name__}", estimator, init_kwargs) as run:
            out = cross_validate(estimator, *args, **kwargs)
            for fold in range(len(out.get("fit_time", []))):  # a step per fold
                run.log({k: float(v[fold]) for k, v in out.items() if k.endswith(("_score", "_time"))
                         or k.startswith(("test_", "train_"))}, step=fold)
            return out

    return logged
