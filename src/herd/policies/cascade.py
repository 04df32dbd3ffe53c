"""Cascades: models asked in order, a later one only when an earlier one is not trusted, by the
router's score before the call (``Cascade``) or by the answer after it (``CheckedCascade``)."""

from __future__ import annotations

import numpy as np

from herd.policies.base import Decision, Policy, PolicyError, _known_costs, _logit, _probability


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


class Cascade(Policy):
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
    needs_fit = True

    def __init__(self, models: list[str] | str, threshold: float | None = None):
        self.models = [m.strip() for m in models.split(",")] if isinstance(models, str) else list(models)
        if len(self.models) < 2:
            raise PolicyError(f"a cascade needs two models or more, got {self.models}")
        self.threshold = None if threshold is None else _probability(f"{self.name}: the threshold", threshold)

    def fit(self, scores: np.ndarray, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None) -> Cascade:
        self._check_models(models)
        self._tune(scores, labels)
        return self

    def _check_models(self, models: list[str] | None) -> None:
        missing = [m for m in self.models if models is None or m not in models]
        if missing:
            raise PolicyError(f"{self.name}: model(s) {missing} not in the pool {models}")
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

    @property
    def columns(self) -> list[int]:
        """The cascade's models as column indices, in the order they are asked (once fitted)."""
        self._check_fitted()
        return list(self.stages_)

    @property
    def cutoff(self) -> float:
        """The threshold in use, given or tuned: a model answers when its signal reaches it."""
        self._check_fitted()
        return self.threshold_

    def _check_fitted(self) -> None:
        if not hasattr(self, "stages_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() with the pool's models first")

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
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
            raise PolicyError(f"samples must be >= 1, got {samples}")
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
                raise PolicyError(f"{self.name}: no answer observations that vary for {name!r} in this data (it needs "
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

    @property
    def direct(self) -> bool:
        """Whether every query goes straight to the last model: keeping an earlier answer did not
        pay on validation."""
        self._check_fitted()
        return self.direct_

    @property
    def reads_agreement(self) -> bool:
        """Whether a scorer learned from the agreement of several samples, which the gateway
        must then draw (``samples``)."""
        self._check_fitted()
        return any("agreement" in used for used in self.features_.values())

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
        if self.direct:
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
