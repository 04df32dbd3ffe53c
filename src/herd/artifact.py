"""A trained router as a directory: ``manifest.json`` (what it is, what it was trained on, how it
validated) beside ``state.joblib`` (the fitted router and policy).

The state is a pickle: load artifacts only from sources you trust. Its SHA-256 is in the
manifest, so an edited or truncated state file is refused rather than half-loaded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from herd import __version__, metrics
from herd.data import Matrix
from herd.errors import HerdError
from herd.policies import BUDGET_WEIGHTS, Budget, CostAware, Decision, Policy, policy_inputs
from herd.routers import ROUTERS, Router
from herd.tuning import fit_in_fold

MANIFEST = "manifest.json"
STATE = "state.joblib"
FORMAT = 3
# 3: TF-IDF features are herd's own (herd.tfidf); format 2 routers (scikit-learn's vectorizer) still load.
READABLE_FORMATS = (2, 3)


class ArtifactError(HerdError, ValueError):
    """A router directory that cannot be used; the message says what does not match."""


@dataclass(repr=False)
class TrainedRouter:
    """A fitted router with its fitted policy and the per-model mean costs the policy uses.
    ``route(texts)`` gives (n_queries, n_models) scores and the policy's ``Decision``."""

    router: Router
    policy: Policy
    models: list[str]
    model_costs: np.ndarray
    manifest: dict
    train_keys: frozenset = frozenset()  # "source/benchmark/qid" of every training query
    # Out-of-fold scores and outcomes of the training queries: what any other policy is tuned on.
    validation_scores: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    validation_observed: dict[str, np.ndarray] | None = None  # what the answers showed, for post-call policies
    validation_answers: np.ndarray | None = None  # answer codes (Matrix.answer_codes), for agreement cascades
    owned: np.ndarray | None = None  # per model: open weights
    validation_tasks: np.ndarray | None = None  # each training query's task, for policies with per-task anchors

    def route(self, texts: list[str], tasks: list[str | None] | None = None) -> tuple[np.ndarray, Decision]:
        """Scores and decisions for queries; ``tasks`` (one per query, None where unknown) for
        routers and policies that read the task."""
        scores = self.router.predict_scores(texts, tasks)
        return scores, self.policy.decide(scores, self.models, self.model_costs,
                                          **policy_inputs(self.policy, tasks=tasks))

    def __repr__(self) -> str:
        return (f"TrainedRouter({self.manifest['router']['name']} + {self.policy.label}, {len(self.models)} models, "
                f"trained on {self.manifest['training_data']['n_queries']} queries)")

    def fit_policy(self, policy):
        """A copy of ``policy`` tuned on this router's validation scores (policies without
        ``fit`` are returned as they are)."""
        if not policy.needs_fit:
            return policy
        if self.validation_scores is None:
            raise ArtifactError(f"policy {policy.label!r} is tuned on validation scores, which this router directory "
                                "does not keep; retrain it with this herd's `herd train`")
        if policy.reads_answers and self.validation_answers is None:
            raise ArtifactError(f"policy {policy.label!r} is chosen on recorded answers, which this router's training "
                                "data did not have")
        return copy.deepcopy(policy).fit(self.validation_scores, self.validation_labels, self.model_costs, self.models,
                                         **policy_inputs(policy, self.validation_observed, self.validation_answers,
                                                         self.owned, self.validation_tasks, fit=True))


