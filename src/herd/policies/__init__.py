"""Policies turn a router's scores (and model prices) into a choice and a reason; they never see text.

One module per kind, on the contract of ``base.Policy``: ``pointwise`` (each query on its own
scores), ``tuned`` (tuned on held-out scores of training queries), ``cascade`` (models asked in
order), ``agree`` (agreement cascades), ``explore`` (exploration around another policy), and
``specs``, the registry that names them.
"""

from herd.policies.agree import (AGREE_INNER_FOLDS, AGREE_MARGINS, AGREE_SWEEP, AGREE_TOLERANCE, Agree,
                                 _agreement_floats, _AgreementBits, agreement_choice)
from herd.policies.base import Decision, Policy, PolicyError, policy_inputs
from herd.policies.cascade import (ANSWER_FEATURES, SCORER_FOLDS, Cascade, CheckedCascade, _Scorer, cascade_called,
                                   cascade_choice, cascade_thresholds)
from herd.policies.explore import Explore, explore_draw, explore_propensity
from herd.policies.pointwise import ArgMax, CheapestLikely, CostAware, RandomLikely
from herd.policies.specs import (EXPLORE, POLICIES, POLICY_HELP, REGISTRY, make_policy, policy_from_config,
                                 split_explore, split_specs)
from herd.policies.tuned import BUDGET_WEIGHTS, MARGIN_GRID, MIN_TASK_QUERIES, Budget, Prediction, SafeArgMax

# _Scorer: router directories saved before policies became a package pickled it as herd.policies._Scorer.
__all__ = ["AGREE_INNER_FOLDS", "AGREE_MARGINS", "AGREE_SWEEP", "AGREE_TOLERANCE", "ANSWER_FEATURES", "BUDGET_WEIGHTS",
           "EXPLORE", "MARGIN_GRID", "MIN_TASK_QUERIES", "POLICIES", "POLICY_HELP", "REGISTRY", "SCORER_FOLDS",
           "Agree", "ArgMax", "Budget", "Cascade", "CheapestLikely", "CheckedCascade", "CostAware", "Decision",
           "Explore", "Policy", "PolicyError", "Prediction", "RandomLikely", "SafeArgMax", "_AgreementBits", "_Scorer",
           "_agreement_floats", "agreement_choice", "cascade_called", "cascade_choice", "cascade_thresholds",
           "explore_draw", "explore_propensity", "make_policy", "policy_from_config", "policy_inputs", "split_explore", "split_specs"]
