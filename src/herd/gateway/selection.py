"""Which models may answer a request, which one should, and in what order to fall back."""

from __future__ import annotations

import copy
import dataclasses
import difflib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from herd import artifact
from herd.blend import Blend
from herd.collect.grading import GRADERS, get_grader
from herd.gateway.chat import ChatRequest
from herd.gateway.errors import GatewayError
from herd.policies import Agree, explore_propensity, policy_from_config, policy_inputs, split_explore
from herd.pool import PoolConfig, PoolError

DEFAULT = "herd"
# A router that scores a query in less CPU time than this runs on the gateway's event loop:
# handing it to a thread would cost more than it takes. Slower ones (embeddings) go to a thread.
QUICK_ROUTER_MS = 1.0


@dataclass
class Plan:
    candidates: list[str]  # call order: the choice first, then the fallbacks
    reason: str
    policy: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    ineligible: dict[str, str] = field(default_factory=dict)
    router_ms: float = 0.0
    # A checked cascade: these models answer first, in turn, and an answer stands only if the
    # policy's scorer trusts it; the candidates come after.
    checks: list[str] = field(default_factory=list)
    check_policy: object = None
    score_row: np.ndarray | None = None  # the router's scores in its model order
    # An agreement cascade: these models answer first, together, and a reply stands if enough
    # of their answers agree; the candidates come after.
    fan_out: list[str] = field(default_factory=list)
    agree_policy: object = None
    fallback: str | None = None  # set when a later candidate answered: who failed first and how
    # The action set (eligible models whose backend is not resting), the probability the policy
    # gave the first choice, and whether an exploration draw made it: what off-policy evaluation reads.
    allowed: list[str] = field(default_factory=list)
    propensity: float = 1.0
    explored: bool = False

    def fell_back(self, name: str, attempts: list[dict]) -> Plan:
        """This plan as it went when ``name``, not the first candidate, answered: the reason says
        which models failed and how, then what was planned."""
        failed: dict[str, list[str]] = {}
        for a in attempts:
            if a["model"] != name:
                failed.setdefault(a["model"], []).append(a["outcome"])
        why = "; ".join(f"{m}: {outcomes[-1]}" + (f" ({len(outcomes)} calls)" if len(outcomes) > 1 else "")
                        for m, outcomes in failed.items())
        return dataclasses.replace(self, fallback=f"from {why}",
                                   reason=f"fell back to {name} ({why}); the plan was: {self.reason}")

    @property
    def first(self) -> str:
        """The model asked first: a cascade's first model, else the routed choice."""
        return (self.checks or self.fan_out or self.candidates)[0]

    def describe(self) -> dict:
        return {"policy": self.policy, "reason": self.reason, "fallback": self.fallback, "scores": self.scores,
                "ineligible": self.ineligible, "router_ms": round(self.router_ms, 3), "propensity": self.propensity,
                "explored": self.explored}


