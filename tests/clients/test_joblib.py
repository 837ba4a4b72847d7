"""joblib and scikit-learn on polyproc's engine: ``parallel_config(backend="polyproc")``."""

from __future__ import annotations

import math
import os

import pytest

joblib = pytest.importorskip("joblib")
import polyproc.joblib  # noqa: E402,F401 - registers the backend

pytestmark = pytest.mark.timeout(180)

METHODS = ["fork", "spawn", "forkserver"]


def _pid(_: int) -> int:
    return os.getpid()


def _fail_on_3(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


@pytest.mark.parametrize("method", METHODS)
def test_parallel_gives_joblibs_results(method: str) -> None:
    with joblib.parallel_config(backend="polyproc", n_jobs=2, start_method=method):
        got = joblib.Parallel()(joblib.delayed(math.sqrt)(i) for i in range(200))
        pids = set(joblib.Parallel()(joblib.delayed(_pid)(i) for i in range(20)))
        lam = joblib.Parallel()(joblib.delayed(lambda x: x * 3)(i) for i in range(5))
    assert got == [math.sqrt(i) for i in range(200)]
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert lam == [0, 3, 6, 9, 12]


def test_errors_reach_the_caller_and_the_backend_recovers() -> None:
    with joblib.parallel_config(backend="polyproc", n_jobs=2):
        with pytest.raises(ValueError, match="three"):
            joblib.Parallel()(joblib.delayed(_fail_on_3)(i) for i in range(10))
        assert joblib.Parallel()(joblib.delayed(_fail_on_3)(i) for i in range(3)) == [0, 1, 2]


def test_generator_output_and_unknown_options() -> None:
    with joblib.parallel_config(backend="polyproc", n_jobs=2):
        gen = joblib.Parallel(return_as="generator")(joblib.delayed(abs)(-i) for i in range(6))
        assert list(gen) == [0, 1, 2, 3, 4, 5]
    with joblib.parallel_config(backend="polyproc", n_jobs=2, colour="blue"):
        with pytest.raises(TypeError, match="unknown option.*colour"):
            joblib.Parallel()(joblib.delayed(abs)(i) for i in range(3))


def test_scikit_learn_cross_val_score_matches_sequential() -> None:
    sklearn = pytest.importorskip("sklearn")
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    assert sklearn.__version__
    X, y = make_classification(n_samples=400, random_state=0)  # noqa: N806
    model = LogisticRegression(max_iter=300)
    with joblib.parallel_config(backend="polyproc", n_jobs=2):
        ours = cross_val_score(model, X, y, cv=4)
    with joblib.parallel_config(backend="sequential"):
        theirs = cross_val_score(model, X, y, cv=4)
    assert ours.tolist() == theirs.tolist()
