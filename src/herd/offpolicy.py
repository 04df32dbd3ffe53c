"""Off-policy evaluation: what a candidate router would have scored and spent on logged live
traffic, estimated from the choices the serving policy made and the feedback they got.

Each logged request i has the model that answered (action a_i), its feedback score r_i and
cost, and the probability p_i the serving policy gave that model. A candidate picks c_i.

- IPS: mean of 1[c_i = a_i] r_i / p_i (unbiased where the candidate's picks have support).
- SNIPS: the same, divided by the mean of 1[c_i = a_i] / p_i (self-normalised: less variance,
  a little bias).
- DR (doubly robust): mean of q(x_i, c_i) + 1[c_i = a_i] (r_i - q(x_i, a_i)) / p_i, with q a
  reward model (a weighted logistic router over TF-IDF) cross-fitted: fitted on the other
  folds' logged rows, predicting the held-out ones. For cost, q is each model's mean logged
  cost on the other folds.

Intervals are 95% normal approximations on the per-row terms (SNIPS by the delta method),
valid when enough rows match: each estimate also gives the effective sample size of the
matching rows, sum(w)^2 / sum(w^2) with w = 1[c = a] / p, and checks that w averages 1 (its
expectation). A candidate fails either check: too little exploration to tell.

Support: a candidate's pick c_i can be evaluated on row i only if the logging policy could
have picked it there: c_i is in the row's logged ``allowed`` set, and either c_i = a_i or the
policy explored (p_i < 1: exploration spreads over the whole allowed set). Estimates are over
the supported rows; their share is the support coverage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import clone

from herd.choicelog import feedback_weights
from herd.data import HerdDataError, Matrix, Outcomes
from herd.errors import UsageError
from herd.policies import policy_inputs
from herd.routers import Router, make_router

Z95 = 1.959964
# Below this many effective matching rows the normal approximation behind the intervals (and
# any estimate) is not trusted: the usual rule of thumb for a sample mean's normal interval.
MIN_ESS = 30
# The matching rows' weights 1[c = a] / p average 1 in expectation whatever the candidate. When
# their mean is far from 1, the explored picks the candidate relies on have not (yet) shown up
# in the log, and every estimate, with its interval, is off. Checked at 99.9% (z = 3.29): a
# detector of gross failure that a sound log seldom trips.
Z_WEIGHTS = 3.290527
REWARD_MODEL = "logistic"


@dataclass
class Estimate:
    value: float
    low: float
    high: float

    @classmethod
    def of_terms(cls, terms: np.ndarray, z: float = Z95) -> Estimate:
        """Mean of per-row terms with its normal interval (95% by default)."""
        mean = float(np.mean(terms))
        half = z * float(np.std(terms, ddof=1)) / np.sqrt(len(terms)) if len(terms) > 1 else float("inf")
        return cls(mean, mean - half, mean + half)

    def to_json(self) -> dict:
        # An interval of one row is unbounded: null, not JSON's non-standard Infinity.
        return {k: v if np.isfinite(v) else None for k, v in (("value", self.value), ("low", self.low),
                                                                ("high", self.high))}


@dataclass
class LoggedTraffic:
    """Imported live traffic (``herd import choice-log``) as off-policy estimation reads it: one
    row per request; ``models`` are the columns of ``allowed`` and of the candidates' picks."""

    matrix: Matrix  # the requests' texts and observed outcomes (one model per row)
    models: list[str]
    action: np.ndarray  # (n,) index of the model that answered
    reward: np.ndarray  # (n,) feedback score in [0, 1]
    cost: np.ndarray  # (n,) logged cost, NaN unknown
    propensity: np.ndarray  # (n,)
    allowed: np.ndarray  # (n, n_models) bool
    explored: np.ndarray  # (n,) bool
    logging_policy: str = ""

    @property
    def n(self) -> int:
        return len(self.action)

    @classmethod
    def from_outcomes(cls, data: Outcomes) -> LoggedTraffic:
        o = data.outcomes
        missing = [c for c in ("propensity", "allowed") if c not in o or o[c].isna().all()]
        if missing:
            raise HerdDataError(f"{data.origin}: no {' or '.join(missing)} column: off-policy evaluation reads live "
                                "traffic imported with `herd import choice-log`")
        bad = o["propensity"].isna() | o["allowed"].isna()
        if bad.any():
            raise HerdDataError(f"{data.origin}: {int(bad.sum())} outcome(s) without propensity or allowed models, "
                                f"first at qid={o.loc[bad, 'qid'].iloc[0]}")
        if o.duplicated(["source", "benchmark", "qid"]).any():
            raise HerdDataError(f"{data.origin}: more than one model's outcome for a request; off-policy evaluation "
                                "reads one logged action per request")
        allowed_lists = []
        for qid, text in zip(o["qid"], o["allowed"]):
            try:
                names = json.loads(text)
            except (TypeError, json.JSONDecodeError):
                names = None
            if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
                raise HerdDataError(f"{data.origin}: 'allowed' of qid={qid} is not a JSON list of model names")
            allowed_lists.append(names)
        models = sorted({*o["model"], *(x for names in allowed_lists for x in names)})
        m = data.matrix(models)
        row = {key: i for i, key in enumerate(zip(m.keys["source"], m.keys["benchmark"], m.keys["qid"]))}
        order = np.array([row[key] for key in zip(o["source"], o["benchmark"], o["qid"])])
        n = m.n_queries
        action, reward, cost, prop = (np.empty(n, int), np.empty(n), np.empty(n), np.empty(n))
        allowed, explored = np.zeros((n, len(models)), bool), np.zeros(n, bool)
        col = {name: j for j, name in enumerate(models)}
        action[order] = [col[x] for x in o["model"]]
        reward[order] = o["correct"].to_numpy(float)
        cost[order] = o["cost_usd"].to_numpy(float)
        prop[order] = o["propensity"].to_numpy(float)
        for i, names in zip(order, allowed_lists):
            allowed[i, [col[x] for x in names]] = True
        if "explored" in o:
            explored[order] = o["explored"].fillna(False).astype(bool).to_numpy()
        allowed[np.arange(n), action] = True  # the model that answered was allowed, whatever was logged
        policies = sorted({str(p) for p in o["logging_policy"].dropna()}) if "logging_policy" in o else []
        return cls(m, models, action, reward, cost, prop, allowed, explored, ", ".join(p for p in policies if p))

    def support(self, choice: np.ndarray) -> np.ndarray:
        """(n,) whether the logging policy could have picked ``choice[i]`` on row i (-1: a model
        the log never saw, never)."""
        picked = (choice >= 0) & self.allowed[np.arange(self.n), np.maximum(choice, 0)]
        return picked & ((choice == self.action) | (self.propensity < 1))

    def filled_cost(self, train: np.ndarray) -> np.ndarray | None:
        """(n_models,) each model's mean logged cost on rows ``train``; None if no cost is known."""
        c = np.full(len(self.models), np.nan)
        for j in range(len(self.models)):
            rows = train & (self.action == j) & ~np.isnan(self.cost)
            if rows.any():
                c[j] = self.cost[rows].mean()
        return None if np.isnan(c).all() else c