class Selector:
    """Routes with a trained router and named policies; without a router, the pool's order is
    the order of preference."""

    def __init__(self, pool: PoolConfig, trained: artifact.TrainedRouter | None = None,
                 policies: dict[str, object] | None = None, explore: dict[str, float] | None = None,
                 seed: int | None = None):
        self.pool = pool
        self.trained = trained
        self.policies = policies or {}
        self.explore = {route: eps for route, eps in (explore or {}).items() if eps > 0}  # route -> exploration rate
        self.rng = random.Random(seed)  # one draw per request: Python's generator costs less than numpy's here
        self.circuits: dict = {}  # model -> its backend's circuit, set by the gateway: a resting model is not allowed
        self.names = pool.names
        self.by_name = {m.name: m for m in pool.models}
        self.quick = trained is None  # a router is slow until warm_up has timed it
        if trained is not None:
            self.router_models = list(trained.models)
            # Sets, not lists: every routed request checks membership.
            self.scored = {m for m in self.router_models if m in set(self.names)}
            self.unscored = [m for m in self.names if m not in set(self.router_models)]

    @classmethod
    def from_config(cls, pool: PoolConfig, router_dir: Path | None, explore: float | None = None,
                    seed: int | None = None) -> Selector:
        """``explore`` (``herd serve --explore``) is the exploration rate of every route whose
        policy picks one model and sets no rate of its own; ``seed`` fixes the draws."""
        trained = None if router_dir is None else _load_router(router_dir, pool)
        specs = [(DEFAULT, pool.policy), *((f"{DEFAULT}:{k}", v) for k, v in pool.policies.items())]
        policies, rates = {}, {}
        for name, spec in specs:
            try:
                spec, rates[name] = split_explore(spec)
            except ValueError as e:
                raise PoolError(f"policy {name!r}: {e}") from None
            if rates[name] is not None and (Blend.is_spec(spec) or _is_agree(spec)):
                raise PoolError(f"policy {name!r}: a blend draws its own models and an agreement cascade asks several; "
                                "exploration wraps a policy that picks one model from the router's scores")
            # Blends draw per turn and agreement cascades read answers: neither needs a router.
            # Every other policy turns a router's scores into a choice.
            if Blend.is_spec(spec):
                policies[name] = _blend(name, spec, pool)
            elif _is_agree(spec):
                policies[name] = _agree(name, spec, pool, trained)
            elif trained is not None:
                policies[name] = _routed(name, spec, trained, pool)
            elif spec is not None:
                raise PoolError("the pool file sets a policy but no router; add 'router: DIR' (from `herd train`) "
                                "or use a blend or an agreement cascade that names its models, which need none")
            if rates[name] is not None and not _picks_one(policies.get(name)):
                raise PoolError(f"policy {name!r}: {policies[name].label} asks several models; exploration wraps a "
                                "policy that picks one model from the router's scores")
        for name, _ in specs:  # without a router, the default route explores around the pool's order
            if explore is not None and rates[name] is None and _picks_one(policies.get(name)):
                rates[name] = explore
        return cls(pool, trained, policies, {k: v for k, v in rates.items() if v is not None}, seed)

    def warm_up(self) -> None:
        """Load the router's features (e.g. the embedding model) before the first request, and
        time a few queries: a router that takes less CPU than QUICK_ROUTER_MS is ``quick``."""
        if self.trained is None:
            return
        predict = self.trained.router.predict_scores
        predict(["warm-up"])
        took = []
        for i in range(5):  # new texts each time: an embedder answers a text it has seen from memory
            started = time.thread_time()  # CPU time: on a busy machine wall time says more about the neighbours
            predict([f"warm-up query {i}"])
            took.append((time.thread_time() - started) * 1000)
        self.quick = min(took) < QUICK_ROUTER_MS

    @property
    def route_names(self) -> list[str]:
        return list(self.policies) if DEFAULT in self.policies else [DEFAULT, *self.policies]

    def plan(self, req: ChatRequest) -> Plan:
        plan = self._plan(req)
        given = set(plan.allowed or plan.candidates)  # in the pool's order, so logs compare
        plan.allowed = [m for m in self.names if m in given and not self._resting(m)]
        eps = self.explore.get(req.model)
        return plan if eps is None else self._explore(plan, eps)

    def _explore(self, plan: Plan, eps: float) -> Plan:
        """With probability ``eps``, a uniform draw among the allowed models in place of the
        policy's own pick, which becomes the first fallback."""
        allowed = plan.allowed
        # The policy's own pick is the first candidate a call can reach: were a resting model
        # first, every request not explored would go on to the next one, at a probability
        # logged for no model.
        own = next((m for m in plan.candidates if m in allowed), plan.candidates[0])
        if own != plan.candidates[0]:
            plan.reason += f" ({', '.join(plan.candidates[:plan.candidates.index(own)])} resting: {own} first)"
            plan.candidates = [own, *(m for m in plan.candidates if m != own)]
        plan.explored = bool(allowed) and self.rng.random() < eps
        pick = self.rng.choice(allowed) if plan.explored else own
        plan.propensity = float(explore_propensity(eps, pick == own, pick in allowed, len(allowed)))
        plan.policy = f"{plan.policy}+explore:{eps:g}" if plan.policy else f"explore:{eps:g}"
        if plan.explored:
            plan.candidates = [pick, *(m for m in plan.candidates if m != pick)]
            plan.reason = (f"explored ({eps:g}): drew {pick} uniformly among {len(allowed)} allowed models; "
                           f"the policy's own pick: {plan.reason}")
        return plan

    def _plan(self, req: ChatRequest) -> Plan:
        ineligible = {m.name: why for m in self.pool.models if (why := self._ineligible(m, req))}
        if req.model in self.names:
            if req.model in ineligible:
                raise GatewayError(400, f"model {req.model!r} cannot take this request: {ineligible[req.model]}",
                                   param="model", code="model_not_eligible")
            return Plan([req.model], "requested by name", ineligible=ineligible)
        if req.model != DEFAULT and req.model not in self.policies:
            raise GatewayError(404, f"model {req.model!r} is not served here; use one of {self.route_names + self.names}",
                               param="model", code="model_not_found")
        eligible = [m for m in self.names if m not in ineligible]
        if not eligible:
            detail = "; ".join(f"{k}: {v}" for k, v in ineligible.items())
            raise GatewayError(400, f"no model in the pool can take this request ({detail})", code="no_eligible_model")
        policy = self.policies.get(req.model)
        if isinstance(policy, Blend):
            return self._blend(req, policy, eligible, ineligible)
        if isinstance(policy, Agree):
            return self._agree(req, policy, eligible, ineligible)
        if self.trained is None:
            return Plan(eligible, "no router configured: first eligible model in the pool's order", ineligible=ineligible)
        return self._route(req, policy, ineligible)

    def _blend(self, req: ChatRequest, blend: Blend, eligible: list[str], ineligible: dict[str, str]) -> Plan:
        """A per-turn draw among the blend's eligible models, keyed by the session and the turn, so a
        conversation replayed gets the same models; the others follow as fallbacks."""
        members = [m for m in blend.models or self.names if m not in ineligible]
        if not members:
            detail = "; ".join(f"{m}: {ineligible[m]}" for m in blend.models)
            raise GatewayError(400, f"no model in the blend can take this request ({detail})", code="no_eligible_model")
        # Drawn among the members whose backends are not resting, so the draw's probability is
        # that of the model that answers.
        members = [m for m in members if not self._resting(m)] or members
        pick, reason = blend.pick(members, req.session, req.turn)
        rest = [m for m in members if m != pick] + [m for m in eligible if m not in members]
        return Plan([pick, *rest], reason, blend.label, ineligible=ineligible, allowed=members,
                    propensity=blend.probability(members, pick))

    def _resting(self, model: str) -> bool:
        """Whether the model's backend rests after failures (its circuit is open)."""
        circuit = self.circuits.get(model)
        return circuit is not None and circuit.state == "open"

    def _agree(self, req: ChatRequest, policy: Agree, eligible: list[str], ineligible: dict[str, str]) -> Plan:
        """An agreement cascade: its eligible first-stage models together, then the strong model
        (or, if it cannot take the request, the best eligible model), then the other eligible ones."""
        stage = [] if policy.direct else [m for m in policy.first_stage if m not in ineligible]
        others = [m for m in eligible if m not in stage]
        strong = policy.last if policy.last not in ineligible else self._best_of(req, others or stage)
        plan = Plan([strong, *(m for m in others + stage if m != strong)], "", policy.label, ineligible=ineligible,
                    agree_policy=policy)
        skipped = [m for m in ([] if policy.direct else policy.first_stage) if m in ineligible]
        if policy.direct:
            plan.reason = f"agree: straight to {strong}: {policy.reason}"
        elif len(stage) < policy.quorum:
            plan.reason = (f"agree: only {len(stage)} of the first stage ({', '.join(policy.first_stage)}) can take "
                           f"this request, fewer than the {policy.quorum} that must agree: straight to {strong}")
        elif (over := self._over_ceiling(req, [*stage, strong])) is not None:
            plan.reason = f"agree: straight to {strong}: {over}"
        else:
            plan.fan_out = stage
            plan.reason = (f"agree: ask {', '.join(stage)} together; keep an answer {policy.quorum} of them give, "
                           f"else {strong}")
        if skipped:
            plan.reason += " (" + "; ".join(f"{m} ruled out: {ineligible[m]}" for m in skipped) + ")"
        if strong != policy.last:
            plan.reason += f"; {policy.last} cannot take this request ({ineligible[policy.last]}), so {strong} stands in"
        return plan

    def _best_of(self, req: ChatRequest, names: list[str]) -> str:
        """The router's highest P(correct) among ``names`` (cheaper on ties); without a router or
        scores for them, the first in the pool's order."""
        scored = [m for m in names if self.trained is not None and m in self.scored]
        if not scored:
            return names[0]
        scores = dict(zip(self.router_models, self.trained.router.score_one(req.router_text, req.options.task)))
        cost = {m: np.nan_to_num(self.estimate_cost(self.by_name[m], req), nan=np.inf) for m in scored}
        return max(scored, key=lambda m: (scores[m], -cost[m]))

    def _over_ceiling(self, req: ChatRequest, called: list[str]) -> str | None:
        """Why asking all of ``called`` could break the request's cost ceiling, if it could: the
        ceiling bounds the request, not each call."""
        ceiling = req.options.max_cost_usd
        if ceiling is None:
            return None
        worst = sum(self.estimate_cost(self.by_name[m], req) for m in called)
        return None if worst <= ceiling else f"the first stage and {called[-1]} could cost ${worst:.2g}, over the ceiling ${ceiling:g}"

    def _route(self, req: ChatRequest, policy, ineligible: dict[str, str]) -> Plan:
        started = time.perf_counter()
        task = req.options.task
        scores = self.trained.router.score_one(req.router_text, task)
        router_ms = (time.perf_counter() - started) * 1000
        models = self.router_models
        # Python lists where one row is read item by item: NumPy's per-call cost outweighs its speed here.
        is_ok = [m in self.scored and m not in ineligible for m in models]
        ok = np.array(is_ok)
        unscored = [m for m in self.unscored if m not in ineligible]
        listed = scores.tolist()
        shown = {m: round(s, 4) for m, s in zip(models, listed) if m in self.scored}
        plan = Plan([], "", policy.label, shown, ineligible, router_ms)
        if not any(is_ok):
            plan.candidates, plan.reason = unscored, "no model the router scores is eligible: first eligible model in the pool's order"
            return plan
        costs = self._costs(req, models, ok)
        if policy.post_call:
            return self._checked(plan, policy, scores, costs, ok)
        anchor = policy.anchor(task)
        if anchor is not None and not ok[anchor]:
            first = _best(scores, costs, ok)
            plan.reason = (f"best single model {models[anchor]} cannot take this request "
                           f"({ineligible.get(models[anchor], 'not in the pool')}); "
                           f"highest P(correct) among eligible: {models[first]} {scores[first]:.2f}")
        else:
            decision = policy.decide(np.where(ok, scores, -np.inf)[None, :], models, costs,
                                     **policy_inputs(policy, tasks=[task]))
            first, plan.reason = int(decision.choice[0]), decision.reasons[0]
            if not ok[first]:  # e.g. a cascade whose last model is ruled out for this request
                chosen, first = models[first], _best(scores, costs, ok)
                plan.reason = (f"the policy's choice {chosen} cannot take this request "
                               f"({ineligible.get(chosen, 'not in the pool')}); "
                               f"highest P(correct) among eligible: {models[first]} {scores[first]:.2f}")
        cost_list = costs.tolist()
        rest = sorted((i for i, good in enumerate(is_ok) if good and i != first), key=lambda i: (-listed[i], cost_list[i]))
        plan.candidates = [models[first]] + [models[i] for i in rest] + unscored
        return plan

    def _checked(self, plan: Plan, policy, scores: np.ndarray, costs: np.ndarray, ok: np.ndarray) -> Plan:
        """A cascade that reads answers: its eligible models before the last are checked in turn;
        the last eligible one, then the others by P(correct), take what they pass on."""
        models = self.router_models
        stages = [i for i in policy.columns if ok[i]]
        last = stages[-1] if stages else _best(scores, costs, ok)
        rest = sorted((i for i in np.flatnonzero(ok) if i not in stages), key=lambda i: (-scores[i], costs[i]))
        plan.checks = [] if policy.direct else [models[i] for i in stages[:-1]]
        plan.check_policy, plan.score_row = policy, scores
        plan.candidates = [models[last]] + [models[i] for i in rest] + [m for m in self.unscored if m not in plan.ineligible]
        skipped = [models[i] for i in policy.columns if not ok[i]]
        plan.reason = (f"cascade-check: {', '.join(plan.checks)} answer(s) first, each kept if its P(right) >= "
                       f"{policy.cutoff:.3g}; else {models[last]}" if plan.checks
                       else f"cascade-check: straight to {models[last]} (no earlier answer was worth keeping on "
                            "validation)" if policy.direct
                       else f"cascade-check: only {models[last]} of the cascade can take this request")
        if skipped:
            plan.reason += f" ({', '.join(skipped)} ruled out)"
        return plan

    def _costs(self, req: ChatRequest, models: list[str], ok: np.ndarray) -> np.ndarray:
        """This request's estimated cost on each model from the pool's prices; where an eligible
        model has no price, the router's per-query means from its training data for all."""
        est = np.array([self.estimate_cost(self.by_name[m], req) if m in self.scored else np.nan
                        for m in models], float)
        return est if not np.isnan(est[ok]).any() else self.trained.model_costs

    def estimate_cost(self, m, req: ChatRequest) -> float:
        output = (req.max_tokens or self.pool.gateway.default_output_tokens) * req.n
        cost = m.cost(req.prompt_tokens_estimate(), output)
        return np.nan if cost is None else cost

    def _ineligible(self, m, req: ChatRequest) -> str | None:
        o = req.options
        if m.name in o.exclude:
            return "excluded by the request"
        missing = [t for t in o.tags if t not in m.tags]
        if missing:
            return f"lacks tag(s) {missing}"
        if m.context_window is not None and req.window_tokens() > m.context_window:
            return f"needs ~{req.window_tokens()} tokens, context window is {m.context_window}"
        if o.max_cost_usd is not None:
            cost = self.estimate_cost(m, req)
            if np.isnan(cost):
                return "no price in the pool file, so the cost ceiling cannot be checked"
            if cost > o.max_cost_usd:
                return f"estimated ${cost:.2g} exceeds the ceiling ${o.max_cost_usd:g}"
        return None


