"""Policies tuned on held-out scores of training queries: a margin over the best single model, a
cost weight calibrated to a budget, a classifier over the score vector."""

from __future__ import annotations

import numpy as np

from herd.policies.base import Decision, Policy, PolicyError, _argmax_cheapest, _known_costs, _logit, _task_strings
from herd.policies.pointwise import CostAware


# Candidate margins for SafeArgMax, in units of P(correct); inf = always the anchor model.
MARGIN_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, float("inf"))


# A task (benchmark of a mixture, or category) needs this many training queries for an anchor of its own.
MIN_TASK_QUERIES = 20


class SafeArgMax(Policy):
    """Stay with the anchor model (the best single model on training data) unless another model's
    predicted P(correct) beats the anchor's by more than ``margin``.

    Where queries carry a task (a mixture's benchmark, a category), each task with at least
    ``MIN_TASK_QUERIES`` training queries has its own anchor, the task's best model on training
    data, so the guarantee holds per task too; a query of unknown task uses the overall anchor.

    ``margin=None`` tunes it with ``fit`` on held-out scores of training queries (out-of-fold
    within the training split): among the margins whose gain over the anchor on those queries
    is significant (paired one-sided z >= ``min_z``, 1.645 = the 5% level), the one with the
    highest accuracy, the larger margin on ties; if none is, an infinite margin, which is
    exactly the anchors. Small validation sets thus rarely leave the anchor on noise.
    """

    name = "safe"
    needs_fit = True
    reads_tasks = True

    def __init__(self, margin: float | None = None, min_z: float = 1.645):
        if margin is not None and not float(margin) >= 0:
            raise PolicyError(f"safe: the margin is a difference of P(correct), 0 or more (inf: always the best "
                             f"single model); got {margin}")
        self.margin = margin
        self.min_z = min_z

    def fit(self, scores: np.ndarray, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None, tasks=None) -> SafeArgMax:
        """Pick the anchors (best model on ``labels``, overall and per task) and, if unset, the
        margin, on validation scores."""
        costs = _known_costs(model_costs, labels.shape[1])
        self.anchor_ = int(_argmax_cheapest(labels.mean(axis=0)[None, :], costs)[0])
        self.task_anchors_ = {}
        if tasks is not None:
            tasks = _task_strings(tasks)
            for t in {t for t in tasks if t is not None}:
                rows_t = tasks == t
                if rows_t.sum() >= MIN_TASK_QUERIES:
                    acc = labels[rows_t].mean(axis=0)
                    # ties stay with the overall anchor
                    best = self.anchor_ if acc[self.anchor_] >= acc.max() - 1e-12 else int(
                        _argmax_cheapest(acc[None, :], costs)[0])
                    if best != self.anchor_:
                        self.task_anchors_[t] = best
        anchors = self.anchors(len(labels), tasks)
        rows = np.arange(len(labels))
        anchor = labels[rows, anchors]
        if self.margin is not None:
            self.margin_ = float(self.margin)
        else:
            results = [(float(np.inf), anchor.mean())]
            for m in MARGIN_GRID[:-1]:
                gain = labels[rows, self._choose(scores, costs, m, anchors)] - anchor
                se = gain.std(ddof=1) / np.sqrt(len(gain)) if len(gain) > 1 else np.inf
                if gain.mean() > 0 and gain.mean() >= self.min_z * se:
                    results.append((m, anchor.mean() + gain.mean()))
            best = max(a for _, a in results)
            self.margin_ = max(m for m, a in results if a >= best - 1e-12)
        self.validation_accuracy_ = float(labels[rows, self._choose(scores, costs, self.margin_, anchors)].mean())
        return self

    def anchor(self, task: str | None = None) -> int:
        """The anchor of a query of ``task``: its task's, else the overall one."""
        return int(self.anchors(1, [task])[0])

    def anchors(self, n: int, tasks=None) -> np.ndarray:
        """(n,) each query's anchor: its task's, else the overall one."""
        if tasks is None or not self.task_anchors_:
            return np.full(n, self.anchor_)
        return np.array([self.task_anchors_.get(t, self.anchor_) for t in _task_strings(tasks)], dtype=int)

    def _choose(self, scores, costs, margin, anchors) -> np.ndarray:
        rows = np.arange(len(scores))
        alt = _argmax_cheapest(scores, costs)
        gain = scores[rows, alt] - scores[rows, anchors]
        return np.where(gain > margin, alt, anchors)

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None, tasks=None) -> np.ndarray:
        if not hasattr(self, "anchor_"):
            raise RuntimeError("SafeArgMax is not fitted: call fit() on validation scores first")
        return self._choose(scores, _known_costs(model_costs, scores.shape[1]), self.margin_,
                            self.anchors(len(scores), tasks))

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None,
               tasks=None) -> Decision:
        choice = self.choose(scores, model_costs, tasks)
        why = ("routing away from it did not pay off on validation data" if np.isinf(self.margin_)
               else f"no model beats it by more than {self.margin_:g}")
        reasons = []
        for s, c, a, t in zip(scores, choice, self.anchors(len(scores), tasks), tasks if tasks is not None
                              else [None] * len(scores)):
            kind = f"best model for task {t}" if t in self.task_anchors_ else "best single model"
            reasons.append(f"stayed with {kind} {models[a]} (P={s[a]:.2f}): {why}" if c == a else
                           f"{models[c]} P={s[c]:.2f} beats {kind} {models[a]} P={s[a]:.2f} by more than {self.margin_:g}")
        return Decision(choice, reasons, models)

    @property
    def label(self) -> str:
        return "safe" if self.margin is None else f"safe:{self.margin:g}"

    def summary(self) -> str:
        """The fitted choice, for reports."""
        own = f", {len(self.task_anchors_)} task(s) with their own anchor" if self.task_anchors_ else ""
        if np.isinf(self.margin_):  # say what an infinite margin means
            anchor = "each task's best model" if self.task_anchors_ else "the best single model"
            return f"margin=inf: every query stays with {anchor}, no margin paid off on validation data{own}"
        return f"margin={self.margin_:g}{own}"


