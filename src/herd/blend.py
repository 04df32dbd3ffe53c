"""Blending for conversations (Blending Is All You Need): a model chosen per turn.

A uniform blend draws each turn's model at random, a weighted blend by weight, and a learned
blend asks the router about the running conversation (its last few user turns). Every draw is
keyed by the session and the turn number, both of which the conversation itself carries, so
a replayed conversation gets the same models and the gateway keeps no state.

Offline, ``evaluate_blends`` replays conversations chained from one benchmark's questions,
cross-validated by question. Those follow-up questions are independent of each other, so a
turn's correctness is the model's outcome on that question alone: the replay measures
accuracy and cost per turn, not the engagement the paper reports, which needs live users
(the gateway's choice log is for that A/B test).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from herd import metrics
from herd.data import Matrix
from herd.errors import UsageError
from herd.policies import ArgMax, Policy
from herd.routers.base import Router
from herd.tuning import fit_in_fold

# User turns the router reads, the current one last (the gateway reads the same).
HISTORY_TURNS = 3


def running_text(user_turns: list[str], history_turns: int = HISTORY_TURNS) -> str:
    """What the router reads of a conversation: its last ``history_turns`` user turns."""
    return "\n".join(user_turns[-history_turns:])


def stable_seed(session: str | int, turn: int) -> np.random.Generator:
    """A generator fixed by (session, turn): stable across processes and runs, unlike hash()."""
    key = int.from_bytes(hashlib.sha256(str(session).encode()).digest()[:8], "little")
    return np.random.default_rng([key, int(turn)])


def blend_pick(models: list[str], weights: np.ndarray | None, session: str | int, turn: int) -> int:
    """The index in ``models`` drawn for this turn of this session: uniform, or in proportion
    to ``weights``."""
    n = len(models)
    if weights is None:
        return int(stable_seed(session, turn).integers(n))
    p = np.asarray(weights, float)
    if len(p) != n or (p < 0).any() or not p.sum() > 0:
        raise UsageError(f"blend weights must be {n} non-negative numbers with a positive sum, got {list(p)}")
    return int(stable_seed(session, turn).choice(n, p=p / p.sum()))


class Blend(Policy):
    """A uniform or weighted blend over ``models`` (None: the whole pool), for the gateway."""

    name = "blend"
    uses_scores = False  # draws per turn: needs no router

    def __init__(self, models: list[str] | None = None, weights: dict[str, float] | None = None):
        self.models = list(models or (weights or {}))
        self.weights = dict(weights) if weights else None
        if self.weights is not None:
            bad = {m: w for m, w in self.weights.items() if not isinstance(w, (int, float)) or w < 0}
            if bad:
                raise UsageError(f"blend weights must be numbers >= 0, got {bad}")
            missing = [m for m in self.models if m not in self.weights]
            if missing:
                raise UsageError(f"blend weights miss model(s) {missing}; give every model a weight")

    @staticmethod
    def is_spec(spec) -> bool:
        return spec in ("blend", "blend:uniform") or (isinstance(spec, dict) and spec.get("name") == "blend")

    @classmethod
    def from_config(cls, spec) -> Blend:
        """'blend' (uniform over the pool) or {name: blend, models: [...], weights: {model: w}}."""
        if isinstance(spec, str):
            return cls()
        params = {k: v for k, v in spec.items() if k != "name"}
        unknown = sorted(set(params) - {"models", "weights"})
        if unknown:
            raise UsageError(f"a blend takes 'models' and 'weights', not {unknown}")
        return cls(params.get("models"), params.get("weights"))

    @property
    def label(self) -> str:
        return "blend:weighted" if self.weights else "blend:uniform"

    def pick(self, available: list[str], session: str, turn: int) -> tuple[str, str]:
        """This turn's model among ``available`` and the reason."""
        weights = None if self.weights is None else np.array([self.weights[m] for m in available], float)
        if weights is not None and not weights.sum() > 0:
            weights = None  # only zero-weight models can take it: any of them
        model = available[blend_pick(available, weights, session, turn)]
        how = "uniformly" if weights is None else f"by weight ({self.weights[model]:g} of {weights.sum():g})"
        return model, f"{self.label}: turn {turn} of session {_short(session)} drew {model} {how}"


    def probability(self, available: list[str], model: str) -> float:
        """The chance ``pick`` gives ``model`` among ``available``."""
        weights = None if self.weights is None else np.array([self.weights[m] for m in available], float)
        if weights is None or not weights.sum() > 0:
            return 1 / len(available)
        return float(self.weights[model] / weights.sum())


