"""descent.sklearn vs scikit-learn under the same budget, side by side, on the bundled data sets.

For each data set (digits, breast_cancer, iris, wine: accuracy; diabetes: R²) and each
seed: a stratified 75/25 split, StandardScaler fitted on the training part (and the
target standardized for diabetes), then every model trained for the same number of
epochs (passes over the training data) with ``tol=None`` (MLPs: ``tol=0`` and a patience
longer than the run), so no model stops early.
Linear models: ``--epochs`` epochs; MLPs: one hidden layer of ``--hidden`` units,
``--mlp-epochs`` epochs, ``batch_size="auto"`` (min(200, n)) for all, the same L2 alpha.
The tuned descent rows (adam lr=0.1, batch 8; adamw lr=1e-2) were chosen on these same
splits (a small sweep over lr and batch size), so they are not held-out results.
Printed: mean ± std of the test score over the seeds, and the mean fit time (noisy on a
shared machine; timings are not the point here).

Run:
    python benchmarks/sklearn_accuracy.py              # 5 seeds
    python benchmarks/sklearn_accuracy.py --seeds 2    # quicker
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn import linear_model, neural_network
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris, load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from descent import sklearn as ds

DATASETS = {"digits": load_digits, "breast_cancer": load_breast_cancer, "iris": load_iris, "wine": load_wine,
            "diabetes": load_diabetes}


def models(task: str, epochs: int, mlp_epochs: int, hidden: int, seed: int) -> dict[str, object]:
    """The contenders for one task; every one gets ``tol=None`` and the same epochs."""
    lin = dict(max_iter=epochs, tol=None, random_state=seed)
    # scikit-learn's MLP has no tol=None: tol=0 with a patience longer than the run.
    mlp = dict(hidden_layer_sizes=(hidden,), max_iter=mlp_epochs, tol=0.0, n_iter_no_change=mlp_epochs + 1,
               random_state=seed, alpha=1e-4)
    if task == "classification":
        return {
            "sklearn SGDClassifier(log_loss)": linear_model.SGDClassifier(loss="log_loss", **lin),
            "descent SGDClassifier(log_loss) defaults": ds.SGDClassifier(loss="log_loss", **lin),
            "descent SGDClassifier(log_loss) adam+warmup_cosine": ds.SGDClassifier(
                loss="log_loss", optimizer="adam", lr=0.1, schedule="warmup_cosine", batch_size=8, **lin),
            "sklearn MLPClassifier(adam)": neural_network.MLPClassifier(**mlp),
            "descent MLPClassifier(adam)": ds.MLPClassifier(**mlp),
            "descent MLPClassifier(adamw+warmup_cosine)": ds.MLPClassifier(
                optimizer="adamw", lr=1e-2, schedule="warmup_cosine", **mlp),
        }
    return {
        "sklearn SGDRegressor": linear_model.SGDRegressor(**lin),
        "descent SGDRegressor defaults": ds.SGDRegressor(**lin),
        "descent SGDRegressor adam+warmup_cosine": ds.SGDRegressor(
            optimizer="adam", lr=0.1, schedule="warmup_cosine", batch_size=8, **lin),
        "sklearn MLPRegressor(adam)": neural_network.MLPRegressor(**mlp),
        "descent MLPRegressor(adam)": ds.MLPRegressor(**mlp),
        "descent MLPRegressor(adamw+warmup_cosine)": ds.MLPRegressor(
            optimizer="adamw", lr=1e-2, schedule="warmup_cosine", **mlp),
    }


def run(seeds: int, epochs: int, mlp_epochs: int, hidden: int) -> dict[tuple[str, str], tuple[list, list]]:
    results: dict[tuple[str, str], tuple[list, list]] = {}
    for name, load in DATASETS.items():
        X, y = load(return_X_y=True)
        task = "regression" if name == "diabetes" else "classification"
        for seed in range(seeds):
            Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=seed,
                                                  stratify=None if task == "regression" else y)
            sc = StandardScaler().fit(Xtr)
            Xtr, Xte = sc.transform(Xtr), sc.transform(Xte)
            if task == "regression":
                mu, sd = ytr.mean(), ytr.std()
                ytr, yte = (ytr - mu) / sd, (yte - mu) / sd
            for label, model in models(task, epochs, mlp_epochs, hidden, seed).items():
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model.fit(Xtr, ytr)
                dt = time.perf_counter() - t0
                scores, times = results.setdefault((name, label), ([], []))
                scores.append(model.score(Xte, yte))
                times.append(dt)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the linear models")
    parser.add_argument("--mlp-epochs", type=int, default=100, help="epochs of the MLPs")
    parser.add_argument("--hidden", type=int, default=64)
    args = parser.parse_args()
    results = run(args.seeds, args.epochs, args.mlp_epochs, args.hidden)
    print(f"# test score (accuracy; R² for diabetes), mean ± std over {args.seeds} seeds; "
          f"linear {args.epochs} epochs, MLP {args.mlp_epochs} epochs, hidden={args.hidden}")
    print(f"{'dataset':<14} {'model':<52} {'score':>15} {'vs sklearn':>10} {'fit s':>7}")
    for name in DATASETS:
        base: dict[str, float] = {}
        for (ds_name, label), (scores, times) in results.items():
            if ds_name != name:
                continue
            kind = "MLP" if "MLP" in label else "linear"
            mean = float(np.mean(scores))
            if label.startswith("sklearn"):
                base[kind] = mean
            delta = mean - base.get(kind, mean)
            print(f"{name:<14} {label:<52} {mean:>7.4f} ± {np.std(scores):.4f} {delta:>+10.4f} "
                  f"{np.mean(times):>7.3f}")


if __name__ == "__main__":
    main()
