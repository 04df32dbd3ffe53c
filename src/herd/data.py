"""The outcome table: which model answered which query correctly, at what cost and latency.

Unified format (a directory): ``queries.parquet`` (source, benchmark, qid, text[, gold, category]),
``outcomes.parquet`` (source, benchmark, qid, model, correct[, cost_usd, latency_s,
output_tokens, output_chars, agreement, answer, propensity]) and optionally ``models.csv`` (prices, sizes, tags).
CSV or JSONL files with the same columns work too, as does one long CSV/JSONL file holding
the outcome columns plus ``text``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold

from herd.errors import HerdError
from herd.pricing import DEFAULT_SIZE_PRICES, fill_costs, model_prices

QUERY_KEY = ["source", "benchmark", "qid"]
QUERY_REQUIRED = QUERY_KEY + ["text"]
OUTCOME_REQUIRED = QUERY_KEY + ["model", "correct"]
OUTCOME_OPTIONAL = {
    "cost_usd": "float64",
    "latency_s": "float64",
    "output_tokens": "Int64",
    "output_chars": "Int64",
    "agreement": "float64",
    # Live traffic (herd import choice-log): the probability the serving policy gave the model
    # that answered, in (0, 1]; off-policy estimates and weighted training read it.
    "propensity": "float64",
}
# What a model's answer showed once it was in, per (query, model): the signals a cascade may
# read after calling a model (answer length; the share of k samples that agree, when sampled).
OBSERVED = ("agreement", "output_chars", "output_tokens")
DEFAULT_MIN_OUTCOMES = 20
TABLE_SUFFIXES = (".parquet", ".csv", ".jsonl")


class HerdDataError(HerdError, ValueError):
    """Outcome data that cannot be used as it is; the message says where and what to do."""


def find_data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """--data DIR, else $HERD_DATA, else ../shared/data from the cwd or from the repository root."""
    if explicit:
        path = Path(explicit)
        if not path.exists():
            raise HerdDataError(f"--data {path}: no such file or directory")
        return path
    env = os.environ.get("HERD_DATA")
    if env:
        path = Path(env)
        if not path.exists():
            raise HerdDataError(f"HERD_DATA={env}: no such file or directory; fix or unset it")
        return path
    candidates = _default_data_dirs()
    for c in candidates:
        if (c / "outcomes.parquet").exists():
            return c.resolve()
    looked = ", ".join(str(c.resolve()) for c in candidates)
    raise HerdDataError(
        f"no outcome data found (looked in {looked}); pass --data DIR or set HERD_DATA to a "
        "directory with queries.parquet and outcomes.parquet"
    )


def _default_data_dirs() -> list[Path]:
    repo_root = Path(__file__).resolve().parents[2]
    return [Path.cwd() / ".." / "shared" / "data", repo_root / ".." / "shared" / "data"]


@dataclass(frozen=True, repr=False)
class Matrix:
    """Queries x models, aligned: row i is query ``keys.iloc[i]``, column j is ``models[j]``.

    ``correct``, ``cost`` and ``latency`` have shape (n_queries, n_models) with NaN where the
    data has no value. ``cost_estimated[j]`` says whether any of model j's costs is an estimate.
    """

    keys: pd.DataFrame
    texts: list[str]
    models: list[str]
    correct: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    cost_estimated: np.ndarray
    answers: np.ndarray | None = None
    gold: np.ndarray | None = None
    categories: np.ndarray | None = None
    owned: np.ndarray | None = None  # per model: open weights, so it can be run on one's own hardware
    observed: dict[str, np.ndarray] | None = None  # OBSERVED name -> (n_queries, n_models), NaN unknown
    # The recorded answers as the benchmark's grader compares them: equal codes for answers that
    # grade alike, -1 for none (votes and agreement cascades read these). None without answers.
    answer_codes: np.ndarray | None = None
    grader: str | None = None
    # What traffic may know of a query before routing it: its benchmark in a mixture of several,
    # else its category where the data gives one; None where neither is known.
    tasks: np.ndarray | None = None
    # Live traffic: (n_queries, n_models) the serving policy's probability of the logged model,
    # NaN where no propensity was logged. None for benchmark data.
    propensity: np.ndarray | None = None

    @property
    def n_queries(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return f"Matrix({self.n_queries} queries x {len(self.models)} models)"

    @property
    def labels(self) -> np.ndarray:
        """Correctness with a missing outcome counted as wrong (the model gave no answer)."""
        return np.nan_to_num(self.correct, nan=0.0)

    def take(self, rows) -> Matrix:
        rows = np.asarray(rows)
        pick = (lambda a: None if a is None else a[rows])
        return replace(
            self,
            keys=self.keys.iloc[rows].reset_index(drop=True),
            texts=[self.texts[i] for i in rows],
            correct=self.correct[rows],
            cost=self.cost[rows],
            latency=self.latency[rows],
            answers=pick(self.answers),
            answer_codes=pick(self.answer_codes),
            tasks=pick(self.tasks),
            propensity=pick(self.propensity),
            gold=pick(self.gold),
            categories=pick(self.categories),
            observed=None if self.observed is None else {k: v[rows] for k, v in self.observed.items()},
        )

    def columns(self, models: list[str]) -> Matrix:
        """The same queries with only ``models``' columns, in that order: outcomes, answers,
        answer observations, ownership and propensities alike."""
        unknown = [x for x in models if x not in self.models]
        if unknown:
            raise ValueError(f"model(s) {unknown} are not in the data's models {self.models}")
        idx = [self.models.index(x) for x in models]
        pick = (lambda a: None if a is None else a[:, idx])
        return replace(
            self,
            models=list(models),
            correct=self.correct[:, idx],
            cost=self.cost[:, idx],
            latency=self.latency[:, idx],
            cost_estimated=self.cost_estimated[idx],
            answers=pick(self.answers),
            answer_codes=pick(self.answer_codes),
            propensity=pick(self.propensity),
            owned=None if self.owned is None else self.owned[idx],
            observed=None if self.observed is None else {k: v[:, idx] for k, v in self.observed.items()},
        )

    def kfold(self, n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
        """Seeded k-fold by query, stratified by (source, benchmark) when every group allows it."""
        return _kfold(self.keys, n_splits, seed)

    def fingerprint(self) -> str:
        """A short hash of the queries, models and outcomes: equal data, equal fingerprint."""
        h = hashlib.sha256()
        h.update("\x1f".join(self.models).encode())
        for col in ("source", "benchmark", "qid"):
            h.update("\x1f".join(self.keys[col].astype(str)).encode())
        h.update(np.nan_to_num(self.correct, nan=-1).astype(np.float32).tobytes())
        return h.hexdigest()[:16]


@dataclass(repr=False)
class Outcomes:
    """Validated outcome data; costs missing in the source are filled with flagged estimates.

    ``queries``: one row per (source, benchmark, qid) with its text; ``outcomes``: one row per
    (query, model) with ``correct`` in [0, 1] and cost/latency where known; ``models``: one row
    per model (prices, size, open weights). ``matrix()`` pivots them to (n_queries, n_models).
    """

    queries: pd.DataFrame
    outcomes: pd.DataFrame
    models: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["model", "source"]))
    origin: str = "<memory>"

    def __repr__(self) -> str:
        return (f"Outcomes({self.origin}: {len(self.queries)} queries, {self.outcomes['model'].nunique()} models, "
                f"{len(self.groups())} benchmark(s))")

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        min_outcomes: int = DEFAULT_MIN_OUTCOMES,
        size_prices=DEFAULT_SIZE_PRICES,
    ) -> Outcomes:
        """Read a unified-format directory (queries, outcomes, optional models.csv) or one long
        CSV/JSONL file, validate it, and drop models with fewer than ``min_outcomes`` outcomes on
        a benchmark. Raises HerdDataError saying which file, column and row is wrong."""
        path = Path(path)
        if path.is_dir():
            q_file = _find_table(path, "queries")
            o_file = _find_table(path, "outcomes")
            if o_file is None:
                raise HerdDataError(
                    f"{path}: no outcomes.parquet, outcomes.csv or outcomes.jsonl; a unified "
                    "dataset needs outcomes and queries tables (or pass one long CSV/JSONL file)"
                )
            if q_file is None:
                raise HerdDataError(f"{path}: no queries.parquet, queries.csv or queries.jsonl beside {o_file.name}")
            queries, outcomes = _read_table(q_file), _read_table(o_file)
            origin, q_name, o_name = str(path), q_file.name, o_file.name
        elif path.is_file():
            long = _read_table(path)
            queries, outcomes = split_long(long, path.name, default_source=path.stem)
            origin, q_name, o_name = str(path), path.name, path.name
        else:
            raise HerdDataError(f"{path}: no such file or directory")
        models_csv = (path if path.is_dir() else path.parent) / "models.csv"
        models = _read_table(models_csv) if models_csv.exists() else None
        return cls.from_frames(
            queries, outcomes, models, origin=origin, queries_name=q_name, outcomes_name=o_name,
            min_outcomes=min_outcomes, size_prices=size_prices,
        )

    @classmethod
    def from_frames(
        cls,
        queries: pd.DataFrame,
        outcomes: pd.DataFrame,
        models: pd.DataFrame | None = None,
        *,
        origin: str = "<memory>",
        queries_name: str = "queries",
        outcomes_name: str = "outcomes",
        min_outcomes: int = DEFAULT_MIN_OUTCOMES,
        size_prices=DEFAULT_SIZE_PRICES,
    ) -> Outcomes:
        queries, outcomes = validate(queries, outcomes, queries_name, outcomes_name, min_outcomes)
        if models is None:
            models = pd.DataFrame(columns=["model", "source"])
        _check_columns(models, ["model", "source"], "models.csv", "one row per (source, model)")
        models = models.astype({"model": str, "source": str})
        outcomes = fill_costs(outcomes, queries, model_prices(models, size_prices))
        return cls(queries, outcomes, models, origin)

    def with_prices(self, prices: dict[str, tuple[float, float]]) -> Outcomes:
        """These outcomes priced with ``prices`` (USD per million input and output tokens, by model
        name, e.g. from a pool file): the named models' estimated costs are estimated again at
        these prices; recorded costs and other models stay as they are."""
        out = self.outcomes.copy()
        redo = out["model"].isin(list(prices)) & out["cost_estimated"]
        out.loc[redo, "cost_usd"] = np.nan
        pairs = out[["source", "model"]].drop_duplicates()
        given = pd.DataFrame([{"source": s, "model": m, "price_in": prices[m][0], "price_out": prices[m][1],
                               "price_basis": "pool file"} for s, m in pairs.itertuples(index=False) if m in prices],
                             columns=["source", "model", "price_in", "price_out", "price_basis"])
        priced = fill_costs(out.drop(columns=["cost_estimated"]), self.queries, given)
        priced["cost_estimated"] |= out["cost_estimated"] & ~redo
        models = self.models.copy()
        for col, k in (("price_in_per_mtok", 0), ("price_out_per_mtok", 1)):
            named = models["model"].map(lambda m: prices[m][k] if m in prices else None)
            models[col] = named.where(named.notna(), models[col] if col in models else None)
        return replace(self, outcomes=priced, models=models)

    # ---- writing -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the unified format (``outcomes.parquet``, ``queries.parquet``, ``models.csv``)
        to ``directory``, made if missing. Each table goes to a temporary file beside it and is
        renamed over the old one, so a reader sees the old table or the new one, never half of
        one. Estimated costs are not written: loading estimates them again from the prices."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        outcomes = self.outcomes
        if "cost_estimated" in outcomes:
            estimated = outcomes["cost_estimated"].astype(bool)
            outcomes = outcomes.assign(cost_usd=outcomes["cost_usd"].mask(estimated)).drop(columns="cost_estimated")
        for name, write in (("outcomes.parquet", lambda p: outcomes.to_parquet(p, index=False)),
                            ("queries.parquet", lambda p: self.queries.to_parquet(p, index=False)),
                            ("models.csv", lambda p: self.models.to_csv(p, index=False))):
            # A new name each time, made by the writer itself, so the table gets the mode the
            # umask gives (mkstemp's files stay readable by their owner alone).
            tmp = out / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            try:
                write(tmp)
                os.replace(tmp, out / name)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return out

    # ---- selecting -----------------------------------------------------------------------
    def groups(self) -> list[tuple[str, str]]:
        g = self.queries[["source", "benchmark"]].drop_duplicates().sort_values(["source", "benchmark"])
        return list(g.itertuples(index=False, name=None))

    def mixtures(self) -> list[Outcomes]:
        """Per source with two benchmarks or more: all of them pooled as one stream of mixed
        tasks, over the models that every one of them has outcomes for."""
        out = []
        for source in sorted(self.queries["source"].unique()):
            sub = self.filter(source=source)
            per_benchmark = sub.outcomes.groupby("benchmark")["model"].unique()
            if len(per_benchmark) < 2:
                continue
            shared = set.intersection(*(set(v) for v in per_benchmark))
            if len(shared) >= 2:
                out.append(sub.filter(models=sorted(shared)))
        if not out:
            raise HerdDataError(f"{self.origin}: no mixture to evaluate: --mix needs a source with two benchmarks or "
                                "more whose outcomes share at least two models")
        return out

    def model_names(self) -> list[str]:
        return sorted(self.outcomes["model"].unique())

    def filter(self, source=None, benchmark=None, models=None) -> Outcomes:
        """Keep the given source(s), benchmark(s) and model(s); unknown names are an error."""
        q, o = self.queries, self.outcomes
        for col, want in (("source", source), ("benchmark", benchmark)):
            if want is None:
                continue
            want = [want] if isinstance(want, str) else list(want)
            known = set(q[col])
            unknown = [w for w in want if w not in known]
            if unknown:
                raise HerdDataError(f"{self.origin}: no {col} {unknown}; known: {sorted(known)}")
            q, o = q[q[col].isin(want)], o[o[col].isin(want)]
        if models is not None:
            models = [models] if isinstance(models, str) else list(models)
            known = set(o["model"])
            unknown = [m for m in models if m not in known]
            if unknown:
                raise HerdDataError(
                    f"{self.origin}: no outcomes for model(s) {unknown} here; known: {sorted(known)}"
                )
            o = o[o["model"].isin(models)]
        return Outcomes(q.reset_index(drop=True), o.reset_index(drop=True), self.models, self.origin)

    def subset(self, query_rows) -> Outcomes:
        """The queries at the given row positions of ``self.queries`` and their outcomes."""
        q = self.queries.iloc[np.asarray(query_rows)].reset_index(drop=True)
        o = self.outcomes.merge(q[QUERY_KEY], on=QUERY_KEY, how="inner")
        return Outcomes(q, o, self.models, self.origin)

    def kfold(self, n_splits: int = 5, seed: int = 0) -> list[tuple[Outcomes, Outcomes]]:
        return [(self.subset(tr), self.subset(te)) for tr, te in _kfold(self.queries, n_splits, seed)]

    def split(self, test_size: float = 0.2, seed: int = 0) -> tuple[Outcomes, Outcomes]:
        """A seeded train/test split by query: no query is on both sides."""
        if not 0 < test_size < 1:
            raise ValueError(f"test_size must be in (0, 1), got {test_size}")
        order = np.random.default_rng(seed).permutation(len(self.queries))
        n_test = max(1, int(round(test_size * len(order))))
        return self.subset(np.sort(order[n_test:])), self.subset(np.sort(order[:n_test]))

    # ---- pivoting ------------------------------------------------------------------------
    def matrix(self, models: list[str] | None = None) -> Matrix:
        """Pivot to a Matrix of (n_queries, n_models) arrays: rows in ``self.queries`` order,
        columns ``models`` (default: every model of the data)."""
        models = list(models) if models is not None else self.model_names()
        q = self.queries.reset_index(drop=True)
        row = pd.Series(np.arange(len(q)), index=pd.MultiIndex.from_frame(q[QUERY_KEY]))
        o = self.outcomes[self.outcomes["model"].isin(models)]
        r = row.reindex(pd.MultiIndex.from_frame(o[QUERY_KEY])).to_numpy()
        c = pd.Index(models).get_indexer(o["model"])
        shape = (len(q), len(models))

        def grid(values, dtype=float, fill=np.nan):
            a = np.full(shape, fill, dtype=dtype)
            a[r, c] = values
            return a

        estimated = o.groupby("model")["cost_estimated"].any().reindex(models, fill_value=False)
        answers = grid(o["answer"].astype(object).to_numpy(), object, None) if "answer" in o else None
        grader = codes = None
        if answers is not None and o["answer"].notna().any():
            codes, grader = _answer_codes(answers, q["benchmark"].to_numpy(), o)
        return Matrix(
            keys=q[QUERY_KEY].copy(),
            texts=q["text"].tolist(),
            models=models,
            correct=grid(o["correct"].to_numpy(float)),
            cost=grid(o["cost_usd"].to_numpy(float)),
            latency=grid(o["latency_s"].to_numpy(float)),
            cost_estimated=estimated.to_numpy(bool),
            answers=answers,
            answer_codes=codes,
            grader=grader,
            tasks=_tasks(q),
            gold=q["gold"].to_numpy(object) if "gold" in q else None,
            categories=q["category"].to_numpy(object) if "category" in q else None,
            owned=self._owned(models),
            observed={k: grid(o[k].to_numpy(float, na_value=np.nan)) for k in OBSERVED if o[k].notna().any()} or None,
            propensity=grid(o["propensity"].to_numpy(float)) if o["propensity"].notna().any() else None,
        )

    def _owned(self, models: list[str]) -> np.ndarray | None:
        if "open_weights" not in self.models:
            return None
        open_ = self.models[self.models["open_weights"].fillna(False).astype(bool)]["model"]
        return np.isin(models, open_.to_numpy())


# ---- helpers ----------------------------------------------------------------------------
def _answer_codes(answers: np.ndarray, benchmarks: np.ndarray, o: pd.DataFrame) -> tuple[np.ndarray, str | None]:
    """Answer codes, each benchmark's rows compared with its own grader (codes are compared
    within a query only); the grader, if every benchmark has the same one."""
    from herd.collect.grading import answer_codes, infer_grader

    codes = np.full(answers.shape, -1, dtype=np.int32)
    graders = set()
    for b in np.unique(benchmarks):
        rows = benchmarks == b
        grader = infer_grader(str(b), o.loc[o["benchmark"] == b, "answer"].dropna().to_numpy())
        graders.add(grader)
        codes[rows] = answer_codes(answers[rows], grader)
    return codes, (graders.pop() if len(graders) == 1 else None)


def _tasks(q: pd.DataFrame) -> np.ndarray | None:
    """Each query's task: its benchmark when several are pooled, else its category, if any."""
    if q["benchmark"].nunique() > 1:
        return q["benchmark"].astype(str).to_numpy(object)
    if "category" in q and q["category"].notna().any():
        return np.array([None if c is None or c != c else str(c) for c in q["category"]], dtype=object)
    return None