def train(router_name: str, router: Router, policy, m: Matrix, *, seed: int = 0, data_origin: str = "",
          sample_weight: np.ndarray | None = None) -> TrainedRouter:
    """Fit a copy of ``router`` on all of ``m``, tune ``policy`` on out-of-fold scores, and validate both.

    ``sample_weight`` (n_queries, n_models): the router's weights per outcome (see
    ``Router.fit``), for benchmark data with live feedback added. The policy is then tuned and
    validated on the queries with every model's outcome (the benchmark's): a policy compares
    models on one query, which feedback that observed one model cannot show."""
    policy = copy.deepcopy(policy)
    if policy.reads_answers:
        if m.answer_codes is None:
            raise ArtifactError(f"policy {policy.label!r} compares recorded answers; this data has none "
                                "(an 'answer' column in the outcomes)")
        if policy.grader is None and m.grader is None:
            raise ArtifactError(f"policy {policy.label!r}: the benchmarks trained on grade answers differently; "
                                "train an agreement cascade on one benchmark (or benchmarks of one grader)")
        policy.grader = policy.grader or m.grader  # the gateway extracts answers as this data was graded
    fold = fit_in_fold(router, policy, m, seed, sample_weight=sample_weight, validate=True)
    router, policy, trained_on = fold.router, fold.policy, m
    m, oof = fold.tuned_on, fold.validation  # the queries with every model's outcome, where weights leave some out
    weighted = trained_on.n_queries - m.n_queries
    costs = metrics.mean_cost_per_model(m.cost)
    y = m.labels
    chosen = policy.choose(oof, costs, **policy_inputs(policy, m.observed, m.answer_codes, tasks=m.tasks))
    best = metrics.best_model(y, m.cost)
    acc = metrics.accuracy(metrics.picked(y, chosen))
    oracle = metrics.oracle_accuracy(y)
    validation = {
        "method": ("the training queries' recorded answers (the cascade was chosen on them: optimistic)"
                   if policy.reads_answers else
                   "out-of-fold scores on the training queries (3-fold inner CV)"
                   + (", those with every model's outcome" if weighted else "")),
        "accuracy": acc,
        "best_single": m.models[best],
        "best_single_accuracy": float(y[:, best].mean()),
        "best_single_cost_usd": metrics.mean_known(m.cost[:, best])[0],
        "oracle": oracle,
        "gap_closed": metrics.gap_closed(acc, float(y[:, best].mean()), oracle),
        "cost_usd": metrics.mean_known(metrics.picked(m.cost, chosen) if (called := policy.called(chosen, len(m.models)))
                                       is None else metrics.summed(m.cost, called))[0],
        # What the policy does: each model's share of the validation queries, most used first.
        "shares": {m.models[j]: float(np.mean(chosen == j)) for j in np.argsort(-np.bincount(chosen, minlength=len(m.models)))
                   if np.any(chosen == j)},
    }
    if policy.picks_from_scores:
        # a cheaper policy on the same scores (none is looked for where answers decide)
        validation["cheaper"] = cheaper_option(oof, y, costs, m.models, chosen, best)
    manifest = {
        "format": FORMAT,
        "herd_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "router": {"name": router_name, "class": type(router).__name__, "params": _jsonable(router.get_params()),
                   "fitted": router.summary() if hasattr(router, "summary") else None},
        "policy": {"name": policy.name, "spec": policy.label, "repr": repr(policy),
                   "fitted": policy.summary()},
        "features": getattr(router, "features", None),
        "embedding_engine": router.embedding_engine(),  # the router embeds with it wherever it is served
        "models": list(m.models),
        "model_costs_usd": [None if np.isnan(c) else float(c) for c in costs],
        "training_data": {
            "origin": data_origin,
            "groups": sorted({f"{s}/{b}" for s, b in zip(trained_on.keys["source"], trained_on.keys["benchmark"])}),
            "n_queries": trained_on.n_queries,
            "fingerprint": trained_on.fingerprint(),
            **({"partial_queries": weighted} if sample_weight is not None else {}),
        },
        "validation": validation,
    }
    return TrainedRouter(router, policy, list(m.models), costs, manifest, query_keys(trained_on),
                         np.asarray(oof, np.float32), np.asarray(y, np.float32),
                         None if m.observed is None else {k: v.astype(np.float32) for k, v in m.observed.items()},
                         m.answer_codes, m.owned, m.tasks)


# Points of validation accuracy a cheaper policy may give up, tried in order, and the most of
# the trained policy's cost it may then spend to count as cheaper.
CHEAPER_WITHIN_PT = (0.5, 1.0, 2.0)
CHEAPER_AT_MOST = 0.8


