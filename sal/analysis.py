"""Cross-model analysis: from many models' SAL to their post-RL accuracy (paper Section 3.3).

* ``fit_exp_power``: the exponential-power law ``eps = exp(-alpha * SAL**beta)`` (Eq. 5),
  fitted by non-linear least squares on the error rate ``eps = 1 - accuracy``.
* ``leave_one_out``: each model's error forecast by the law fitted on the other models.
* ``spearman_table``: Spearman correlation of SAL with each benchmark's accuracy (Table 1).
* ``compare``: all of the above for a set of models, joined with an accuracy table (the
  packaged SimpleRL-Zoo post-RL table by default).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import optimize, stats

from sal.errors import ConfigError, MissingInputError

RESOURCES = Path(__file__).resolve().parent / "resources"
REFERENCE_ACCURACY_CSV = RESOURCES / "simplerl_zoo_post_rl.csv"
"""SimpleRL-Zoo post-RL (GRPO) accuracies in %, the source of the paper's Table 1."""
PAPER_SAL_CSV = RESOURCES / "paper_sal_reference.csv"
"""The paper's approximate SAL per model (bits), read from its text and figures."""

PAPER_FIT = {"alpha": 4.246, "beta": 1.090, "r2": 0.985, "loo_r2": 0.872}
"""The fit the paper reports for Eq. 5 (Figure 4, Section 3.3)."""

TABLE1_BENCHMARKS = {
    "amc23": "AMC23",
    "math500": "MATH500",
    "minerva_math": "Minerva",
    "olympiadbench": "Olympiad",
    "aime24_pass1": "AIME24 (pass@1)",
    "aime24_avg32": "AIME24 (avg@32)",
    "avg": "Avg. Acc.",
}
"""Accuracy columns of the packaged table in Table 1's order, with the paper's headers."""


# --------------------------------------------------------------------------------------
# Exponential-power law
# --------------------------------------------------------------------------------------


class ExpPowerFit(NamedTuple):
    """Fitted ``eps = exp(-alpha * SAL**beta)``."""

    alpha: float
    """Rate: larger alpha means error falls faster with SAL."""
    beta: float
    """Shape: beta = 1 is a plain exponential in SAL."""
    r2: float
    """In-sample R^2 on the error scale: 1 - SS_res / SS_tot of eps."""

    def predict(self, sal) -> np.ndarray:
        """Predicted error rate at the given SAL values (bits)."""
        return exp_power(np.asarray(sal, dtype=float), self.alpha, self.beta)


def exp_power(sal: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """``exp(-alpha * sal**beta)``: error rate as a function of SAL (paper Eq. 5)."""
    return np.exp(-alpha * np.power(sal, beta))


def r_squared(observed, predicted) -> float:
    """Coefficient of determination 1 - SS_res / SS_tot."""
    observed = np.asarray(observed, dtype=float)
    ss_tot = float(np.sum((observed - observed.mean()) ** 2))
    if ss_tot == 0:
        return float("nan")
    return 1.0 - float(np.sum((observed - np.asarray(predicted)) ** 2)) / ss_tot


def _check_xy(sal, error) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sal, dtype=float).ravel()
    e = np.asarray(error, dtype=float).ravel()
    if s.shape != e.shape:
        raise ValueError(f"sal and error differ in length: {s.size} vs {e.size}.")
    if s.size < 3:
        raise ValueError(f"fitting alpha and beta needs at least 3 models, got {s.size}.")
    if np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise ValueError(f"SAL values must be finite and > 0 for the power law, got {s}.")
    if np.any(e <= 0) or np.any(e > 1) or not np.all(np.isfinite(e)):
        raise ValueError(
            f"error rates must lie in (0, 1], got {e}. Pass error = 1 - accuracy/100 when the "
            "accuracy is in percent."
        )
    return s, e


def fit_exp_power(sal, error, p0: tuple[float, float] = (4.0, 1.0)) -> ExpPowerFit:
    """Fit ``eps = exp(-alpha * SAL**beta)`` by non-linear least squares on the error rate.

    Args:
        sal: SAL per model (bits, > 0).
        error: error rate per model in (0, 1], e.g. ``1 - avg_accuracy / 100``.
        p0: starting point (alpha, beta).

    Returns:
        ``ExpPowerFit(alpha, beta, r2)`` with alpha, beta > 0 and R^2 on the error scale.
    """
    s, e = _check_xy(sal, error)
    (alpha, beta), _ = optimize.curve_fit(
        exp_power, s, e, p0=p0, bounds=((1e-9, 1e-9), (np.inf, np.inf)), maxfev=20000
    )
    return ExpPowerFit(float(alpha), float(beta), r_squared(e, exp_power(s, alpha, beta)))


