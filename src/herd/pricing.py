"""Cost per call: the recorded cost where a source gives it, otherwise an estimate.

An estimate is price x tokens. Prices come from models.csv; an open-weights model without a
price but with a known size gets the price-by-size schedule below, a rough picture of what
hosted open-model APIs charged per 1M tokens (input and output alike) in 2024. Every estimated
cost is flagged, and a model with neither price nor size gets no cost at all.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from herd.errors import UsageError

# (largest size in billions of parameters, USD per 1M tokens). Override with parse_size_prices.
DEFAULT_SIZE_PRICES: tuple[tuple[float, float], ...] = (
    (4.0, 0.10),
    (9.0, 0.20),
    (17.0, 0.30),
    (40.0, 0.80),
    (80.0, 0.90),
    (150.0, 1.20),
    (math.inf, 3.50),
)
CHARS_PER_TOKEN = 4.0
# Used only when nothing is known of a model's output length on a benchmark.
DEFAULT_OUTPUT_TOKENS = 256.0


def parse_size_prices(spec: str) -> tuple[tuple[float, float], ...]:
    """Parse "4=0.1,9=0.2,inf=3.5" (max size in B params = USD per 1M tokens)."""
    pairs = []
    for i, part in enumerate(p for p in spec.split(",") if p.strip()):
        try:
            size, price = part.split("=")
            pairs.append((float(size), float(price)))
        except ValueError:
            raise UsageError(
                f"price-by-size schedule: item {i + 1} {part.strip()!r} is not SIZE=PRICE "
                "(e.g. '8=0.2,70=0.9,inf=3.5')"
            ) from None
    if not pairs:
        raise UsageError("price-by-size schedule is empty; give e.g. '8=0.2,70=0.9,inf=3.5'")
    pairs.sort()
    if pairs[-1][0] != math.inf:
        pairs.append((math.inf, pairs[-1][1]))
    return tuple(pairs)


def price_for_size(params_b: float, schedule=DEFAULT_SIZE_PRICES) -> float:
    for max_size, price in schedule:
        if params_b <= max_size:
            return price
    return schedule[-1][1]


def model_prices(models: pd.DataFrame, schedule=DEFAULT_SIZE_PRICES) -> pd.DataFrame:
    """Per (source, model): price_in, price_out (USD / 1M tokens) and where they came from."""
    rows = []
    for r in models.itertuples(index=False):
        p_in, p_out = _num(getattr(r, "price_in_per_mtok", None)), _num(getattr(r, "price_out_per_mtok", None))
        size = _num(getattr(r, "params_b", None))
        open_w = getattr(r, "open_weights", None)
        if p_in is not None and p_out is not None:
            basis = "list price"
        elif size is not None and not _is_false(open_w):
            p_in = p_out = price_for_size(size, schedule)
            basis = f"size schedule ({size:g}B)"
        else:
            p_in = p_out = None
            basis = None
        rows.append({"source": r.source, "model": r.model, "price_in": p_in, "price_out": p_out, "price_basis": basis})
    return pd.DataFrame(rows, columns=["source", "model", "price_in", "price_out", "price_basis"])


def fill_costs(outcomes: pd.DataFrame, queries: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
    """Return outcomes with cost_usd filled where it can be estimated and a cost_estimated flag."""
    out = outcomes.copy()
    recorded = out["cost_usd"].notna()
    out["cost_estimated"] = False
    if recorded.all():
        return out
    keys = ["source", "benchmark", "qid"]
    prompt_chars = out[keys].merge(queries[keys + ["text"]], on=keys, how="left")["text"].str.len().to_numpy(float)
    out_tokens = out["output_tokens"].astype("float64").to_numpy()
    from_chars = out["output_chars"].astype("float64").to_numpy() / CHARS_PER_TOKEN
    out_tokens = np.where(np.isnan(out_tokens), from_chars, out_tokens)
    # Unknown output length: the model's mean on that benchmark, then the benchmark's mean.
    s = pd.Series(out_tokens, index=out.index)
    s = s.fillna(s.groupby([out["source"], out["benchmark"], out["model"]]).transform("mean"))
    s = s.fillna(s.groupby([out["source"], out["benchmark"]]).transform("mean"))
    s = s.fillna(DEFAULT_OUTPUT_TOKENS)
    p = out[["source", "model"]].merge(prices, on=["source", "model"], how="left")
    est = (prompt_chars / CHARS_PER_TOKEN * p["price_in"].to_numpy(float)
           + s.to_numpy() * p["price_out"].to_numpy(float)) / 1e6
    fill = ~recorded.to_numpy() & ~np.isnan(est)
    out.loc[fill, "cost_usd"] = est[fill]
    out.loc[fill, "cost_estimated"] = True
    return out


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _is_false(v) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in {"false", "0", "no"}
    return isinstance(v, (bool, np.bool_)) and not v
