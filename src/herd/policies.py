"""Policies turn a router's scores (and model prices) into a choice and a reason. They never see text."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Decision:
    """A policy's decision on n queries: ``choice`` (n,) model indices into ``models``,
    ``reasons[i]`` says why query i went where it did; ``names`` are the chosen models' names."""

    choice: np.ndarray
    reasons: list[str]
    models: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """(n,) the chosen model's name per query."""
        return [self.models[i] for i in self.choice]

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:3]) + (", ..." if len(self.choice) > 3 else "")
        return f"Decision({len(self.choice)} queries: {shown})"


def _known_costs(model_costs: np.ndarray | None, n_models: int) -> np.ndarray:
    """Mean cost per query for each model; an unknown cost counts as the dearest known one."""
    if model_costs is None:
        return np.zeros(n_models)
    c = np.asarray(model_costs, float)
    if np.isnan(c).all():
        return np.zeros(n_models)
    return np.where(np.isnan(c), np.nanmax(c), c)


def _probability(what: str, value) -> float:
    """A threshold on P(correct): a number in [0, 1]."""
    value = float(value)
    if not 0 <= value <= 1:
        raise ValueError(f"{what} is a probability, between 0 and 1; got {value:g}")
    return value


def _argmax_cheapest(values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Row-wise argmax; among (near-)ties, the cheaper model."""
    top = values >= values.max(axis=1, keepdims=True) - 1e-12
    return np.argmin(np.where(top, costs[None, :], np.inf), axis=1)


class ArgMax:
    """Pick the model most likely to be right; ties go to the cheaper model."""

    name = "argmax"
    label = "argmax"

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        """(n_queries,) model indices from (n_queries, n_models) scores and (n_models,) mean costs."""
        return _argmax_cheapest(scores, _known_costs(model_costs, scores.shape[1]))

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        """The choice for (n_queries, n_models) ``scores`` with a reason per query; ``models``
        names the columns."""
        choice = self.choose(scores, model_costs)
        return Decision(choice, [_argmax_reason(s, c, models) for s, c in zip(scores, choice)], models)

    def __repr__(self) -> str:
        return "ArgMax()"


class CostAware:
    """Maximize P(correct) - cost_weight * cost / (dearest model's cost): one knob from quality to thrift."""

    name = "cost-aware"

    def __init__(self, cost_weight: float = 0.0):
        if cost_weight < 0:
            raise ValueError(f"cost-aware: the cost weight must be 0 or more; got {cost_weight:g}")
        self.cost_weight = cost_weight

    def utilities(self, scores: np.ndarray, model_costs: np.ndarray | None) -> np.ndarray:
        costs = _known_costs(model_costs, scores.shape[1])
        scale = costs.max() if costs.max() > 0 else 1.0
        return scores - self.cost_weight * costs[None, :] / scale

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        costs = _known_costs(model_costs, scores.shape[1])
        return _argmax_cheapest(self.utilities(scores, model_costs), costs)

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        costs = _known_costs(model_costs, len(models))
        choice = self.choose(scores, model_costs)
        reasons = [
            f"best P(correct) - {self.cost_weight:g} x relative cost: {models[c]} "
            f"(P={s[c]:.2f}, ${costs[c]:.2g}/query)"
            for s, c in zip(scores, choice)
        ]
        return Decision(choice, reasons, models)

    @property
    def label(self) -> str:
        return f"cost-aware:{self.cost_weight:g}"

    def __repr__(self) -> str:
        return f"CostAware(cost_weight={self.cost_weight:g})"


# Candidate margins for SafeArgMax, in units of P(correct); inf = always the anchor model.
MARGIN_GRID = (0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, float("inf"))


# A task (benchmark of a mixture, or category) needs this many training queries for an anchor of its own.
MIN_TASK_QUERIES = 20


class SafeArgMax:
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
    reads_tasks = True

    def __init__(self, margin: float | None = None, min_z: float = 1.645):
        if margin is not None and not float(margin) >= 0:
            raise ValueError(f"safe: the margin is a difference of P(correct), 0 or more (inf: always the best "
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

    def __repr__(self) -> str:
        return f"SafeArgMax(margin={self.margin})"


def _task_strings(tasks) -> np.ndarray:
    """Tasks as strings (None where unknown), as requests and ``Queries`` carry them."""
    return np.array([None if t is None or t != t else str(t) for t in tasks], dtype=object)


# Cost weights searched when calibrating a budget: 0, then log-spaced up to "cost is all that matters".
BUDGET_WEIGHTS = np.concatenate([[0.0], np.logspace(-4, 3, 141)])


class Budget:
    """Cost-aware routing calibrated to a budget: the smallest cost weight whose choices on
    validation scores spend at most ``max_cost`` USD per query on average, or send at most
    ``max_share`` of queries to ``model`` (RouteLLM's calibration, for N models).

    ``fit`` calibrates on held-out scores of training queries; the realized figures on new
    queries are what evaluation reports. If no weight meets the target, the cheapest
    behaviour (the largest weight) is used and ``met_`` is False.
    """

    name = "budget"

    def __init__(self, max_cost: float | None = None, max_share: float | None = None, model: str | None = None):
        if (max_cost is None) == (max_share is None):
            raise ValueError("Budget needs exactly one of max_cost (USD per query) or max_share (with model)")
        if max_share is not None and (model is None or not 0 <= max_share <= 1):
            raise ValueError(f"budget: a share of queries to a model needs the model's name and a share between 0 "
                             f"and 1; got {max_share:g}" + ("" if model else " and no model"))
        if max_cost is not None and not max_cost >= 0:
            raise ValueError(f"budget: USD per query must be 0 or more; got {max_cost:g}")
        self.max_cost = max_cost
        self.max_share = max_share
        self.model = model

    def fit(self, scores: np.ndarray, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None) -> Budget:
        costs = _known_costs(model_costs, scores.shape[1])
        if self.max_share is not None:
            if models is None or self.model not in models:
                raise ValueError(f"budget: model {self.model!r} is not in the pool {models}")
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

    def __repr__(self) -> str:
        if self.max_cost is not None:
            return f"Budget(max_cost={self.max_cost:g})"
        return f"Budget(max_share={self.max_share:g}, model={self.model!r})"


class RandomLikely:
    """SelectLLM's Random policy: a seeded uniform pick among the models predicted correct
    (P >= ``threshold``); if none is, the argmax."""

    name = "random-likely"

    def __init__(self, threshold: float = 0.5, seed: int = 0):
        self.threshold = _probability("random-likely: the threshold", threshold)
        self.seed = seed

    @property
    def label(self) -> str:
        return f"random-likely:{self.threshold:g}"

    def __repr__(self) -> str:
        return f"RandomLikely(threshold={self.threshold:g}, seed={self.seed})"

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        likely = scores >= self.threshold
        draw = np.random.default_rng(self.seed).random(scores.shape)
        choice = np.argmax(np.where(likely, draw, -1.0), axis=1)
        none = ~likely.any(axis=1)
        choice[none] = ArgMax().choose(scores[none], model_costs)
        return choice

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        choice = self.choose(scores, model_costs)
        reasons = [
            f"random pick among {int((s >= self.threshold).sum())} model(s) with P >= {self.threshold:g}: {models[c]}"
            if (s >= self.threshold).any() else f"no model has P >= {self.threshold:g}; " + _argmax_reason(s, c, models)
            for s, c in zip(scores, choice)
        ]
        return Decision(choice, reasons, models)


class CheapestLikely:
    """SelectLLM's Sorted policy with models sorted by price: the cheapest model predicted
    correct (P >= ``threshold``); if none is, the argmax."""

    name = "sorted"

    def __init__(self, threshold: float = 0.5):
        self.threshold = _probability("sorted: the threshold", threshold)

    @property
    def label(self) -> str:
        return f"sorted:{self.threshold:g}"

    def __repr__(self) -> str:
        return f"CheapestLikely(threshold={self.threshold:g})"

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        costs = _known_costs(model_costs, scores.shape[1])
        likely = scores >= self.threshold
        choice = np.argmin(np.where(likely, costs[None, :], np.inf), axis=1)
        none = ~likely.any(axis=1)
        choice[none] = _argmax_cheapest(scores[none], costs)
        return choice

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        choice = self.choose(scores, model_costs)
        reasons = [
            f"cheapest model with P >= {self.threshold:g}: {models[c]} (P={s[c]:.2f})"
            if s[c] >= self.threshold else f"no model has P >= {self.threshold:g}; " + _argmax_reason(s, c, models)
            for s, c in zip(scores, choice)
        ]
        return Decision(choice, reasons, models)


class Prediction:
    """SelectLLM's Prediction policy: a classifier learned over the whole score vector that
    predicts which model to ask, rather than reading each score alone.

    ``fit`` trains a multinomial logistic regression on held-out scores of training queries.
    Each query's target is, among the models that answered it right, the one with the best
    training accuracy (the cheaper on ties): deviate from the strong model only when the
    scores say it will fail and another will not. A query nobody answered goes to the best
    single model.
    """

    name = "prediction"
    label = "prediction"

    def __init__(self, C: float = 1.0):
        if not C > 0:
            raise ValueError(f"prediction: C (inverse regularization) must be above 0; got {C:g}")
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

    def __repr__(self) -> str:
        return f"Prediction(C={self.C:g})"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def cascade_thresholds(scores: np.ndarray, stages: list[int]) -> np.ndarray:
    """Candidate thresholds, ascending: the percentiles of the earlier models' scores (so every
    share of queries kept early is reachable, however narrow the scores), then 1.01 (never)."""
    early = scores[:, stages[:-1]].ravel()
    return np.append(np.unique(np.quantile(early, np.linspace(0, 1, 101))), 1.01)



def cascade_choice(scores: np.ndarray, stages: list[int], threshold: float) -> np.ndarray:
    """Per query, the first of ``stages`` (model indices, in order) whose score reaches
    ``threshold``; the last stage takes the rest."""
    choice = np.full(len(scores), stages[-1])
    for stage in reversed(stages[:-1]):
        choice = np.where(scores[:, stage] >= threshold, stage, choice)
    return choice


def cascade_called(choice: np.ndarray, stages: list[int], n_models: int) -> np.ndarray:
    """(n_queries, n_models) bool: the stages up to and including each query's choice, which a
    cascade that reads answers has called."""
    position = np.array([stages.index(int(c)) for c in choice])
    mask = np.zeros((len(choice), n_models), bool)
    for at, stage in enumerate(stages):
        mask[:, stage] = position >= at
    return mask


class Cascade:
    """Ask models in order, cheapest (or owned) first: a model answers if the router's P(correct)
    for it is at least ``threshold``, else the query moves on to the next; the last one answers
    whatever remains (Leeroo's and FrugalGPT's deferral, with the router's score as the signal
    before a model is called, so a deferred model costs nothing).

    ``threshold=None`` tunes it with ``fit`` on held-out scores of training queries: the lowest
    threshold (the most queries kept by the earlier models) whose accuracy there is at least
    the last model's own, so the cascade keeps the strong model's accuracy by construction on
    validation data.
    """

    name = "cascade"

    def __init__(self, models: list[str] | str, threshold: float | None = None):
        self.models = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
        if len(self.models) < 2:
            raise ValueError(f"a cascade needs two models or more, got {self.models}")
        self.threshold = None if threshold is None else _probability(f"{self.name}: the threshold", threshold)

    def fit(self, scores: np.ndarray, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None) -> Cascade:
        self._check_models(models)
        self._tune(scores, labels)
        return self

    def _check_models(self, models: list[str] | None) -> None:
        missing = [m for m in self.models if models is None or m not in models]
        if missing:
            raise ValueError(f"{self.name}: model(s) {missing} not in the pool {models}")
        self.stages_ = [models.index(m) for m in self.models]

    def _tune(self, signal: np.ndarray, labels: np.ndarray) -> None:
        """The threshold on ``signal`` (held-out, per query and model): as given, or the lowest
        whose accuracy is at least the last model's own."""
        rows = np.arange(len(labels))
        if self.threshold is not None:
            self.threshold_ = float(self.threshold)
        else:
            strong = labels[:, self.stages_[-1]].mean()
            self.threshold_ = float(next(t for t in cascade_thresholds(signal, self.stages_)
                                         if labels[rows, self._choose(signal, t)].mean() >= strong - 1e-12))
        self.validation_accuracy_ = float(labels[rows, self._choose(signal, self.threshold_)].mean())

    def _choose(self, scores: np.ndarray, threshold: float) -> np.ndarray:
        return cascade_choice(scores, self.stages_, threshold)

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        if not hasattr(self, "stages_"):
            raise RuntimeError("Cascade is not fitted: call fit() with the pool's models first")
        return self._choose(scores, self.threshold_)

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        choice = self.choose(scores, model_costs)
        t, reasons = self.threshold_, []
        for s, c in zip(scores, choice):
            passed = [models[i] for i in self.stages_ if i != c and self.stages_.index(i) < self.stages_.index(c)]
            why = f"{', '.join(f'{p} P={s[models.index(p)]:.2f}' for p in passed)} below {t:g}; " if passed else ""
            reasons.append(f"cascade: {why}{models[c]} answers" + (f" (P={s[c]:.2f} >= {t:g})" if c != self.stages_[-1] else
                                                                    " (last in the cascade)"))
        return Decision(choice, reasons, models)

    @property
    def label(self) -> str:
        return f"cascade:{','.join(self.models)}" + ("" if self.threshold is None else f"@{self.threshold:g}")

    def summary(self) -> str:
        return f"threshold={self.threshold_:.3g}"

    def __repr__(self) -> str:
        return f"Cascade(models={self.models}, threshold={self.threshold})"


# Features of an answer the deferral scorer reads, and how each is put on a linear scale.
ANSWER_FEATURES = {"agreement": lambda x: x, "output_chars": np.log1p, "output_tokens": np.log1p}
SCORER_FOLDS = 5


class CheckedCascade(Cascade):
    """A cascade that reads each answer before it accepts it (FrugalGPT's and AutoMix's
    post-call deferral): the first model is called, and its answer stands if a deferral
    scorer's P(right) reaches ``threshold``; else the next model is called too, and so on.
    Every model called is paid for.

    The scorer, one per model before the last, is a logistic regression over what is known
    once the answer is in: the router's P(correct) before the call, the answer's length in
    characters and tokens, and, when ``samples`` > 1 answers were drawn, the share that agree
    with the majority answer (self-consistency, maj@k). Its inputs come from the outcome data
    (``Matrix.observed``) offline and from the model's reply in the gateway, which draws
    ``samples`` answers and compares them with the ``grader`` of ``herd collect``.

    ``threshold=None`` tunes it as ``Cascade`` does, on scorer outputs held out within the
    training queries (the scorers are cross-fitted there, so the threshold never sees a score
    from a scorer trained on the same query).
    """

    name = "cascade-check"
    post_call = True

    def __init__(self, models: list[str] | str, threshold: float | None = None, samples: int = 1,
                 grader: str = "number"):
        super().__init__(models, threshold)
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        self.samples = samples
        self.grader = grader

    def fit(self, scores: np.ndarray, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None, observed: dict[str, np.ndarray] | None = None) -> CheckedCascade:
        from sklearn.model_selection import KFold

        self._check_models(models)
        self.features_, self.scorers_ = {}, {}
        held_out = np.array(scores, float)
        for stage in self.stages_[:-1]:
            name = models[stage]
            # Only what varies: a constant says nothing about whether an answer is right.
            used = [k for k in ANSWER_FEATURES if observed and k in observed and _varies(observed[k][:, stage])]
            if not used:
                raise ValueError(f"{self.name}: no answer observations that vary for {name!r} in this data (it needs "
                                 f"one of {list(ANSWER_FEATURES)}); use 'cascade' to defer on the router's score alone")
            self.features_[stage] = used
            x, y = self._features(scores, observed, stage), labels[:, stage] >= 0.5
            folds = min(SCORER_FOLDS, len(y) // 2)
            if folds >= 2:
                for tr, va in KFold(folds, shuffle=True, random_state=0).split(x):
                    held_out[va, stage] = _fit_scorer(x[tr], y[tr]).predict(x[va])
            self.scorers_[stage] = _fit_scorer(x, y)
        self._tune(held_out, labels)
        # When keeping early answers does not pay on validation (none is kept, or the calls cost
        # more than the last model alone), go straight to the last model.
        costs = _known_costs(model_costs, labels.shape[1])
        spent = cascade_called(self._choose(held_out, self.threshold_), self.stages_, len(costs)) @ costs
        self.direct_ = bool(self.threshold_ > 1.0 or (costs.any() and spent.mean() >= costs[self.stages_[-1]]))
        return self

    def _features(self, scores: np.ndarray, observed: dict[str, np.ndarray] | None, stage: int) -> np.ndarray:
        columns = [_logit(scores[:, stage])]
        for k in self.features_[stage]:
            values = (observed or {}).get(k)
            columns.append(np.full(len(scores), np.nan) if values is None else ANSWER_FEATURES[k](values[:, stage]))
        return np.column_stack(columns)

    def deferral(self, scores: np.ndarray, observed: dict[str, np.ndarray] | None) -> np.ndarray:
        """P(the answer is right) for the models before the last, once their answers are in;
        the router's scores elsewhere."""
        if not hasattr(self, "scorers_"):
            raise RuntimeError("CheckedCascade is not fitted: call fit() with answer observations first")
        out = np.array(scores, float)
        for stage, scorer in self.scorers_.items():
            out[:, stage] = scorer.predict(self._features(scores, observed, stage))
        return out

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None,
               observed: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if self.direct_:
            return np.full(len(scores), self.stages_[-1])
        return self._choose(self.deferral(scores, observed), self.threshold_)

    def called(self, choice: np.ndarray, n_models: int) -> np.ndarray:
        """(n_queries, n_models) bool: the models called to reach each choice (all paid for)."""
        if self.direct_:
            return np.eye(n_models, dtype=bool)[choice]
        return cascade_called(choice, self.stages_, n_models)

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None,
               observed: dict[str, np.ndarray] | None = None) -> Decision:
        if self.direct_:
            last = models[self.stages_[-1]]
            return Decision(np.full(len(scores), self.stages_[-1]),
                            [f"cascade-check: straight to {last}; on validation no earlier answer was worth keeping"]
                            * len(scores), models)
        if observed is None:  # before any call: the first model is asked, its answer decides the rest
            first, rest = models[self.stages_[0]], ", ".join(models[i] for i in self.stages_[1:])
            return Decision(np.full(len(scores), self.stages_[0]),
                            [f"cascade-check: {first} answers first; {rest} only if its answer's P(right) < "
                             f"{self.threshold_:.3g}"] * len(scores), models)
        defer = self.deferral(scores, observed)
        choice = self._choose(defer, self.threshold_)
        t, reasons = self.threshold_, []
        for d, c in zip(defer, choice):
            rejected = self.stages_[:self.stages_.index(c)]
            why = "".join(f"{models[i]}'s answer P(right)={d[i]:.2f} < {t:.3g}; " for i in rejected)
            last = c == self.stages_[-1]
            reasons.append(f"cascade-check: {why}{models[c]} answers" + (" (last in the cascade)" if last
                                                                         else f" (P(right)={d[c]:.2f} >= {t:.3g})"))
        return Decision(choice, reasons, models)

    @property
    def label(self) -> str:
        return "cascade-check:" + super().label.partition(":")[2]

    def __repr__(self) -> str:
        return f"CheckedCascade(models={self.models}, threshold={self.threshold}, samples={self.samples})"


def _varies(values: np.ndarray) -> bool:
    known = values[~np.isnan(values)]
    return known.size > 1 and bool(known.std() > 0)


class _Scorer:
    """Logistic P(right) from answer features; a constant when training saw one outcome only."""

    def __init__(self, model=None, rate: float = 0.0):
        self.model, self.rate = model, rate

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)[:, 1] if self.model is not None else np.full(len(x), self.rate)


def _fit_scorer(x: np.ndarray, y: np.ndarray) -> _Scorer:
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if y.all() or not y.any():
        return _Scorer(rate=float(y.mean()) if len(y) else 0.0)
    model = make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                          LogisticRegression(C=1.0, max_iter=1000))
    return _Scorer(model.fit(x, y))


# An agreement cascade keeps the strong model's accuracy within this much on validation data.
AGREE_TOLERANCE = 0.005
# How many standard errors of its paired gain over the strong model a first stage must clear on
# the training queries, chosen by inner CV: picking the cheapest of thousands of candidate stages
# favours the lucky ones, and the margin pays for that, most where the stage's gain is noisiest.
AGREE_MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
# Tolerances of the accuracy-cost curve of agreement cascades in reports.
AGREE_SWEEP = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
AGREE_INNER_FOLDS = 3
AGREE_MAX_STAGE = 3


def agreement_choice(codes: np.ndarray, stage: list[int], need: int, last: int) -> np.ndarray:
    """Per query, the earliest first-stage model (in ``stage`` order) giving the answer most of
    ``stage`` give, if at least ``need`` give it; else ``last``: the one rule both offline
    evaluation and the gateway apply. ``codes`` is (n_queries, n_models) of answer codes, -1 for no answer."""
    sub = np.asarray(codes)[:, stage]
    count = ((sub[:, :, None] == sub[:, None, :]) & (sub[:, :, None] >= 0)).sum(axis=2)
    top = count.argmax(axis=1)
    ok = count[np.arange(len(sub)), top] >= need
    return np.where(ok, np.asarray(stage)[top], last)


def _agreement_floats(same: np.ndarray, y: np.ndarray, fold: np.ndarray, n_folds: int, pool: list[int], strong: int):
    """``Agree._candidates`` for outcomes that are scores in [0, 1]: vectorized over the third model."""
    yt = np.ascontiguousarray(y.T, dtype=np.float32)
    ys, folds = yt[strong], np.eye(n_folds, dtype=np.float32)[fold]
    candidates, batches = [], []

    def add(stages, need, got, ok):
        got = np.atleast_2d(got)
        candidates.extend((list(st), need) for st in stages)
        diff = got - ys
        batches.append((got @ folds, np.atleast_2d(ok).astype(np.float32) @ folds, (diff * diff) @ folds))

    for i, a in enumerate(pool):
        for j in range(i + 1, len(pool)):
            b, rest = pool[j], pool[j + 1:]
            ab = same[a, b]
            add([(a, b)], 2, np.where(ab, yt[a], ys), ab)
            if rest:
                ac, bc = same[a, rest], same[b, rest]
                triples = [(a, b, c) for c in rest]
                add(triples, 2, np.where(ab | ac, yt[a], np.where(bc, yt[b], ys)), ab | ac | bc)
                add(triples, 3, np.where(ab & ac, yt[a], ys), ab & ac)
    if not candidates:
        return [], None, None, None
    # In float64: the selection compares held-out accuracies exactly (ties included).
    return candidates, *(np.concatenate([b[x] for b in batches]).astype(float) for x in range(3))


class _AgreementBits:
    """Agreement cascades tallied on bits: with right/wrong outcomes every indicator of
    ``Agree._candidates`` is a set of queries, so a candidate costs a few bitwise operations per
    64 queries and a popcount per inner fold (the same figures as the float tally)."""

    def __init__(self, same: np.ndarray, right: np.ndarray, fold: np.ndarray, n_folds: int):
        # Queries grouped by fold, each fold padded to the same whole number of 64-bit words;
        # pads agree with nothing and are never right, so they count nowhere.
        sizes = np.bincount(fold, minlength=n_folds)
        self.width = -(-int(sizes.max()) // 64) * 64
        order = np.argsort(fold, kind="stable")
        position = np.empty(len(fold), int)
        position[order] = np.arange(len(fold)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        self.slot, self.n_folds = fold * self.width + position, n_folds
        k = same.shape[0]
        self.same = self._pack(same.reshape(k * k, -1)).reshape(k, k, -1)
        self.right = self._pack(right)

    def _pack(self, bits: np.ndarray) -> np.ndarray:
        buf = np.zeros((bits.shape[0], self.n_folds * self.width), bool)
        buf[:, self.slot] = bits
        return np.packbits(buf, axis=-1, bitorder="little").view(np.uint64)

    def _per_fold(self, words: list[np.ndarray]) -> np.ndarray:
        stacked = np.vstack(words)
        return np.bitwise_count(stacked).reshape(len(stacked), self.n_folds, -1).sum(axis=2).astype(float)

    def candidates(self, pool: list[int], strong: int):
        same, y = self.same, self.right
        ys = y[strong]
        candidates, got, kept = [], [], []
        for i, a in enumerate(pool):
            for j in range(i + 1, len(pool)):
                b, rest = pool[j], pool[j + 1:]
                ab = same[a, b]
                candidates.append(([a, b], 2))
                got.append(((ab & y[a]) | (~ab & ys))[None])
                kept.append(ab[None])
                if not rest:
                    continue
                ac, bc = same[a, rest], same[b, rest]
                to_a = ab | ac  # a agrees with b or with c: a's answer
                to_b = ~to_a & bc  # else b agrees with c: b's
                unanimous = ab & ac
                candidates += [([a, b, c], 2) for c in rest] + [([a, b, c], 3) for c in rest]
                got += [(to_a & y[a]) | (to_b & y[b]) | (~(to_a | bc) & ys), (unanimous & y[a]) | (~unanimous & ys)]
                kept += [to_a | bc, unanimous]
        if not candidates:
            return [], None, None, None
        differ = [g ^ ys for g in got]  # right or wrong: a squared difference is a difference
        return candidates, self._per_fold(got), self._per_fold(kept), self._per_fold(differ)


class Agree:
    """An agreement cascade (FrugalGPT's and Leeroo's deferral after the call, with independent
    models as the check): ask a first stage of 2-3 models at once, keep the answer that at least
    ``need`` of them give (answers compared as the benchmark's grader compares them), else ask
    ``then``, the strong model. Every first-stage model is paid for; ``then`` only on deferral.

    Explicit: ``Agree(["a", "b"], then="strong", need=2)``. With ``models=None``, ``fit`` chooses
    on the training queries: the strong model is their best single model, and the first stage
    and ``need`` are the cheapest whose accuracy stays within ``tolerance`` of the strong
    model's, after a margin chosen by inner cross-validation (the selection procedure itself is
    validated on held-out training queries); if none does, every query goes straight to the
    strong model. ``open_only`` restricts the first stage to open-weights models.
    ``grader`` names how the gateway extracts answers (``herd collect``'s graders); offline,
    the data's recorded answers are compared with the benchmark's grader.
    """

    name = "agree"
    uses_scores = False  # needs no router: the answers decide
    reads_answers = True

    def __init__(self, models: list[str] | str | None = None, then: str | None = None, need: int | None = None,
                 open_only: bool = False, tolerance: float = AGREE_TOLERANCE, grader: str | None = None):
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        if models is not None:
            if not 2 <= len(models) <= 5 or len(set(models)) != len(models):
                raise ValueError(f"agree: the first stage needs 2 to 5 distinct models, got {models}")
            if not then:
                raise ValueError("agree: name the model to ask when the first stage disagrees ('then')")
            if then in models:
                raise ValueError(f"agree: {then!r} is both in the first stage and the model asked after it")
            if need is not None and not 2 <= int(need) <= len(models):
                raise ValueError(f"agree: need must be between 2 and {len(models)} (the first stage), got {need}")
        elif then is not None or need is not None:
            raise ValueError("agree: 'then' and 'need' go with an explicit first stage ('models')")
        if not 0 <= tolerance < 1:
            raise ValueError(f"agree: tolerance must be in [0, 1), got {tolerance}")
        self.models = models
        self.then = then
        self.need = None if need is None else int(need)
        self.open_only = bool(open_only)
        self.tolerance = float(tolerance)
        self.grader = grader

    # ---- fitting -------------------------------------------------------------------------
    def fit(self, scores: np.ndarray | None, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None, answers: np.ndarray | None = None,
            owned: np.ndarray | None = None) -> Agree:
        """Resolve (explicit) or choose (``models=None``) the stages on training outcomes.
        ``answers`` is (n_queries, n_models) of answer codes (``Matrix.answer_codes``)."""
        if models is None:
            raise ValueError("agree: fit needs the pool's model names")
        costs = _known_costs(model_costs, len(models))
        if self.models is not None:
            self.bind(models)
            if answers is not None:
                self._validate(labels, answers, costs)
            return self
        self.pool_ = list(models)
        # Until a search says otherwise, every tolerance of the curve goes straight to the strong model.
        self.margin_, self.sweep_ = None, dict.fromkeys(AGREE_SWEEP)
        if answers is None or (np.asarray(answers) < 0).all():
            raise ValueError("agree: the data has no recorded answers to compare (an 'answer' column in the "
                             "outcomes); use 'cascade-check' or 'safe', which need none")
        if self.open_only and (owned is None or not np.asarray(owned).any()):
            raise ValueError("agree:open: no model in this data is marked open-weights (models.csv: open_weights)")
        self._search(np.asarray(labels, float), np.asarray(answers), costs, owned)
        self._validate(labels, answers, costs)
        return self

    def bind(self, models: list[str]) -> Agree:
        """An explicit cascade resolved against the pool's model names; nothing to learn."""
        if self.models is None:
            raise ValueError("agree: only an explicit first stage ('models' and 'then') binds without data; "
                             "a chosen one is fitted on outcomes (`herd train --policy agree`)")
        missing = [m for m in [*self.models, self.then] if m not in models]
        if missing:
            raise ValueError(f"agree: model(s) {missing} not in the pool {list(models)}")
        self.pool_, self.margin_, self.sweep_ = list(models), None, {}
        self.stage_, self.last_ = [models.index(m) for m in self.models], models.index(self.then)
        # By default a strict majority of the first stage (both of two, two of three).
        self.need_, self.direct_ = self.need or max(2, len(self.models) // 2 + 1), False
        self.reason_ = "as configured"
        return self

    def _validate(self, labels, answers, costs) -> None:
        choice = self.choose(None, None, answers)
        self.validation_accuracy_ = float(labels[np.arange(len(labels)), choice].mean())
        self.validation_accepted_ = float(np.mean(choice != self.last_))
        self.validation_cost_ = float((self.called(choice, len(costs)) @ costs).mean())

    def _search(self, y: np.ndarray, codes: np.ndarray, costs: np.ndarray, owned) -> None:
        from sklearn.model_selection import KFold

        n, k = y.shape
        strong = int(_argmax_cheapest(y.mean(axis=0)[None, :], costs)[0])
        priced = costs[strong] > 0
        pool = [j for j in np.argsort(costs, kind="stable") if j != strong
                and (costs[j] < costs[strong] or not priced) and (not self.open_only or bool(owned[j]))]
        folds = min(AGREE_INNER_FOLDS, n // 2)
        fold = np.zeros(n, int)
        if folds >= 2:
            for f, (_, va) in enumerate(KFold(folds, shuffle=True, random_state=0).split(y)):
                fold[va] = f
        self.last_ = strong
        if costs[strong] == 0 and costs.any():
            self._go_direct(f"{self.pool_[strong]} costs nothing here; asking others first cannot save")
            return
        nf = np.bincount(fold, minlength=max(folds, 1)).astype(float)
        candidates, right, kept, differ = self._candidates(y, codes, pool, strong, fold, len(nf))
        if not candidates:
            self._go_direct(f"no model cheaper than {self.pool_[strong]} to ask first")
            return
        first_cost = np.array([costs[s].sum() for s, _ in candidates])
        strong_right = np.bincount(fold, weights=y[:, strong], minlength=len(nf))

        def pick(use: np.ndarray, margin: float, tolerance: float) -> int | None:
            m = nf[use].sum()
            acc = right[:, use].sum(axis=1) / m
            share = kept[:, use].sum(axis=1) / m
            cost = first_cost + (1 - share) * costs[strong]
            gain = acc - strong_right[use].sum() / m
            se = np.sqrt(np.maximum(differ[:, use].sum(axis=1) / m - gain ** 2, 0.0) / max(m - 1, 1))
            good = gain - margin * se >= -tolerance - 1e-12
            good &= (cost < costs[strong] - 1e-15) if priced else (share > 0)
            if not good.any():
                return None
            order = np.lexsort((-acc, -share, cost)) if priced else np.lexsort((-acc, -share))
            return int(order[good[order]][0])

        # The margin: the smallest whose selection, made on part of the training queries and
        # scored on the rest, keeps the strong model's accuracy within the tolerance.
        every = np.ones(len(nf), bool)
        for margin in AGREE_MARGINS:
            if folds < 2:
                break
            held_right = 0.0
            for f in range(folds):
                c = pick(every & (np.arange(len(nf)) != f), margin, self.tolerance)
                held_right += strong_right[f] if c is None else right[c, f]
            if held_right / n >= strong_right.sum() / n - self.tolerance - 1e-12:
                self.margin_ = margin
                break
        # The curve of the report: what each tolerance would choose (with the largest margin if none passed).
        margin = AGREE_MARGINS[-1] if self.margin_ is None and folds >= 2 else self.margin_ or 0.0
        self.sweep_ = {t: (None if (c := pick(every, margin, t)) is None else candidates[c]) for t in AGREE_SWEEP}
        if self.margin_ is None and folds >= 2:
            self._go_direct(f"no first stage kept {self.pool_[strong]}'s accuracy within {self.tolerance:.1%} "
                            "on held-out training queries")
            return
        c = pick(every, margin, self.tolerance)
        if c is None:
            self._go_direct(f"no first stage cheaper than {self.pool_[strong]} kept its accuracy within "
                            f"{self.tolerance:.1%} on the training queries")
            return
        self.stage_, self.need_ = candidates[c]
        self.direct_ = False
        self.reason_ = (f"chosen on the training queries: the cheapest first stage within {self.tolerance:.1%} of "
                        f"{self.pool_[strong]} (by a margin of {margin:g} standard errors, from inner CV)")

    @staticmethod
    def _candidates(y: np.ndarray, codes: np.ndarray, pool: list[int], strong: int, fold: np.ndarray, n_folds: int):
        """Every first stage of two or three ``pool`` models (cheapest first) and every ``need``:
        per inner fold (``fold``: each query's), the right answers, the answers kept, and the
        squared paired differences from the strong model. Vectorized over the third model; the
        rule is ``agreement_choice``'s (the earliest agreeing model's answer stands)."""
        valid = codes.T >= 0
        same = (codes.T[:, None, :] == codes.T[None, :, :]) & valid[:, None, :]  # (k, k, n)
        if np.isin(y, (0.0, 1.0)).all():
            return _AgreementBits(same, y.T > 0.5, fold, n_folds).candidates(pool, strong)
        return _agreement_floats(same, y, fold, n_folds, pool, strong)

    def _go_direct(self, why: str) -> None:
        self.stage_, self.need_, self.direct_, self.reason_ = [], 0, True, why

    # ---- choosing ------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "stage_"):
            raise RuntimeError("Agree is not fitted: call fit() with the pool's models (and answers) first")

    def choose(self, scores: np.ndarray | None, model_costs: np.ndarray | None = None,
               answers: np.ndarray | None = None) -> np.ndarray:
        """(n_queries,) the model whose answer stands, given every first-stage model's answer code."""
        self._check_fitted()
        if answers is None:
            raise ValueError("agree: choosing needs the first stage's answers")
        if self.direct_:
            return np.full(len(answers), self.last_)
        return agreement_choice(answers, self.stage_, self.need_, self.last_)

    def sweep_choices(self, answers: np.ndarray) -> dict[float, np.ndarray]:
        """Per tolerance of ``AGREE_SWEEP``: the choices of the cascade chosen at that tolerance."""
        self._check_fitted()
        return {t: np.full(len(answers), self.last_) if c is None else agreement_choice(answers, c[0], c[1], self.last_)
                for t, c in self.sweep_.items()}

    def sweep_called(self, tolerance: float, choice: np.ndarray, n_models: int) -> np.ndarray:
        c = self.sweep_.get(tolerance)
        return _agree_called(choice, [] if c is None else c[0], self.last_, n_models)

    def called(self, choice: np.ndarray, n_models: int) -> np.ndarray:
        """(n_queries, n_models) bool: the whole first stage, plus the strong model on deferral."""
        self._check_fitted()
        return _agree_called(choice, self.stage_, self.last_, n_models)

    @property
    def first_stage(self) -> list[str]:
        """The models asked first (together), by name."""
        self._check_fitted()
        return [self.pool_[i] for i in self.stage_]

    @property
    def last(self) -> str:
        self._check_fitted()
        return self.pool_[self.last_]

    def decide(self, scores: np.ndarray | None, models: list[str], model_costs: np.ndarray | None = None,
               answers: np.ndarray | None = None) -> Decision:
        self._check_fitted()
        if self.direct_:
            n = len(answers) if answers is not None else len(scores)
            return Decision(np.full(n, self.last_), [f"agree: straight to {models[self.last_]}: {self.reason_}"] * n,
                            models)
        if answers is None:  # before any call: the first stage is asked together
            n = len(scores)
            first = ", ".join(models[i] for i in self.stage_)
            return Decision(np.full(n, self.stage_[0]), [f"agree: ask {first}; keep an answer {self.need_} of them "
                                                         f"give, else ask {models[self.last_]}"] * n, models)
        choice = self.choose(scores, model_costs, answers)
        reasons = []
        for row, c in zip(np.asarray(answers)[:, self.stage_], choice):
            if c == self.last_:
                reasons.append(f"agree: fewer than {self.need_} of {len(self.stage_)} first-stage answers agree; "
                               f"{models[self.last_]} answers")
            else:
                code = row[self.stage_.index(c)]
                givers = [models[i] for i, a in zip(self.stage_, row) if a == code]
                reasons.append(f"agree: {', '.join(givers)} agree ({len(givers)} of {len(self.stage_)}, "
                               f"{self.need_} needed); {models[c]}'s answer stands")
        return Decision(choice, reasons, models)

    @property
    def label(self) -> str:
        if self.models is None:
            return "agree:open" if self.open_only else "agree"
        need = "" if self.need is None else f"@{self.need}"
        return f"agree:{','.join(self.models)}>{self.then}{need}"

    def summary(self) -> str:
        self._check_fitted()
        if self.direct_:
            return f"straight to {self.last}"
        return f"{'+'.join(self.first_stage)} ({self.need_} agree) > {self.last}"

    def __repr__(self) -> str:
        params = {"models": self.models, "then": self.then, "need": self.need, "open_only": self.open_only,
                  "tolerance": self.tolerance, "grader": self.grader}
        defaults = {"models": None, "then": None, "need": None, "open_only": False, "tolerance": AGREE_TOLERANCE,
                    "grader": None}
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if v != defaults[k])
        return f"Agree({shown})"


def _agree_called(choice: np.ndarray, stage: list[int], last: int, n_models: int) -> np.ndarray:
    mask = np.zeros((len(choice), n_models), bool)
    mask[:, stage] = True
    mask[:, last] |= np.asarray(choice) == last
    return mask


def explore_draw(eps: float, own: np.ndarray, allowed: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epsilon-greedy over (n,) own choices and an (n, k) mask of the models allowed per query:
    the (n,) choices, their propensities and whether exploration made them. With probability
    ``eps`` a uniform draw among the allowed models, else the own choice; a query with no
    allowed model keeps its own choice."""
    n = len(own)
    count = allowed.sum(axis=1)
    explored = (rng.random(n) < eps) & (count > 0)
    uniform = np.argmax(np.where(allowed, rng.random(allowed.shape), -1.0), axis=1)
    choice = np.where(explored, uniform, own)
    return choice, explore_propensity(eps, choice == own, allowed[np.arange(n), choice], count), explored


def explore_propensity(eps: float, own, allowed, count):
    """The probability epsilon-greedy gives a choice: whether it is the policy's own pick and
    whether it is among the ``count`` allowed models (scalars or arrays alike)."""
    return np.where(count > 0, (1 - eps) * own + eps * allowed / np.maximum(count, 1), 1.0)


class Explore:
    """Epsilon-greedy exploration around a policy: with probability ``eps`` a uniform draw among
    the models allowed for the query, else the policy's own choice. Some traffic then reaches
    models the policy would not pick, and every choice has a known probability (its propensity),
    which off-policy evaluation of another router divides by. The draw is only ever among the
    allowed models, so exploration never relaxes a constraint."""

    name = "explore"

    def __init__(self, policy, eps: float, seed: int | None = 0):
        if getattr(policy, "post_call", False) or not getattr(policy, "uses_scores", True):
            raise ValueError(f"explore: {policy.label!r} asks several models per query; exploration wraps a policy "
                             "that picks one model from the router's scores")
        self.policy = policy
        self.eps = _probability("explore: the exploration rate", eps)
        self.seed = seed

    @property
    def label(self) -> str:
        return f"{self.policy.label}+explore:{self.eps:g}"

    @property
    def reads_tasks(self) -> bool:
        return getattr(self.policy, "reads_tasks", False)

    @property
    def fit(self):
        """The wrapped policy's ``fit``, returning this exploring policy; absent (as for
        ``hasattr``) when the wrapped policy has nothing to fit."""
        if not hasattr(self.policy, "fit"):
            raise AttributeError("fit")

        def fit(*args, **kwargs) -> Explore:
            self.policy = self.policy.fit(*args, **kwargs)
            return self

        return fit

    def summary(self) -> str:
        return self.policy.summary()

    def draw(self, own: np.ndarray, allowed: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """From (n,) own choices and an (n, k) mask of the models allowed per query: the (n,)
        choices, their propensities and whether exploration made them. A query with no allowed
        model keeps its own choice."""
        return explore_draw(self.eps, own, allowed, rng)

    def probabilities(self, scores: np.ndarray, model_costs: np.ndarray | None = None, allowed=None,
                      **kwargs) -> np.ndarray:
        """(n_queries, n_models): the probability this policy gives each model, the allowed ones
        ((n, k) mask, default all) sharing ``eps`` equally."""
        allowed = np.ones(scores.shape, bool) if allowed is None else np.asarray(allowed, bool)
        own = self.policy.choose(scores, model_costs, **kwargs)
        count = allowed.sum(axis=1, keepdims=True)
        p = np.where(count > 0, self.eps * allowed / np.maximum(count, 1), 0.0)
        p[np.arange(len(own)), own] += np.where(count[:, 0] > 0, 1 - self.eps, 1.0)
        return p

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """(n_queries,) choices, drawn with a generator seeded afresh on each call, so a replay
        (or two routers compared on one split) meets the same draws."""
        own = self.policy.choose(scores, model_costs, **kwargs)
        return self.draw(own, np.isfinite(scores), np.random.default_rng(self.seed))[0]

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None,
               **kwargs) -> Decision:
        own = self.policy.decide(scores, models, model_costs, **kwargs)
        allowed = np.isfinite(scores)
        choice, _, explored = self.draw(own.choice, allowed, np.random.default_rng(self.seed))
        reasons = [f"explored ({self.eps:g}): drew {models[c]} uniformly among {int(ok.sum())} allowed models; the "
                   f"policy's own pick: {why}" if e else why
                   for c, ok, e, why in zip(choice, allowed, explored, own.reasons)]
        return Decision(choice, reasons, models)

    def __repr__(self) -> str:
        return f"Explore({self.policy!r}, eps={self.eps:g}, seed={self.seed})"


POLICIES = {"argmax": ArgMax, "safe": SafeArgMax, "cost-aware": CostAware, "budget": Budget,
            "random-likely": RandomLikely, "sorted": CheapestLikely, "prediction": Prediction, "cascade": Cascade,
            "cascade-check": CheckedCascade, "agree": Agree}


def make_policy(spec: str):
    """A policy from its spec string; a bad spec raises ValueError saying what is wrong.

    'argmax', 'safe', 'safe:0.1' (fixed margin), 'cost-aware:0.2' (cost weight),
    'budget:0.002' (USD per query), 'budget:gpt-4:0.3' (at most 30% of queries to gpt-4),
    'random-likely[:0.5]' or 'sorted[:0.5]' (threshold on P(correct)), 'cascade:small,big'
    (threshold tuned) or 'cascade:small,big@0.8', 'cascade-check:small,big[@T]' (which
    reads each answer before it accepts it), and agreement cascades: 'agree' (stages chosen
    on training data), 'agree:open' (open-weights first stage) or 'agree:a,b[,c]>big[@2]'.
    '+explore:EPS' after a policy that picks one model ('safe+explore:0.05') explores."""
    spec, eps = split_explore(spec)
    if eps is not None:
        return Explore(make_policy(spec), eps)
    try:
        return _parse_policy(spec)
    except ValueError as e:
        text = str(e)
        if repr(spec) in text:
            raise
        raise ValueError(f"policy {spec!r}: {text.removeprefix(spec.partition(':')[0] + ': ')}") from None


# What each parametrized policy's number means, for errors about a missing one.
_NEEDS_NUMBER = {"cost-aware": "cost-aware:WEIGHT (e.g. cost-aware:0.2; 0 is argmax)"}


def _parse_policy(spec: str):
    name, _, arg = spec.partition(":")
    if name == "agree":
        return _agree_spec(spec, arg)
    if name in ("cascade", "cascade-check"):
        cls = POLICIES[name]
        models, at, value = arg.rpartition("@")
        try:
            return cls(models, float(value)) if at else cls(arg)
        except ValueError:
            if at and not _is_number(value):  # an '@' inside a model name, as in 'Llama-3@together'
                return cls(arg)
            raise
    if name == "budget":
        model, _, share = arg.rpartition(":")
        try:
            value = float(share)
        except ValueError:
            raise ValueError(f"policy {spec!r}: give budget:USD_PER_QUERY or budget:MODEL:SHARE") from None
        return Budget(max_share=value, model=model) if model else Budget(max_cost=value)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {spec!r}; choose from {sorted(POLICIES)} (e.g. 'safe', 'cost-aware:0.2')")
    if not arg:
        if name in _NEEDS_NUMBER:
            raise ValueError(f"policy {spec!r} needs a number: {_NEEDS_NUMBER[name]}")
        return POLICIES[name]()
    if name == "argmax":
        raise ValueError("policy 'argmax' takes no parameter")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"policy {spec!r}: {arg!r} is not a number") from None
    return POLICIES[name](value)


def _agree_spec(spec: str, arg: str) -> Agree:
    """'agree', 'agree:open', 'agree:a,b[,c]>strong[@need]'."""
    if arg in ("", "open"):
        return Agree(open_only=arg == "open")
    first, sep, rest = arg.partition(">")
    if not sep or not first or not rest:
        raise ValueError(f"policy {spec!r}: give 'agree', 'agree:open' or 'agree:M1,M2[,M3]>STRONG[@NEED]'")
    then, at, need = rest.rpartition("@")
    if at and need.isdigit():
        return Agree(first, then=then, need=int(need))
    return Agree(first, then=rest)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


EXPLORE = "+explore:"


def split_explore(spec: str | dict | None) -> tuple[str | dict | None, float | None]:
    """A policy spec without its exploration rate, and the rate (None when it does not explore):
    'safe+explore:0.05' or ``{name: safe, explore: 0.05}``."""
    if isinstance(spec, dict):
        rest = {k: v for k, v in spec.items() if k != "explore"}
        return rest, None if "explore" not in spec else _rate(spec["explore"], f"policy {spec.get('name')!r}: explore")
    if not isinstance(spec, str) or EXPLORE not in spec:
        if isinstance(spec, str) and spec.startswith("explore"):
            raise ValueError(f"policy {spec!r}: exploration wraps a policy; write it after one, e.g. "
                             "'safe+explore:0.05' or 'trained+explore:0.05'")
        return spec, None
    base, _, rate = spec.rpartition(EXPLORE)
    if not base:
        raise ValueError(f"policy {spec!r}: exploration wraps a policy; write it after one, e.g. 'safe+explore:0.05'")
    return base, _rate(rate, f"policy {spec!r}")


def _rate(value, where: str) -> float:
    try:
        eps = float(value)
    except (TypeError, ValueError):
        eps = None
    if isinstance(value, bool) or eps is None or not 0 <= eps <= 1:
        raise ValueError(f"{where}: the exploration rate is a probability between 0 and 1 (e.g. 0.05); got {value!r}")
    return eps


def policy_from_config(spec: str | dict):
    """A policy from a config entry: a spec string as for ``make_policy`` or a mapping such as
    ``{name: cost-aware, cost_weight: 0.2}`` whose other keys are the policy's parameters
    (``explore: EPS`` wraps it in exploration)."""
    if isinstance(spec, str):
        return make_policy(spec)
    spec, eps = split_explore(spec)
    if eps is not None:
        return Explore(policy_from_config(spec), eps)
    params = dict(spec)
    name = params.pop("name", None)
    if name not in POLICIES:
        raise ValueError(f"policy needs 'name', one of {sorted(POLICIES)}; got {name!r}")
    cls = POLICIES[name]
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"policy {name!r} takes {accepted or 'no parameters'}, not {unknown}")
    return cls(**params)


def policy_inputs(policy, observed=None, answers=None, owned=None, tasks=None, *, fit: bool = False) -> dict:
    """The keywords a policy reads beyond scores: answer observations for a checked cascade,
    answer codes (and, to fit, which models are open) for an agreement cascade, the queries'
    tasks for a policy with per-task anchors; none for others."""
    if getattr(policy, "post_call", False):
        return {"observed": observed}
    if getattr(policy, "reads_answers", False):
        return {"answers": answers, "owned": owned} if fit else {"answers": answers}
    if getattr(policy, "reads_tasks", False):
        return {"tasks": tasks}
    return {}


def _argmax_reason(scores: np.ndarray, chosen: int, models: list[str]) -> str:
    if len(models) == 1:
        return f"only model: {models[chosen]}"
    rest = np.delete(np.arange(len(models)), chosen)
    runner = rest[np.argmax(scores[rest])]
    return (
        f"highest predicted P(correct): {models[chosen]} {scores[chosen]:.2f} "
        f"(next {models[runner]} {scores[runner]:.2f})"
    )