@dataclass
class CandidateResult:
    name: str
    coverage: float  # share of requests where the candidate's pick has support
    matched: int  # supported rows where the candidate picked the logged model
    ess: float  # effective sample size of the matching rows
    weights: Estimate | None = None  # mean of 1[c = a] / p over the supported rows, 99.9% interval
    score: dict[str, Estimate] = field(default_factory=dict)  # "ips", "snips", "dr"
    cost: dict[str, Estimate] = field(default_factory=dict)
    difference: Estimate | None = None  # DR score minus the logging policy's, paired per row
    shares: dict[str, float] = field(default_factory=dict)  # the candidate's picks per model
    verdict: str = ""

    @property
    def weights_off(self) -> bool:
        w = self.weights
        return w is not None and not w.low - 1e-9 <= 1.0 <= w.high + 1e-9

    @property
    def too_thin(self) -> bool:
        return self.ess < MIN_ESS or self.weights_off

    def to_json(self) -> dict:
        return {"name": self.name, "coverage": self.coverage, "matched": self.matched, "ess": self.ess,
                "mean_weight": None if self.weights is None else self.weights.to_json(),
                "too_thin": self.too_thin, "verdict": self.verdict,
                "score": {k: v.to_json() for k, v in self.score.items()},
                "cost_usd": {k: v.to_json() for k, v in self.cost.items()},
                "score_difference_dr": None if self.difference is None else self.difference.to_json(),
                "shares": self.shares}