class LeaveOneOut(NamedTuple):
    """Leave-one-out forecasts of the error rate."""

    predictions: np.ndarray
    """Error rate of model i predicted by the law fitted without model i."""
    r2: float
    """R^2 of those forecasts against the observed error rates."""
    fits: list[ExpPowerFit]
    """The law fitted without model i, for each i."""


def leave_one_out(sal, error, p0: tuple[float, float] = (4.0, 1.0)) -> LeaveOneOut:
    """Forecast each model's error from a fit on the other models (needs >= 4 models)."""
    s, e = _check_xy(sal, error)
    if s.size < 4:
        raise ValueError(f"leave-one-out needs at least 4 models (3 to fit), got {s.size}.")
    preds, fits = np.empty_like(e), []
    for i in range(s.size):
        keep = np.arange(s.size) != i
        fit = fit_exp_power(s[keep], e[keep], p0)
        fits.append(fit)
        preds[i] = fit.predict(s[i])
    return LeaveOneOut(preds, r_squared(e, preds), fits)


# --------------------------------------------------------------------------------------
# Spearman table (Table 1)
# --------------------------------------------------------------------------------------


def significance_stars(p: float) -> str:
    """Table 1's marks: ``**`` for p < 0.01, ``*`` for p < 0.05."""
    return "**" if p < 0.01 else "*" if p < 0.05 else ""