def _find_table(directory: Path, stem: str) -> Path | None:
    for suffix in TABLE_SUFFIXES:
        p = directory / f"{stem}{suffix}"
        if p.exists():
            return p
    return None


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype={"qid": str, "model": str, "source": str, "benchmark": str})
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype={"qid": str})
    except Exception as e:  # the reader's own message, but with the file named
        raise HerdDataError(f"{path}: cannot be read as {path.suffix[1:]}: {e}") from None
    raise HerdDataError(f"{path}: unknown file type {path.suffix!r}; use .parquet, .csv or .jsonl")


def split_long(long: pd.DataFrame, name: str, default_source: str = "") -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per (query, model) with the query's text: split into queries and outcomes.
    ``name`` is the file's, for errors; a question must have one text."""
    long = long.copy()
    if "source" not in long:
        long["source"] = default_source
    if "benchmark" not in long:
        long["benchmark"] = "all"
    _check_columns(long, OUTCOME_REQUIRED + ["text"], name, "a long file has one row per (query, model)")
    texts = long.drop_duplicates(QUERY_KEY + ["text"])
    dup = texts.duplicated(QUERY_KEY)
    if dup.any():
        raise HerdDataError(f"{name}: {int(dup.sum())} question(s) with more than one text, {_first(texts, dup)}; "
                            "keep one text per (source, benchmark, qid)")
    qcols = [c for c in QUERY_REQUIRED + ["gold", "category"] if c in long]
    queries = long[qcols].drop_duplicates(QUERY_KEY).reset_index(drop=True)
    outcomes = long.drop(columns=[c for c in ("text", "gold", "category") if c in long])
    return queries, outcomes


