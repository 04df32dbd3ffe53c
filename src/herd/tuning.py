"""Fitting inside a training fold: the router on the fold's queries, each policy tuned on held-out
scores of those same queries (an inner cross-validation), so nothing tuned has seen the queries
it is judged on. Blends and `herd train` fit this way; a cross-validation's folds (evaluation,
pool selection) fit through herd.foldfits, which with 4 to 7 folds shares its inner fits
between folds and tunes with ``tune_policies`` here."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from sklearn.base import clone

from herd import metrics
from herd.data import Matrix
from herd.errors import UsageError
from herd.policies import Policy, policy_inputs
from herd.routers.base import Router, out_of_fold_scores


def validation_scores(fitted: Router, proto: Router, train: Matrix, seed: int,
                      sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Held-out scores of the training queries, for tuning a policy: the ones ``fitted`` kept
    from its own inner CV (``auto`` does), else a fresh inner CV of ``proto``."""
    kept = getattr(fitted, "validation_scores_", None)
    return kept if kept is not None else out_of_fold_scores(proto, train, seed, sample_weight=sample_weight)


@dataclass
class InFold:
    """What ``fit_in_fold`` fitted: the router (None where no policy reads scores), the tuned
    policies in the order given, and the queries they were tuned on with the router's
    held-out scores of them (None where none were needed)."""

    router: Router | None
    policies: list[Policy]
    tuned_on: Matrix
    validation: np.ndarray | None

    @property
    def policy(self) -> Policy:
        """The tuned policy, when one was given."""
        if len(self.policies) != 1:
            raise ValueError(f"{len(self.policies)} policies were tuned; read .policies")
        return self.policies[0]


def needs_validation(policies: list[Policy]) -> bool:
    """Whether tuning any of ``policies`` reads a router's held-out scores of training queries."""
    return any(p.needs_fit and p.uses_scores for p in policies)


def fit_in_fold(router_proto: Router | None, policy: Policy | list[Policy], train: Matrix, seed: int = 0, *,
                sample_weight: np.ndarray | None = None, validate: bool = False) -> InFold:
    """Fit a copy of ``router_proto`` on ``train`` and tune a copy of each ``policy`` that needs
    it on the router's held-out scores of ``train`` (policies with nothing to tune are kept as
    they are). No router is fitted where no policy reads scores, unless ``validate``, which
    fits it and computes those scores even when no policy needs them.

    ``sample_weight`` (n_queries, n_models): the router's weights per outcome (see
    ``Router.fit``), for benchmark data with live feedback added. The policies are then tuned
    on the queries with every model's outcome (the benchmark's): a policy compares models on
    one query, which feedback that observed one model cannot show."""
    policies = list(policy) if isinstance(policy, (list, tuple)) else [policy]
    scored = validate or any(p.uses_scores for p in policies)
    if scored and router_proto is None:
        raise ValueError("policies that read a router's scores, and validation, need a router")
    router = clone(router_proto).fit(train, sample_weight=sample_weight) if scored else None
    validation = None
    if router is not None and (validate or needs_validation(policies)):
        validation = validation_scores(router, router_proto, train, seed, sample_weight)
    return tune_policies(router, policies, train, validation, sample_weight)


def tune_policies(router: Router | None, policies: list[Policy], train: Matrix, validation: np.ndarray | None,
                  sample_weight: np.ndarray | None = None) -> InFold:
    """Tune a copy of each policy that needs it on ``validation``, the router's held-out scores
    of ``train`` (see ``fit_in_fold``, which computes them; a cross-validation may bring its own)."""
    tuned_on = train
    if sample_weight is not None:
        full = (np.asarray(sample_weight) > 0).all(axis=1)
        if not full.any():
            raise UsageError("no training query has every model's outcome to tune and validate the policy on; "
                             "add benchmark data beside the feedback")
        tuned_on = train.take(np.flatnonzero(full))
        validation = None if validation is None else validation[full]
    costs = metrics.mean_cost_per_model(tuned_on.cost)
    tuned = [copy.deepcopy(p).fit(validation if p.uses_scores else None, tuned_on.labels, costs, tuned_on.models,
                                  **policy_inputs(p, tuned_on.observed, tuned_on.answer_codes, tuned_on.owned,
                                                  tuned_on.tasks, fit=True))
             if p.needs_fit else p for p in policies]
    return InFold(router, tuned, tuned_on, validation)