@dataclass
class OffPolicyResult:
    origin: str
    n: int
    models: list[str]
    logging_policy: str
    explored: int  # rows the logging policy explored on
    logged_score: Estimate
    logged_cost: Estimate | None
    candidates: list[CandidateResult]
    folds: int
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"data": self.origin, "requests": self.n, "models": self.models, "logging_policy": self.logging_policy,
                "explored": self.explored, "folds": self.folds, "min_ess": MIN_ESS,
                "interval": "95% normal approximation on per-row terms (SNIPS: delta method)",
                "logged": {"score": self.logged_score.to_json(),
                           "cost_usd": None if self.logged_cost is None else self.logged_cost.to_json()},
                "candidates": [c.to_json() for c in self.candidates], "notes": self.notes}


def estimate(log: LoggedTraffic, choice: np.ndarray, q_score: np.ndarray, q_cost: np.ndarray | None,
             name: str = "candidate") -> CandidateResult:
    """IPS, SNIPS and DR estimates of a candidate's mean score and cost from its (n,) model
    indices ``choice``; ``q_score`` (n, n_models) cross-fitted predicted scores, ``q_cost`` the
    same for cost (None: costs unknown)."""
    choice = np.asarray(choice, int)
    ok = log.support(choice)
    res = CandidateResult(name, float(ok.mean()), 0, 0.0,
                          shares={log.models[j] if j >= 0 else "(not in the log)": float(np.mean(choice == j))
                                  for j in np.unique(choice)})
    if not ok.any():
        res.verdict = ("cannot be evaluated: on no request could the logging policy have picked what it picks "
                       "(turn exploration on, e.g. explore:0.1, and log again)")
        return res
    rows = np.flatnonzero(ok)
    c, a, p = choice[rows], log.action[rows], log.propensity[rows]
    w = (c == a) / p
    res.matched = int((c == a).sum())
    res.ess = float(w.sum() ** 2 / (w ** 2).sum()) if res.matched else 0.0
    res.weights = Estimate.of_terms(w, Z_WEIGHTS)

    def three(r: np.ndarray, q: np.ndarray) -> dict[str, Estimate]:
        out = {"ips": Estimate.of_terms(w * r)}
        if w.sum() > 0:
            v = float((w * r).sum() / w.sum())
            se = np.sqrt(np.mean((w * (r - v)) ** 2) / len(rows)) / np.mean(w)
            out["snips"] = Estimate(v, v - Z95 * se, v + Z95 * se)
        out["dr"] = Estimate.of_terms(q[rows, c] + w * (r - q[rows, a]))
        return out

    res.score = three(log.reward[rows], q_score)
    dr_terms = q_score[rows, c] + w * (log.reward[rows] - q_score[rows, a])
    res.difference = Estimate.of_terms(dr_terms - log.reward[rows])
    if q_cost is not None and not np.isnan(q_cost[rows]).any():  # NaN: a fold without a logged cost
        # An unknown logged cost is read as the model's mean (the direct model), not as free.
        cost = np.where(np.isnan(log.cost), q_cost[np.arange(log.n), log.action], log.cost)
        res.cost = three(cost[rows], q_cost)
    res.verdict = _verdict(res)
    return res


def _verdict(res: CandidateResult) -> str:
    partial = (f"; covers {res.coverage:.0%} of requests (elsewhere the logging policy could not have picked what "
               "it picks)" if res.coverage < 1 else "")
    if res.ess < MIN_ESS:
        return (f"too little exploration to tell: {res.matched} matching request(s), effective sample size "
                f"{res.ess:.0f} (under {MIN_ESS}){partial}")
    if res.weights_off:
        return (f"too little exploration to tell: the matching requests' inverse propensities average "
                f"{res.weights.value:.2f} where 1 is expected, so the explored choices it relies on are too few "
                f"in the log{partial}")
    d = res.difference
    if d.low > 0:
        said = f"scores higher than the logging policy (DR {d.value:+.3f}, 95% CI {d.low:+.3f} to {d.high:+.3f})"
    elif d.high < 0:
        said = f"scores lower than the logging policy (DR {d.value:+.3f}, 95% CI {d.low:+.3f} to {d.high:+.3f})"
    else:
        said = (f"not told apart from the logging policy: the difference's 95% CI ({d.low:+.3f} to {d.high:+.3f}) "
                "spans 0")
    return said + partial