def _check_columns(df: pd.DataFrame, required: list[str], name: str, hint: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise HerdDataError(
            f"{name}: missing column(s) {missing}; it has {list(df.columns)}. "
            f"Add them ({hint}; required: {required})."
        )


def _first(df: pd.DataFrame, mask) -> str:
    """Describe the first offending row: its 1-based row number and key."""
    i = int(np.flatnonzero(np.asarray(mask))[0])
    key = ", ".join(f"{c}={df.iloc[i][c]}" for c in QUERY_KEY + ["model"] if c in df.columns)
    return f"first at row {i + 1}: {key}"


def validate(queries, outcomes, q_name, o_name, min_outcomes):
    """The checks every outcome table passes, loaded or imported: returns the tables with
    normalized types, or raises HerdDataError naming the file, the row and the fix."""
    _check_columns(queries, QUERY_REQUIRED, q_name, "one row per question")
    _check_columns(outcomes, OUTCOME_REQUIRED, o_name, "one row per (question, model)")
    queries = queries.reset_index(drop=True).copy()
    outcomes = outcomes.reset_index(drop=True).copy()
    for df in (queries, outcomes):
        for c in QUERY_KEY:
            df[c] = df[c].astype(str)
    outcomes["model"] = outcomes["model"].astype(str)
    queries["text"] = queries["text"].fillna("").astype(str)

    dup = queries.duplicated(QUERY_KEY, keep="first")
    if dup.any():
        raise HerdDataError(
            f"{q_name}: {int(dup.sum())} duplicate (source, benchmark, qid) row(s), {_first(queries, dup)}; "
            "keep one row per question"
        )
    correct = pd.to_numeric(outcomes["correct"], errors="coerce")
    bad = correct.isna() & outcomes["correct"].notna()
    if bad.any():
        raise HerdDataError(f"{o_name}: column 'correct' has {int(bad.sum())} non-numeric value(s), {_first(outcomes, bad)}")
    bad = correct.isna()
    if bad.any():
        raise HerdDataError(
            f"{o_name}: column 'correct' is empty in {int(bad.sum())} row(s), {_first(outcomes, bad)}; "
            "drop rows with no outcome"
        )
    bad = (correct < 0) | (correct > 1)
    if bad.any():
        raise HerdDataError(
            f"{o_name}: column 'correct' has {int(bad.sum())} value(s) outside [0, 1], {_first(outcomes, bad)}; "
            "use 1/0 or a score scaled to [0, 1]"
        )
    outcomes["correct"] = correct.astype("float64")
    dup = outcomes.duplicated(OUTCOME_REQUIRED[:4], keep="first")
    if dup.any():
        raise HerdDataError(
            f"{o_name}: {int(dup.sum())} duplicate (source, benchmark, qid, model) row(s), {_first(outcomes, dup)}; "
            "keep one outcome per question and model (average repeated samples first)"
        )
    known = pd.MultiIndex.from_frame(queries[QUERY_KEY])
    unknown = ~pd.MultiIndex.from_frame(outcomes[QUERY_KEY]).isin(known)
    if unknown.any():
        raise HerdDataError(
            f"{o_name}: {int(unknown.sum())} outcome(s) for queries not in {q_name}, {_first(outcomes, unknown)}; "
            "add those questions or drop their outcomes"
        )
    counts = outcomes.groupby(["source", "benchmark", "model"]).size()
    few = counts[counts < min_outcomes]
    if len(few):
        (src, bench, model), n = few.index[0], int(few.iloc[0])
        raise HerdDataError(
            f"{o_name}: model {model!r} has only {n} outcome(s) on {src}/{bench} (minimum {min_outcomes}); "
            f"{len(few)} (model, benchmark) pair(s) are this thin. Leave the model out (--models) or "
            "lower --min-outcomes"
        )
    for col, dtype in OUTCOME_OPTIONAL.items():
        outcomes[col] = pd.to_numeric(outcomes[col], errors="coerce").astype(dtype) if col in outcomes else pd.Series(
            pd.NA if dtype == "Int64" else np.nan, index=outcomes.index, dtype=dtype
        )
    bad = (outcomes["agreement"] < 0) | (outcomes["agreement"] > 1)
    if bad.any():
        raise HerdDataError(f"{o_name}: column 'agreement' has {int(bad.sum())} value(s) outside [0, 1], {_first(outcomes, bad)}; "
                            "it is the share of a model's samples that agree with its majority answer")
    bad = (outcomes["propensity"] <= 0) | (outcomes["propensity"] > 1)
    if bad.any():
        raise HerdDataError(f"{o_name}: column 'propensity' has {int(bad.sum())} value(s) outside (0, 1], {_first(outcomes, bad)}; "
                            "it is the probability the serving policy gave the model that answered")
    return queries, outcomes


def _kfold(keys: pd.DataFrame, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    n = len(keys)
    if n_splits < 2 or n_splits > n:
        raise HerdDataError(f"need 2 <= folds <= number of queries ({n}), got {n_splits}")
    groups = (keys["source"].astype(str) + "/" + keys["benchmark"].astype(str)).to_numpy()
    _, counts = np.unique(groups, return_counts=True)
    x = np.zeros(n)
    if len(counts) > 1 and counts.min() >= n_splits:
        splitter = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(x, groups)
    else:
        splitter = KFold(n_splits, shuffle=True, random_state=seed).split(x)
    return [(np.sort(tr), np.sort(te)) for tr, te in splitter]