# Cost weights searched when calibrating a budget: 0, then log-spaced up to "cost is all that matters".
BUDGET_WEIGHTS = np.concatenate([[0.0], np.logspace(-4, 3, 141)])


class Budget(Policy):
    """Cost-aware routing calibrated to a budget: the smallest cost weight whose choices on
    validation scores spend at most ``max_cost`` USD per query on average, or send at most
    ``max_share`` of queries to ``model`` (RouteLLM's calibration, for N models).

    ``fit`` calibrates on held-out scores of training queries; the realized figures on new
    queries are what evaluation reports. If no weight meets the target, the cheapest
    behaviour (the largest weight) is used and ``met_`` is False.
    """

    name = "budget"
    needs_fit = True

    def __init__(self, max_cost: float | None = None, max_share: float | None = None, model: str | None = None):
        if (max_cost is None) == (max_share is None):
            raise PolicyError("Budget needs exactly one of max_cost (USD per query) or max_share (with model)")
        if max_share is not None and (model is None or not 0 <= max_share <= 1):
            raise PolicyError(f"budget: a share of queries to a model needs the model's name and a share between 0 "
                             f"and 1; got {max_share:g}" + ("" if model else " and no model"))
        if max_cost is not None and not max_cost >= 0:
            raise PolicyError(f"budget: USD per query must be 0 or more; got {max_cost:g}")
        self.max_cost = max_cost
        self.max_share = max_share
        self.model = model

    def fit(self, scores: np.ndarray, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None) -> Budget:
        costs = _known_costs(model_costs, scores.shape[1])
        if self.max_share is not None:
            if models is None or self.model not in models:
                raise PolicyError(f"budget: model {self.model!r} is not in the pool {models}")
            target = models.index(self.model)
        for w in BUDGET_WEIGHTS:
            choice = CostAware(w).choose(scores, model_costs)
            spent = costs[choice].mean() if self.max_cost is not None else float(np.mean(choice == target))
            if spent <= (self.max_cost if self.max_cost is not None else self.max_share) + 1e-12:
                self.cost_weight_, self.met_ = float(w), True
                break
        else:
            self.cost_weight_, self.met_ = float(BUDGET_WEIGHTS[-1]), False
        self.validation_spent_ = float(spent)
        return self

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        if not hasattr(self, "cost_weight_"):
            raise RuntimeError("Budget is not fitted: call fit() on validation scores first")
        return CostAware(self.cost_weight_).choose(scores, model_costs)

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        inner = CostAware(self.cost_weight_).decide(scores, models, model_costs)
        target = f"${self.max_cost:g}/query" if self.max_cost is not None else f"<= {self.max_share:.0%} to {self.model}"
        return Decision(inner.choice, [f"{r} (weight calibrated to {target})" for r in inner.reasons], models)

    def summary(self) -> str:
        return f"cost_weight={self.cost_weight_:.4g}{'' if self.met_ else ' (target not reachable)'}"

    @property
    def label(self) -> str:
        return f"budget:{self.max_cost:g}" if self.max_cost is not None else f"budget:{self.model}:{self.max_share:g}"


class Prediction(Policy):
    """SelectLLM's Prediction policy: a classifier learned over the whole score vector that
    predicts which model to ask, rather than reading each score alone.

    ``fit`` trains a multinomial logistic regression on held-out scores of training queries.
    Each query's target is, among the models that answered it right, the one with the best
    training accuracy (the cheaper on ties): deviate from the strong model only when the
    scores say it will fail and another will not. A query nobody answered goes to the best
    single model.
    """

    name = "prediction"
    needs_fit = True

    def __init__(self, C: float = 1.0):
        if not C > 0:
            raise PolicyError(f"prediction: C (inverse regularization) must be above 0; got {C:g}")
        self.C = C

    def fit(self, scores: np.ndarray, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None) -> Prediction:
        from sklearn.linear_model import LogisticRegression

        costs = _known_costs(model_costs, labels.shape[1])
        rank = np.lexsort((costs, -labels.mean(axis=0)))  # best training accuracy first, then cheaper
        order = np.empty_like(rank)
        order[rank] = np.arange(len(rank))
        right = labels >= 0.5
        target = np.where(right.any(axis=1), np.argmin(np.where(right, order[None, :], len(rank)), axis=1), rank[0])
        self.fallback_ = int(rank[0])
        self.classes_ = np.unique(target)
        if len(self.classes_) > 1:
            self.model_ = LogisticRegression(C=self.C, max_iter=2000).fit(_logit(scores), target)
        return self

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        if not hasattr(self, "fallback_"):
            raise RuntimeError("Prediction is not fitted: call fit() on validation scores first")
        if len(self.classes_) == 1:
            return np.full(len(scores), self.classes_[0])
        return self.model_.classes_[np.argmax(self.model_.predict_proba(_logit(scores)), axis=1)]

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        choice = self.choose(scores, model_costs)
        return Decision(choice, [f"learned from the score vector: {models[c]} (P={s[c]:.2f}; best single "
                                 f"{models[self.fallback_]} P={s[self.fallback_]:.2f})" for s, c in zip(scores, choice)],
                        models)

    def summary(self) -> str:
        return f"{len(self.classes_)} model(s) ever chosen"