def _load_router(router_dir: Path, pool: PoolConfig) -> artifact.TrainedRouter:
    """The router with its models under their pool names. Every model it scores must be in the
    pool (by name or ``router_name``) or listed in ``not_served``: a model missing by a spelling
    (gpt-4o for gpt-4o-2024-08-06) could otherwise never be chosen, and nothing would say so."""
    try:
        trained = artifact.load(router_dir)
    except artifact.ArtifactError as e:
        raise PoolError(f"router: {e}") from None
    to_pool = pool.by_router_name
    missing = [m for m in trained.models if m not in to_pool and m not in pool.not_served]
    if missing:
        unknown = [n for r, n in to_pool.items() if r not in trained.models]
        hints = []
        for m in missing:
            close = difflib.get_close_matches(m, unknown, n=1, cutoff=0.5)
            hints.append(f"{m} (closest in the pool: {close[0]})" if close else m)
        raise PoolError(f"router {router_dir} scores model(s) the pool does not name: {'; '.join(hints)}. "
                        f"Pool models the router does not know: {unknown or 'none'}. Name each pool model as the "
                        "router does, map it with 'router_name: NAME' on the pool model, or list the router's "
                        "models this pool leaves out on purpose under 'not_served:'")
    if not any(m in to_pool for m in trained.models):
        raise PoolError(f"router {router_dir} scores {trained.models}, none of which is in the pool {pool.names}")
    renamed = dataclasses.replace(trained, models=[to_pool.get(m, m) for m in trained.models])
    if isinstance(trained.policy, Agree):  # it names its stages
        renamed.policy = trained.policy.renamed(renamed.models)
    return renamed