def spearman_table(
    sal_by_model: Mapping[str, float],
    accuracy_df: pd.DataFrame,
    benchmarks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Spearman correlation of SAL with each benchmark's accuracy, in Table 1's layout.

    Args:
        sal_by_model: model name -> SAL; names are matched to the accuracy table's ``model``
            (or ``hf_id``) column, case-insensitively.
        accuracy_df: one row per model with a ``model`` column and accuracy columns.
        benchmarks: accuracy columns to correlate; default: those of ``TABLE1_BENCHMARKS``
            present in the table, else every numeric column.

    Returns:
        One row per benchmark: ``header`` (the paper's column title), ``rho_pct`` (Spearman
        rho in %), ``p_value``, ``stars`` and ``cell`` (e.g. ``"96.43**"``), ``n_models``.
    """
    return _spearman_from_joined(join_sal_accuracy(sal_by_model, accuracy_df), benchmarks)


def _spearman_from_joined(joined: pd.DataFrame, benchmarks: Sequence[str] | None) -> pd.DataFrame:
    if benchmarks is None:
        benchmarks = [c for c in TABLE1_BENCHMARKS if c in joined.columns] or [
            c for c in joined.select_dtypes("number").columns if c != "sal"
        ]
    rows = []
    for col in benchmarks:
        if col not in joined.columns:
            raise ConfigError(
                f"accuracy column {col!r} not in the accuracy table; it has "
                f"{[c for c in joined.columns if c != 'sal']}."
            )
        rho, p = stats.spearmanr(joined["sal"], joined[col])
        rows.append(
            {
                "benchmark": col,
                "header": TABLE1_BENCHMARKS.get(col, col),
                "rho_pct": 100.0 * float(rho),
                "p_value": float(p),
                "stars": significance_stars(float(p)),
                "cell": f"{100.0 * float(rho):.2f}{significance_stars(float(p))}",
                "n_models": len(joined),
            }
        )
    return pd.DataFrame(rows).set_index("benchmark")


# --------------------------------------------------------------------------------------
# Data loading and joining
# --------------------------------------------------------------------------------------


def load_reference_accuracy() -> pd.DataFrame:
    """The packaged SimpleRL-Zoo post-RL accuracy table (%), one row per base model."""
    return pd.read_csv(REFERENCE_ACCURACY_CSV)


def load_paper_sal() -> dict[str, float]:
    """The paper's approximate SAL per model (qwen2.5-1.5b is not given, so absent)."""
    df = pd.read_csv(PAPER_SAL_CSV)
    return dict(zip(df["model"], df["sal"].astype(float)))


def load_accuracy(accuracy: pd.DataFrame | str | Path | None) -> pd.DataFrame:
    """Accuracy table from a DataFrame, a CSV path, or ``None`` for the packaged table."""
    if accuracy is None:
        return load_reference_accuracy()
    if isinstance(accuracy, pd.DataFrame):
        df = accuracy
    else:
        path = Path(accuracy)
        if not path.is_file():
            raise MissingInputError(
                f"accuracy CSV {str(path)!r} does not exist; give a CSV with a 'model' column "
                "and accuracy columns in %, or leave it unset for the packaged table."
            )
        df = pd.read_csv(path)
    if "model" not in df.columns:
        raise ConfigError(f"accuracy table needs a 'model' column; it has {list(df.columns)}.")
    return df


def _key(name: str) -> str:
    return str(name).strip().lower()


def join_sal_accuracy(
    sal_by_model: Mapping[str, float], accuracy_df: pd.DataFrame
) -> pd.DataFrame:
    """Rows of ``accuracy_df`` for the given models, with a ``sal`` column added.

    A model name matches the table's ``model`` column or, if present, its ``hf_id`` column
    (case-insensitive). Models without a match are left out with a warning naming them.
    """
    lookup: dict[str, int] = {}
    for col in ("hf_id", "model"):  # "model" last so it wins on a clash
        if col in accuracy_df.columns:
            lookup.update({_key(v): i for i, v in enumerate(accuracy_df[col])})
    rows, sal, unmatched = [], [], []
    for name, value in sal_by_model.items():
        i = lookup.get(_key(name))
        if i is None:
            unmatched.append(name)
            continue
        rows.append(i)
        sal.append(float(value))
    if unmatched:
        warnings.warn(
            f"no accuracy for model(s) {unmatched}; they are left out of the analysis. "
            f"Known models: {list(accuracy_df['model'])}. Add them to the accuracy CSV.",
            stacklevel=2,
        )
    joined = accuracy_df.iloc[rows].reset_index(drop=True).copy()
    joined.insert(1, "sal", sal)
    joined.attrs["unmatched"] = unmatched
    return joined


class Comparison(NamedTuple):
    """The paper's predictive analysis for a set of models."""

    table: pd.DataFrame
    """Per model: model, sal, accuracy (%), error, fitted error, LOO-predicted error."""
    fit: ExpPowerFit
    """Eq. 5 fitted on all models."""
    loo: LeaveOneOut | None
    """Leave-one-out forecasts (None with fewer than 4 models)."""
    spearman: pd.DataFrame
    """Table 1 layout: Spearman rho (%) and p-value per benchmark."""
    accuracy_column: str
    """Accuracy column that defines the error rate."""
    unmatched: list[str]
    """Models given without an accuracy entry (left out)."""

    def summary(self) -> dict:
        """JSON-ready numbers: fit, LOO R^2, the paper's values, Spearman cells."""
        return {
            "n_models": int(len(self.table)),
            "accuracy_column": self.accuracy_column,
            "alpha": self.fit.alpha,
            "beta": self.fit.beta,
            "r2": self.fit.r2,
            "loo_r2": None if self.loo is None else self.loo.r2,
            "paper": dict(PAPER_FIT),
            "spearman": {
                k: {"rho_pct": r.rho_pct, "p_value": r.p_value, "cell": r.cell}
                for k, r in self.spearman.iterrows()
            },
            "unmatched": list(self.unmatched),
        }


def compare(
    sal_by_model: Mapping[str, float] | pd.DataFrame,
    accuracy: pd.DataFrame | str | Path | None = None,
    accuracy_column: str = "avg",
    benchmarks: Sequence[str] | None = None,
) -> Comparison:
    """Join models' SAL with post-RL accuracy and run the fit, LOO and Spearman analyses.

    Args:
        sal_by_model: model name -> SAL (bits), or a DataFrame with ``model`` and ``sal``.
        accuracy: accuracy table (DataFrame or CSV path, accuracies in %), default the
            packaged SimpleRL-Zoo table.
        accuracy_column: column defining the error rate ``1 - acc / 100`` (default ``avg``).
        benchmarks: columns for the Spearman table (default: Table 1's).
    """
    if isinstance(sal_by_model, pd.DataFrame):
        if not {"model", "sal"} <= set(sal_by_model.columns):
            raise ConfigError(
                f"SAL table needs 'model' and 'sal' columns; it has {list(sal_by_model.columns)}."
            )
        sal_by_model = dict(zip(sal_by_model["model"], sal_by_model["sal"].astype(float)))
    acc = load_accuracy(accuracy)
    if accuracy_column not in acc.columns:
        raise ConfigError(
            f"accuracy column {accuracy_column!r} not in the accuracy table; choose one of "
            f"{[c for c in acc.select_dtypes('number').columns]}."
        )
    joined = join_sal_accuracy(sal_by_model, acc)
    if len(joined) < 3:
        raise ConfigError(
            f"only {len(joined)} model(s) have both SAL and accuracy; the fit needs at least 3. "
            f"Unmatched: {joined.attrs['unmatched']}."
        )
    error = 1.0 - joined[accuracy_column].to_numpy(dtype=float) / 100.0
    fit = fit_exp_power(joined["sal"], error)
    loo = leave_one_out(joined["sal"], error) if len(joined) >= 4 else None
    table = pd.DataFrame(
        {
            "model": joined["model"],
            "sal": joined["sal"],
            "accuracy": joined[accuracy_column],
            "error": error,
            "fitted_error": fit.predict(joined["sal"]),
            "loo_error": np.nan if loo is None else loo.predictions,
        }
    )
    return Comparison(
        table=table,
        fit=fit,
        loo=loo,
        spearman=_spearman_from_joined(joined, benchmarks),
        accuracy_column=accuracy_column,
        unmatched=list(joined.attrs["unmatched"]),
    )
