"""descent.numpy: the textbook algorithms agree with the descent (torch) optimizers of the
same name to float64 precision, iteration counts, convergence, schedules and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.preprocessing import StandardScaler

import descent
import descent.numpy as dn
from descent.numpy import schedules

TOL = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def data():
    Xr, yr = load_diabetes(return_X_y=True)
    Xr = StandardScaler().fit_transform(Xr)
    Xc, yc = load_breast_cancer(return_X_y=True)
    Xc = StandardScaler().fit_transform(Xc[:300])
    return {"linear": (Xr, (yr - yr.mean()) / yr.std()), "logistic": (Xc, yc[:300].astype(float))}


def torch_run(X, y, make_opt, *, model, batch_size=32, epochs=3, seed=0, schedule=None):
    """The same run in torch: same batches, same loss, the optimizer under test."""
    Xa = torch.from_numpy(dn.add_intercept(X))
    yt = torch.from_numpy(y)
    w = torch.zeros(Xa.shape[1], dtype=torch.float64, requires_grad=True)
    opt = make_opt([w])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    history = []
    k = len(y) if batch_size is None else batch_size
    for idx in dn.minibatch_indices(len(y), k, epochs, seed):
        xb, yb = Xa[idx], yt[idx]
        opt.zero_grad()
        z = xb @ w
        loss = ((z - yb) ** 2).mean() if model == "linear" else (torch.nn.functional.softplus(z) - yb * z).mean()
        loss.backward()
        history.append(loss.item())
        opt.step()
        if sched:
            sched.step()
    return w.detach().numpy(), np.array(history)


CASES = [
    ("minibatch_gd", dn.minibatch_gd, dict(lr=0.05), lambda p: descent.SGD(p, lr=0.05)),
    ("minibatch_gd+l2", dn.minibatch_gd, dict(lr=0.05, weight_decay=0.1),
     lambda p: descent.SGD(p, lr=0.05, weight_decay=0.1)),
    ("momentum", dn.sgd_momentum, dict(lr=0.02, momentum=0.9), lambda p: descent.SGD(p, lr=0.02, momentum=0.9)),
    ("nesterov", dn.nesterov, dict(lr=0.02, momentum=0.9),
     lambda p: descent.SGD(p, lr=0.02, momentum=0.9, nesterov=True)),
    ("adagrad", dn.adagrad, dict(lr=0.1), lambda p: descent.Adagrad(p, lr=0.1)),
    ("rmsprop", dn.rmsprop, dict(lr=0.01), lambda p: descent.RMSprop(p, lr=0.01)),
    ("adam", dn.adam, dict(lr=0.05), lambda p: descent.Adam(p, lr=0.05)),
    ("adam+l2", dn.adam, dict(lr=0.05, weight_decay=0.1), lambda p: descent.Adam(p, lr=0.05, weight_decay=0.1)),
    ("adamw", dn.adamw, dict(lr=0.05, weight_decay=0.1), lambda p: descent.AdamW(p, lr=0.05, weight_decay=0.1)),
]


@pytest.mark.parametrize("sched", [None, "cosine"])
@pytest.mark.parametrize("model", ["linear", "logistic"])
@pytest.mark.parametrize("name,fn,kw,make_opt", CASES, ids=[c[0] for c in CASES])
def test_agrees_with_descent_optimizer(data, name, fn, kw, make_opt, model, sched):
    X, y = data[model]
    schedule = schedules.cosine_annealing(dn.n_iterations(len(y), 32, 3)) if sched else None
    w, hist = fn(X, y, model=model, epochs=3, batch_size=32, schedule=schedule, **kw)
    w_t, hist_t = torch_run(X, y, make_opt, model=model, schedule=schedule)
    np.testing.assert_allclose(w, w_t, **TOL)
    np.testing.assert_allclose(hist, hist_t, **TOL)
    assert np.abs(w).max() > 1e-2  # it moved


@pytest.mark.parametrize("fn,batch_size,epochs", [(dn.batch_gd, None, 20), (dn.stochastic_gd, 1, 1)])
def test_batch_and_stochastic_agree_with_sgd(data, fn, batch_size, epochs):
    X, y = data["linear"]
    w, hist = fn(X, y, lr=0.01, epochs=epochs)
    w_t, hist_t = torch_run(X, y, lambda p: descent.SGD(p, lr=0.01), model="linear", batch_size=batch_size,
                            epochs=epochs)
    np.testing.assert_allclose(w, w_t, **TOL)
    assert len(hist) == dn.n_iterations(len(y), batch_size or len(y), epochs)


def test_momentum_conventions(data):
    """lr inside the velocity == lr outside with a constant rate; not with a schedule."""
    X, y = data["linear"]
    outside = dn.sgd_momentum(X, y, lr=0.02, momentum=0.9, epochs=3)
    inside = dn.sgd_momentum(X, y, lr=0.02, momentum=0.9, epochs=3, lr_inside=True)
    torch_w, _ = torch_run(X, y, lambda p: descent.SGD(p, lr=0.02, momentum=0.9), model="linear")
    np.testing.assert_allclose(inside.weights, torch_w, **TOL)
    np.testing.assert_allclose(outside.weights, torch_w, **TOL)
    decay = schedules.step_decay(drop=0.1, every=10)
    out_s = dn.sgd_momentum(X, y, lr=0.02, momentum=0.9, epochs=3, schedule=decay)
    in_s = dn.sgd_momentum(X, y, lr=0.02, momentum=0.9, epochs=3, schedule=decay, lr_inside=True)
    torch_s, _ = torch_run(X, y, lambda p: descent.SGD(p, lr=0.02, momentum=0.9), model="linear", schedule=decay)
    np.testing.assert_allclose(out_s.weights, torch_s, **TOL)
    assert np.abs(in_s.weights - torch_s).max() > 1e-3


def test_minibatches_sample_without_replacement():
    batches = list(dn.minibatch_indices(10, 3, 2, seed=1))
    assert len(batches) == dn.n_iterations(10, 3, 2) == 8
    assert [len(b) for b in batches[:4]] == [3, 3, 3, 1]
    for epoch in (batches[:4], batches[4:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(batches[:4]), np.concatenate(batches[4:]))
    assert math.ceil(442 / 32) * 3 == len(dn.minibatch_gd(*load_diabetes(return_X_y=True), lr=1e-9, epochs=3)[1])


def test_normal_equation_and_gd_reach_it(data):
    X, y = data["linear"]
    w = dn.normal_equation(X, y)
    ref = LinearRegression().fit(X, y)
    np.testing.assert_allclose(w, np.r_[ref.coef_, ref.intercept_], rtol=1e-10, atol=1e-12)
    ridge = Ridge(alpha=3.0).fit(X, y)
    np.testing.assert_allclose(dn.normal_equation(X, y, alpha=3.0), np.r_[ridge.coef_, ridge.intercept_],
                               rtol=1e-9, atol=1e-12)
    Xa = dn.add_intercept(X)
    L = np.linalg.eigvalsh(2 * Xa.T @ Xa / len(y)).max()  # smoothness: lr = 1/L is stable
    w_gd, hist = dn.batch_gd(X, y, lr=1 / L, epochs=5000)
    assert np.abs(w_gd - w).max() < 1e-4 and np.all(np.diff(hist) <= 1e-15)
    w_adam, _ = dn.adam(X, y, lr=0.01, epochs=300, batch_size=64, schedule=schedules.cosine_annealing(2100))
    mse = lambda v: np.mean((Xa @ v - y) ** 2)  # noqa: E731
    # the ill-conditioned s1/s2 directions move slowly, but the loss is at the optimum
    assert mse(w) <= mse(w_adam) < 1.005 * mse(w)


def test_logistic_regression_learns(data):
    X, y = data["logistic"]
    w, hist = dn.adam(X, y, model="logistic", lr=0.05, epochs=30)
    acc = np.mean(((dn.add_intercept(X) @ w) > 0) == (y == 1))
    assert acc > 0.97 and hist[-10:].mean() < 0.5 * hist[:10].mean()


def test_schedules():
    assert [schedules.exponential_decay(0.5)(t) for t in range(3)] == [1.0, 0.5, 0.25]
    cos = schedules.cosine_annealing(10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0) and cos(99) == cos(10)
    wc = schedules.warmup_cosine(4, 12)
    assert [wc(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0] and wc(12) == pytest.approx(0.0)
    assert schedules.invscaling(0.5)(3) == 0.5 and schedules.constant()(7) == 1.0


def test_bad_input():
    X, y = np.ones((5, 2)), np.zeros(5)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        dn.adam(X, y[:4])
    Xn = X.copy()
    Xn[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dn.minibatch_gd(Xn, y)
    with pytest.raises(ValueError, match="Invalid lr"):
        dn.sgd_momentum(X, y, lr=-0.1)
    with pytest.raises(ValueError, match=r"labels in \{0, 1\}"):
        dn.adam(X, y + 2, model="logistic")
    with pytest.raises(ValueError, match="Invalid batch_size"):
        dn.minibatch_gd(X, y, batch_size=0)
    with pytest.raises(ValueError, match="Invalid model"):
        dn.adam(X, y, model="poisson")
    with pytest.raises(ValueError, match="Invalid alpha"):
        dn.normal_equation(X, y, alpha=-1.0)