def _routed(name: str, spec, trained: artifact.TrainedRouter, pool: PoolConfig):
    """The trained policy, or another tuned on the router's validation scores."""
    try:
        policy = trained.policy if spec in (None, "trained") else trained.fit_policy(policy_from_config(spec))
    except (ValueError, TypeError) as e:
        raise PoolError(f"policy {name!r}: {e}") from None
    if isinstance(policy, Agree):  # `herd train --policy agree` chose this cascade
        return _servable_agree(name, policy, pool)
    if policy.post_call:
        _check_answer_reading(name, policy)
    return policy


def _picks_one(policy) -> bool:
    """Whether a route's policy picks one model (None: the pool's order), so it can explore."""
    return policy is None or policy.picks_from_scores


def _is_agree(spec) -> bool:
    if isinstance(spec, dict):
        return spec.get("name") == "agree"
    return isinstance(spec, str) and (spec == "agree" or spec.startswith("agree:"))


def _agree(name: str, spec, pool: PoolConfig, trained: artifact.TrainedRouter | None) -> Agree:
    """An agreement cascade from the pool file: one that names its models is bound to the pool
    as it is; one that does not is the cascade `herd train --policy agree` chose, read from the
    router directory, with the grader the pool file names."""
    try:
        policy = policy_from_config(spec)
        if policy.models is not None:
            policy.bind(pool.names)
    except (ValueError, TypeError) as e:
        raise PoolError(f"policy {name!r}: {e}") from None
    if policy.models is not None:
        return _servable_agree(name, policy, pool)
    if trained is None or not isinstance(trained.policy, Agree):
        found = "there is no router" if trained is None else f"the router was trained with {trained.policy.label!r}"
        raise PoolError(f"policy {name!r}: an agree policy without 'models' is the one `herd train --policy agree` "
                        f"chose, but {found}; name the first stage ('models', 'then') or serve such a router")
    chosen = copy.copy(trained.policy)
    chosen.grader = policy.grader or chosen.grader
    return _servable_agree(name, chosen, pool)