def _short(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()[:8] if len(session) > 24 else repr(session)


# ---- offline replay ------------------------------------------------------------------------
def build_conversations(n_queries: int, turns: int, seed: int) -> np.ndarray:
    """(n_conversations, turns) query rows: a seeded shuffle cut into conversations; the
    remainder is left out. Each row appears at most once."""
    if turns < 1:
        raise ValueError(f"turns must be >= 1, got {turns}")
    order = np.random.default_rng(seed).permutation(n_queries)
    n = n_queries // turns
    return order[:n * turns].reshape(n, turns)


def conversation_texts(texts: list[str], conversations: np.ndarray, history_turns: int = HISTORY_TURNS) -> np.ndarray:
    """(n_conversations, turns) of what the router reads at each turn: the running conversation."""
    out = np.empty(conversations.shape, dtype=object)
    for c, rows in enumerate(conversations):
        asked = [texts[r] for r in rows]
        for t in range(len(rows)):
            out[c, t] = running_text(asked[:t + 1], history_turns)
    return out


@dataclass
class BlendResult:
    source: str
    benchmark: str
    turns: int
    n_conversations: int
    models: list[str]
    rows: list[dict]  # per method: accuracy, per_turn_accuracy, cost_usd, cost_coverage, switch_rate
    log_rows: list[dict] = field(default_factory=list)  # per (conversation, turn, blend method): the choice

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "log_rows"}


def evaluate_blends(m: Matrix, router: Router, *, turns: int = 4, folds: int = 5, seed: int = 0, policy=None,
                    weights: dict[str, float] | None = None) -> BlendResult:
    """Replay conversations of ``turns`` questions under every single model and every blend,
    cross-validated by question: conversations are built from each test fold only, and the
    router and the weights learn from the training fold. The weighted blend draws in
    proportion to ``weights`` (default: each model's training accuracy)."""
    policy = policy or ArgMax()
    if not policy.picks_from_scores:
        raise UsageError(f"a learned blend picks one model per turn from the router's scores; {policy.label!r} "
                         "does not")
    unknown = sorted(set(weights or {}) - set(m.models))
    if unknown:
        raise UsageError(f"blend weights name model(s) {unknown} that are not in the pool {m.models}")
    y = m.labels
    choices: dict[str, list[np.ndarray]] = {}
    convs, log = [], []

    def record(method: str, choice: np.ndarray) -> None:
        choices.setdefault(method, []).append(choice)

    for f, (tr, te) in enumerate(m.kfold(folds, seed)):
        conv = te[build_conversations(len(te), turns, seed + f)]
        if not len(conv):
            continue
        convs.append(conv)
        train = m.take(tr)
        costs = metrics.mean_cost_per_model(train.cost)
        for j, name in enumerate(m.models):
            record(name, np.full(conv.shape, j))
        record("best single (train)", np.full(conv.shape, metrics.best_model(train.labels, train.cost)))
        w = np.array([weights.get(x, 0.0) for x in m.models], float) if weights else train.labels.mean(axis=0)
        w = w if w.sum() > 0 else None  # nothing to weigh by: uniform
        sessions = [f"{f}-{c}" for c in range(len(conv))]
        record("uniform blend", np.array([[blend_pick(m.models, None, s, t + 1) for t in range(turns)] for s in sessions]))
        record("weighted blend", np.array([[blend_pick(m.models, w, s, t + 1) for t in range(turns)] for s in sessions]))
        fold = fit_in_fold(router, policy, train, seed)
        fitted, tuned = fold.router, fold.policy
        running = conversation_texts(m.texts, conv).ravel().tolist()
        record("learned blend (history)", tuned.choose(fitted.predict_scores(running), costs).reshape(conv.shape))
        alone = [m.texts[r] for r in conv.ravel()]
        record("learned blend (turn only)", tuned.choose(fitted.predict_scores(alone), costs).reshape(conv.shape))
        for method, parts in choices.items():
            if "blend" in method:
                for c, s in enumerate(sessions):
                    for t in range(turns):
                        model = int(parts[-1][c, t])
                        log.append({"fold": f, "conversation": s, "turn": t + 1, "method": method,
                                    "qid": str(m.keys["qid"].iloc[conv[c, t]]), "model": m.models[model],
                                    "correct": float(y[conv[c, t], model]),
                                    "cost_usd": _or_none(m.cost[conv[c, t], model])})
    rows_all = np.concatenate(convs) if convs else np.empty((0, turns), int)
    rows = [_summary(method, np.concatenate(parts), rows_all, m) for method, parts in choices.items()]
    src, bench = m.keys["source"].iloc[0], m.keys["benchmark"].iloc[0]
    return BlendResult(src, bench, turns, len(rows_all), list(m.models), rows, log)


def _summary(method: str, choice: np.ndarray, rows: np.ndarray, m: Matrix) -> dict:
    correct = m.labels[rows, choice]
    cost, coverage = metrics.mean_known(m.cost[rows, choice].ravel())
    kind = "blend" if "blend" in method else ("best-single" if method.startswith("best single") else "single")
    switches = float((choice[:, 1:] != choice[:, :-1]).mean()) if choice.shape[1] > 1 else None
    return {"method": method, "kind": kind, "accuracy": float(correct.mean()),
            "per_turn_accuracy": correct.mean(axis=0).tolist(), "cost_usd": cost, "cost_coverage": coverage,
            "switch_rate": switches}


def _or_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)