def reward_model(log: LoggedTraffic, splits, seed: int = 0) -> np.ndarray:
    """(n, n_models) cross-fitted predicted scores: a weighted logistic router fitted on the other
    folds' logged rows (inverse-propensity weights, see ``feedback_weights``)."""
    out = np.empty((log.n, len(log.models)))
    proto = make_router(REWARD_MODEL, seed=seed)
    for tr, te in splits:
        out[te] = fit_on_log(proto, log, tr).predict_scores([log.matrix.texts[i] for i in te])
    return out


def fit_on_log(proto: Router, log: LoggedTraffic, rows: np.ndarray) -> Router:
    """A copy of ``proto`` fitted on the logged requests ``rows``: each model on the answers it
    gave, inverse-propensity weighted (``feedback_weights``); scores for every log model."""
    train = log.matrix.take(rows)
    w = feedback_weights(train, np.ones(train.n_queries, bool), 1.0)
    unseen = w.sum(axis=0) <= 0
    if unseen.any():  # a model never logged in these folds: the router is fitted on the others
        keep = np.flatnonzero(~unseen)
        router = clone(proto).fit(train.columns([train.models[j] for j in keep]), sample_weight=w[:, keep])
        return _Padded(router, keep, len(log.models))
    return clone(proto).fit(train, sample_weight=w)


class _Padded:
    """A router fitted on some of the models; the others score 0 (nothing logged of them: a
    candidate picking them has no support there anyway)."""

    def __init__(self, router: Router, cols: np.ndarray, n_models: int):
        self.router, self.cols, self.n_models = router, cols, n_models

    def predict_scores(self, texts, tasks=None) -> np.ndarray:
        out = np.zeros((len(texts), self.n_models))
        out[:, self.cols] = self.router.predict_scores(texts, tasks)
        return out


def asks_several(policy) -> bool:
    """Whether a policy calls more than one model per request or reads answers before one stands
    (checked and agreement cascades): a log of one answer per request cannot score it."""
    return not policy.picks_from_scores


def refuse_several(trained) -> None:
    """A trained router whose policy asks several models per request is refused, saying why."""
    if asks_several(trained.policy):
        raise UsageError(f"--candidate: {trained.manifest['router']['name']} + {trained.policy.label} asks several "
                         "models per request and reads their answers, which a log of one answer per request cannot "
                         "score; give a router whose policy picks one model from its scores (e.g. argmax, "
                         "cost-aware:W, cascade)")


def allowed_choice(policy, scores: np.ndarray, costs: np.ndarray | None, allowed: np.ndarray) -> np.ndarray:
    """(n,) a policy's picks among each request's ``allowed`` models ((n, k) mask), as the gateway
    picks: the others' scores are -inf, and where the policy still picks one not allowed (e.g. a
    cascade's last model), the allowed one most likely right (cheaper on ties) answers. Without
    this, two candidates the gateway would serve alike are told apart by picks it would never
    make. -1 on a request where no model scored is allowed."""
    choice = np.full(len(scores), -1)
    some = allowed.any(axis=1)
    if not some.any():
        return choice
    ok = allowed[some]
    masked = np.where(ok, scores[some], -np.inf)
    picked = np.asarray(policy.choose(masked, costs, **policy_inputs(policy)), int)
    price = np.full(ok.shape[1], np.inf) if costs is None else np.nan_to_num(np.asarray(costs, float), nan=np.inf)
    top = masked >= masked.max(axis=1, keepdims=True) - 1e-12
    key = np.where(top, price[None, :], np.inf)
    best = np.where(np.isfinite(key.min(axis=1)), key.argmin(axis=1), top.argmax(axis=1))
    choice[some] = np.where(ok[np.arange(len(picked)), picked], picked, best)
    return choice


