"""Agreement cascades: a first stage of cheap models asked at once, their answer kept when enough
of them agree, else the strong model's."""

from __future__ import annotations

import copy

import numpy as np

from herd.policies.base import Decision, Policy, PolicyError, _argmax_cheapest, _known_costs


# An agreement cascade keeps the strong model's accuracy within this much on validation data.
AGREE_TOLERANCE = 0.005
# How many standard errors of its paired gain over the strong model a first stage must clear on
# the training queries, chosen by inner CV: picking the cheapest of thousands of candidate stages
# favours the lucky ones, and the margin pays for that, most where the stage's gain is noisiest.
AGREE_MARGINS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
# Tolerances of the accuracy-cost curve of agreement cascades in reports.
AGREE_SWEEP = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
AGREE_INNER_FOLDS = 3


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


class Agree(Policy):
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
    needs_fit = True  # fitted to the pool: an explicit cascade binds its names, a chosen one searches
    uses_scores = False  # needs no router: the answers decide
    reads_answers = True

    def __init__(self, models: list[str] | str | None = None, then: str | None = None, need: int | None = None,
                 open_only: bool = False, tolerance: float = AGREE_TOLERANCE, grader: str | None = None):
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",") if m.strip()]
        if models is not None:
            if not 2 <= len(models) <= 5 or len(set(models)) != len(models):
                raise PolicyError(f"agree: the first stage needs 2 to 5 distinct models, got {models}")
            if not then:
                raise PolicyError("agree: name the model to ask when the first stage disagrees ('then')")
            if then in models:
                raise PolicyError(f"agree: {then!r} is both in the first stage and the model asked after it")
            if need is not None and not 2 <= int(need) <= len(models):
                raise PolicyError(f"agree: need must be between 2 and {len(models)} (the first stage), got {need}")
        elif then is not None or need is not None:
            raise PolicyError("agree: 'then' and 'need' go with an explicit first stage ('models')")
        if not 0 <= tolerance < 1:
            raise PolicyError(f"agree: tolerance must be in [0, 1), got {tolerance}")
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
            raise PolicyError("agree: fit needs the pool's model names")
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
            raise PolicyError("agree: the data has no recorded answers to compare (an 'answer' column in the "
                             "outcomes); use 'cascade-check' or 'safe', which need none")
        if self.open_only and (owned is None or not np.asarray(owned).any()):
            raise PolicyError("agree:open: no model in this data is marked open-weights (models.csv: open_weights)")
        self._search(np.asarray(labels, float), np.asarray(answers), costs, owned)
        self._validate(labels, answers, costs)
        return self

    def bind(self, models: list[str]) -> Agree:
        """An explicit cascade resolved against the pool's model names; nothing to learn."""
        if self.models is None:
            raise PolicyError("agree: only an explicit first stage ('models' and 'then') binds without data; "
                             "a chosen one is fitted on outcomes (`herd train --policy agree`)")
        missing = [m for m in [*self.models, self.then] if m not in models]
        if missing:
            raise PolicyError(f"agree: model(s) {missing} not in the pool {list(models)}")
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
            raise PolicyError("agree: choosing needs the first stage's answers")
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
    def direct(self) -> bool:
        """Whether every query goes straight to the strong model (no first stage paid off)."""
        self._check_fitted()
        return self.direct_

    @property
    def quorum(self) -> int:
        """How many first-stage answers must agree for theirs to stand."""
        self._check_fitted()
        return self.need_

    @property
    def reason(self) -> str:
        """Why the cascade is as it is: configured, chosen on training queries, or straight to the strong model."""
        self._check_fitted()
        return self.reason_

    @property
    def stage_columns(self) -> list[int]:
        """The first stage as column indices of the pool it was fitted on."""
        self._check_fitted()
        return list(self.stage_)

    @property
    def last_column(self) -> int:
        """The strong model's column."""
        self._check_fitted()
        return self.last_

    def renamed(self, models: list[str]) -> Agree:
        """A copy that calls the fitted pool's columns ``models`` (the gateway's names for them)."""
        out = copy.copy(self)
        if hasattr(self, "pool_"):
            if len(models) != len(self.pool_):
                raise PolicyError(f"agree: {len(models)} names for a pool of {len(self.pool_)} models")
            out.pool_ = list(models)
        return out

    def stands(self, codes: dict[str, int]) -> str | None:
        """The first-stage model whose answer stands, from answer codes by model name (equal
        codes for answers that grade alike; a model left out gave none), or None: ask the
        strong model."""
        self._check_fitted()
        row = np.full((1, len(self.pool_)), -1)
        for model, code in codes.items():
            row[0, self.pool_.index(model)] = code
        choice = int(self.choose(None, None, row)[0])
        return None if choice == self.last_ else self.pool_[choice]

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


def _agree_called(choice: np.ndarray, stage: list[int], last: int, n_models: int) -> np.ndarray:
    mask = np.zeros((len(choice), n_models), bool)
    mask[:, stage] = True
    mask[:, last] |= np.asarray(choice) == last
    return mask