def _servable_agree(name: str, policy: Agree, pool: PoolConfig) -> Agree:
    """An agreement cascade the gateway can run: its models in the pool, a grader to compare answers."""
    missing = [m for m in [*([] if policy.direct else policy.first_stage), policy.last] if m not in pool.names]
    if missing:
        raise PoolError(f"policy {name!r}: model(s) {missing} of the agreement cascade are not in the pool {pool.names}")
    if policy.grader is None:
        raise PoolError(f"policy {name!r}: an agreement cascade compares answers with a grader; name one of "
                        f"{sorted(GRADERS)} in the pool file, e.g. {{name: agree, models: [A, B], then: C, "
                        "grader: number}, or {name: agree, grader: number} for the router's own cascade")
    try:
        get_grader(policy.grader)
    except ValueError as e:
        raise PoolError(f"policy {name!r}: {e}") from None
    return policy


def _blend(name: str, spec, pool: PoolConfig) -> Blend:
    try:
        blend = Blend.from_config(spec)
    except (ValueError, TypeError) as e:
        raise PoolError(f"policy {name!r}: {e}") from None
    unknown = [m for m in blend.models if m not in pool.names]
    if unknown:
        raise PoolError(f"policy {name!r}: blend model(s) {unknown} are not in the pool {pool.names}")
    return blend


def _check_answer_reading(name: str, policy) -> None:
    """A checked cascade must read answers the way its scorer learned to."""
    try:
        get_grader(policy.grader)
    except ValueError as e:
        raise PoolError(f"policy {name!r}: {e}") from None
    if policy.reads_agreement and policy.samples < 2:
        raise PoolError(f"policy {name!r}: its answer scorer was trained on the agreement of several samples; "
                        "set 'samples' (2 or more, as many as the data was collected with)")


def _best(scores: np.ndarray, costs: np.ndarray, ok: np.ndarray) -> int:
    masked = np.where(ok, scores, -np.inf)
    top = masked >= masked.max() - 1e-12
    return int(np.argmin(np.where(top, np.nan_to_num(costs, nan=np.inf), np.inf)))