def crossfit_choices(log: LoggedTraffic, proto: Router, policy, splits, seed: int = 0) -> np.ndarray:
    """(n,) a router + policy's picks among each request's allowed models, each fold decided by a
    copy fitted on the other folds' logged rows. Policies tuned on full outcome tables (safe,
    budget, cascades) cannot be."""
    if policy.needs_fit or asks_several(policy):
        raise UsageError(f"policy {policy.label!r} is tuned on complete outcome tables, which a log of one model per "
                         "request is not; off the log itself give argmax, cost-aware:W, random-likely or sorted, or "
                         "train it on benchmark data and pass the router directory as --candidate")
    if not proto.takes_weights:
        from herd.routers import weighted_names

        raise UsageError(f"router {type(proto).__name__} cannot fit a log (weighted, one model per request); use "
                         f"one of: {', '.join(weighted_names())}")
    choice = np.empty(log.n, int)
    for tr, te in splits:
        router = fit_on_log(proto, log, tr)
        mask = np.zeros(log.n, bool)
        mask[tr] = True
        costs = log.filled_cost(mask)
        scores = router.predict_scores([log.matrix.texts[i] for i in te])
        choice[te] = allowed_choice(policy, scores, costs, log.allowed[te])
    return choice


def trained_choices(log: LoggedTraffic, trained) -> tuple[np.ndarray, list[str]]:
    """(n,) a trained router's picks among each request's allowed models, as indices into
    ``log.models`` (-1: none of the models it scores was allowed), and notes."""
    refuse_several(trained)
    col = {name: j for j, name in enumerate(log.models)}
    known = [j for j, name in enumerate(trained.models) if name in col]
    allowed = np.zeros((log.n, len(trained.models)), bool)
    allowed[:, known] = log.allowed[:, [col[trained.models[j]] for j in known]]
    scores = trained.router.predict_scores(log.matrix.texts)
    picked = allowed_choice(trained.policy, scores, trained.model_costs, allowed)
    name, notes = trained.manifest["router"]["name"], []
    unknown = [m for m in trained.models if m not in col]
    if unknown:
        notes.append(f"{name} scores {', '.join(unknown)}, never in the log: evaluated as served without them")
    if (picked < 0).any():
        notes.append(f"{name}: on {int((picked < 0).sum())} request(s) none of the models it scores was allowed: "
                     "no support there")
    return np.array([col[trained.models[j]] if j >= 0 else -1 for j in picked]), notes


def evaluate_log(data: Outcomes, candidates: dict[str, object], *, folds: int = 5, seed: int = 0,
                 progress=None) -> OffPolicyResult:
    """Off-policy estimates for each candidate, beside the logging policy's observed mean.
    ``candidates``: name -> (router prototype, policy) to cross-fit on the log, or a trained
    router (``herd.artifact.TrainedRouter``) to route the logged queries as they are."""
    log = LoggedTraffic.from_outcomes(data)
    if log.n < folds:
        raise HerdDataError(f"{data.origin}: {log.n} logged request(s), fewer than --folds {folds}")
    for cand in candidates.values():  # before the reward model is fitted: a refusal should not wait for it
        if not isinstance(cand, tuple):
            refuse_several(cand)
    splits = log.matrix.kfold(folds, seed)
    notes = []
    q_score = reward_model(log, splits, seed)
    q_cost = None
    if not np.isnan(log.cost).all():
        q_cost = np.empty((log.n, len(log.models)))
        for tr, te in splits:
            mask = np.zeros(log.n, bool)
            mask[tr] = True
            per_model = log.filled_cost(mask)
            if per_model is None:  # no cost logged on these folds' rows: nothing to predict the held-out fold's
                q_cost[te] = np.nan
                continue
            # A model with no logged cost in these folds: its cost is the dearest known (never free).
            q_cost[te] = np.where(np.isnan(per_model), np.nanmax(per_model), per_model)[None, :]
        if np.isnan(q_cost).any():
            notes.append(f"costs logged on {int((~np.isnan(log.cost)).sum())} request(s) only, none in some folds' "
                         "training rows: cost estimates are n/a")
    else:
        notes.append("no logged costs: cost estimates are n/a")
    results = []
    for name, cand in candidates.items():
        if progress:
            progress(name)
        if isinstance(cand, tuple):
            choice = crossfit_choices(log, cand[0], cand[1], splits, seed)
        else:
            choice, said = trained_choices(log, cand)
            notes += said
        results.append(estimate(log, choice, q_score, q_cost, name))
    known_cost = ~np.isnan(log.cost)
    return OffPolicyResult(data.origin, log.n, log.models, log.logging_policy, int(log.explored.sum()),
                           Estimate.of_terms(log.reward),
                           Estimate.of_terms(log.cost[known_cost]) if known_cost.any() else None,
                           results, folds, notes)