def cheaper_option(scores: np.ndarray, labels: np.ndarray, costs: np.ndarray, models: list[str], chosen: np.ndarray,
                   best: int) -> dict | None:
    """A cheaper policy read off the validation cost curve: on the out-of-fold ``scores``
    (n_queries, n_models) and ``labels`` of the training queries, where the trained policy
    made the (n_queries,) ``chosen``, the cheapest cost-aware choice within 0.5 (else 1, else
    2) points of its accuracy that spends at most 80% of what it spends, as a ``budget:USD``
    spec calibrated on the same scores, with its accuracy and cost there and the best single
    model's cost. None where costs are unknown or no such point exists."""
    if np.isnan(costs).all():
        return None
    known = np.where(np.isnan(costs), np.nanmax(costs), costs)  # as Budget counts an unknown price
    rows = np.arange(len(labels))
    accuracy, spent = float(labels[rows, chosen].mean()), float(known[chosen].mean())
    if spent <= 0 or known[best] <= 0:
        return None
    curve = [(float(known[c].mean()), float(labels[rows, c].mean()))
             for c in (CostAware(w).choose(scores, costs) for w in BUDGET_WEIGHTS)]
    for within in CHEAPER_WITHIN_PT:
        ok = [(c, a) for c, a in curve if a >= accuracy - within / 100 and c <= CHEAPER_AT_MOST * spent]
        if ok:
            target = _two_digits_up(min(ok)[0])  # rounded up: the point stays within the budget
            budget = Budget(max_cost=target).fit(scores, labels, costs, models)
            choice = budget.choose(scores, costs)
            return {"spec": budget.label, "accuracy": float(labels[rows, choice].mean()),
                    "cost_usd": float(known[choice].mean()), "best_single_cost_usd": float(known[best]),
                    "within_pt": within}
    return None


def _two_digits_up(x: float) -> float:
    if x <= 0:
        return 0.0
    unit = 10.0 ** (math.floor(math.log10(x)) - 1)
    return float(f"{math.ceil(x / unit - 1e-9) * unit:.2g}")


def query_keys(m: Matrix) -> frozenset:
    return frozenset(m.keys["source"] + "/" + m.keys["benchmark"] + "/" + m.keys["qid"])


def save(trained: TrainedRouter, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = d / STATE
    joblib.dump({"router": trained.router, "policy": trained.policy, "train_keys": trained.train_keys,
                 "validation_scores": trained.validation_scores, "validation_labels": trained.validation_labels,
                 "validation_observed": trained.validation_observed, "validation_answers": trained.validation_answers,
                 "owned": trained.owned, "validation_tasks": trained.validation_tasks}, state)
    manifest = dict(trained.manifest, state_sha256=_sha256(state))
    (d / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return d


def load(directory: str | Path, models: list[str] | None = None) -> TrainedRouter:
    """Load and check a router directory; ``models``, if given, must include the router's models."""
    d = Path(directory)
    mf, state = d / MANIFEST, d / STATE
    if not mf.exists():
        raise ArtifactError(f"{d}: no {MANIFEST}; is this a directory written by `herd train`?")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mf}: not valid JSON ({e})") from None
    missing = [k for k in ("format", "herd_version", "router", "policy", "models", "model_costs_usd", "state_sha256") if k not in manifest]
    if missing:
        raise ArtifactError(f"{mf}: missing field(s) {missing}")
    if manifest["format"] not in READABLE_FORMATS:
        raise ArtifactError(f"{mf}: artifact format {manifest['format']}, this herd reads formats "
                            f"{', '.join(map(str, READABLE_FORMATS))}; retrain with `herd train`")
    if _minor(manifest["herd_version"]) != _minor(__version__):
        raise ArtifactError(f"{mf}: trained with herd {manifest['herd_version']}, this is herd {__version__}; "
                            "retrain with `herd train`")
    if manifest["router"].get("name") not in ROUTERS:
        raise ArtifactError(f"{mf}: unknown router {manifest['router'].get('name')!r}")
    if not state.exists():
        raise ArtifactError(f"{d}: {STATE} is missing")
    if _sha256(state) != manifest["state_sha256"]:
        raise ArtifactError(f"{state}: contents do not match the manifest's state_sha256 (edited, truncated or from another run)")
    if models is not None:
        absent = [x for x in manifest["models"] if x not in set(models)]
        if absent:
            raise ArtifactError(f"{d}: the router scores model(s) {absent}, which the pool does not have; "
                                f"pool: {sorted(models)}")
    obj = joblib.load(state)
    router, policy = obj["router"], obj["policy"]
    if list(router.models_) != manifest["models"]:
        raise ArtifactError(f"{state}: the fitted router's models differ from the manifest's")
    costs = np.array([np.nan if c is None else c for c in manifest["model_costs_usd"]], float)
    return TrainedRouter(router, policy, manifest["models"], costs, manifest, obj.get("train_keys", frozenset()),
                         obj.get("validation_scores"), obj.get("validation_labels"), obj.get("validation_observed"),
                         obj.get("validation_answers"), obj.get("owned"), obj.get("validation_tasks"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _jsonable(params: dict) -> dict:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v) for k, v in params.items()}
