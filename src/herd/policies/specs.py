"""Policies by name: a spec string ('safe', 'cascade:a,b@0.8', 'safe+explore:0.05') or a config
mapping makes a policy; the registry is the one list of them."""

from __future__ import annotations

import inspect
import re

from herd.policies.agree import Agree
from herd.policies.base import Policy, PolicyError
from herd.policies.cascade import Cascade, CheckedCascade
from herd.policies.explore import Explore
from herd.policies.pointwise import ArgMax, CheapestLikely, CostAware, RandomLikely
from herd.policies.tuned import Budget, Prediction, SafeArgMax

# name -> (class, the spec forms it takes): spec parsing, errors and the CLI's help read these.
REGISTRY: dict[str, tuple[type[Policy], str]] = {
    "argmax": (ArgMax, "argmax"),
    "safe": (SafeArgMax, "safe (margin tuned by inner CV), safe:MARGIN"),
    "cost-aware": (CostAware, "cost-aware:WEIGHT"),
    "budget": (Budget, "budget:USD_PER_QUERY, budget:MODEL:SHARE"),
    "random-likely": (RandomLikely, "random-likely[:T]"),
    "sorted": (CheapestLikely, "sorted[:T]"),
    "prediction": (Prediction, "prediction (a classifier over the score vector)"),
    "cascade": (Cascade, "cascade:CHEAP,...,STRONG[@T] (threshold tuned by inner CV unless given; give a cascade "
                         "as its own --policy)"),
    "cascade-check": (CheckedCascade, "cascade-check:CHEAP,...,STRONG[@T] (reads each answer: length, sample "
                                      "agreement)"),
    "agree": (Agree, "agree (an agreement cascade chosen on training answers), agree:open (open-weights first "
                     "stage), agree:M1,M2[,M3]>STRONG[@NEED]"),
}
POLICIES = {name: cls for name, (cls, _) in REGISTRY.items()}
EXPLORE = "+explore:"
POLICY_HELP = (", ".join(forms for _, forms in REGISTRY.values()) + f"; after a policy that picks one model, "
               f"{EXPLORE}EPS sends that share of queries to a model drawn uniformly (seeded), e.g. safe{EXPLORE}0.05")


def split_specs(values: list[str]) -> list[str]:
    """Specs from comma-separated lists, except that a cascade's model list ('cascade:a,b',
    'agree:a,b>c') stays whole: a cascade runs to the end of its list."""
    specs = []
    for item in values:
        found = re.search(r"cascade(-check)?:|agree:(?=[^:>]*>)", item)
        head, cascade = (item[:found.start()], item[found.start():]) if found else (item, "")
        specs += [v.strip() for v in head.split(",") if v.strip()]
        if cascade:
            specs.append(cascade.strip())
    return specs


def make_policy(spec: str) -> Policy:
    """A policy from its spec string ('safe', 'cascade:small,big@0.8', 'safe+explore:0.05'; every
    form is in ``REGISTRY``, listed by ``POLICY_HELP``); a bad spec raises PolicyError (a ValueError) saying what
    is wrong."""
    spec, eps = split_explore(spec)
    if eps is not None:
        return Explore(make_policy(spec), eps)
    try:
        return _parse_policy(spec)
    except ValueError as e:
        text = str(e)
        if repr(spec) in text:
            raise
        raise PolicyError(f"policy {spec!r}: {text.removeprefix(spec.partition(':')[0] + ': ')}") from None


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
            raise PolicyError(f"policy {spec!r}: give budget:USD_PER_QUERY or budget:MODEL:SHARE") from None
        return Budget(max_share=value, model=model) if model else Budget(max_cost=value)
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {spec!r}; choose from {sorted(POLICIES)} (e.g. 'safe', 'cost-aware:0.2')")
    if not arg:
        if name in _NEEDS_NUMBER:
            raise PolicyError(f"policy {spec!r} needs a number: {_NEEDS_NUMBER[name]}")
        return POLICIES[name]()
    if name == "argmax":
        raise PolicyError("policy 'argmax' takes no parameter")
    try:
        value = float(arg)
    except ValueError:
        raise PolicyError(f"policy {spec!r}: {arg!r} is not a number") from None
    return POLICIES[name](value)


def _agree_spec(spec: str, arg: str) -> Agree:
    """'agree', 'agree:open', 'agree:a,b[,c]>strong[@need]'."""
    if arg in ("", "open"):
        return Agree(open_only=arg == "open")
    first, sep, rest = arg.partition(">")
    if not sep or not first or not rest:
        raise PolicyError(f"policy {spec!r}: give 'agree', 'agree:open' or 'agree:M1,M2[,M3]>STRONG[@NEED]'")
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


def split_explore(spec: str | dict | None) -> tuple[str | dict | None, float | None]:
    """A policy spec without its exploration rate, and the rate (None when it does not explore):
    'safe+explore:0.05' or ``{name: safe, explore: 0.05}``."""
    if isinstance(spec, dict):
        rest = {k: v for k, v in spec.items() if k != "explore"}
        return rest, None if "explore" not in spec else _rate(spec["explore"], f"policy {spec.get('name')!r}: explore")
    if not isinstance(spec, str) or EXPLORE not in spec:
        if isinstance(spec, str) and spec.startswith("explore"):
            raise PolicyError(f"policy {spec!r}: exploration wraps a policy; write it after one, e.g. "
                             "'safe+explore:0.05' or 'trained+explore:0.05'")
        return spec, None
    base, _, rate = spec.rpartition(EXPLORE)
    if not base:
        raise PolicyError(f"policy {spec!r}: exploration wraps a policy; write it after one, e.g. 'safe+explore:0.05'")
    if EXPLORE in base:  # the inner draw would be logged under the outer rate alone
        raise PolicyError(f"policy {spec!r}: one exploration rate per policy, e.g. 'safe+explore:0.05'")
    return base, _rate(rate, f"policy {spec!r}")


def _rate(value, where: str) -> float:
    try:
        eps = float(value)
    except (TypeError, ValueError):
        eps = None
    if isinstance(value, bool) or eps is None or not 0 <= eps <= 1:
        raise PolicyError(f"{where}: the exploration rate is a probability between 0 and 1 (e.g. 0.05); got {value!r}")
    return eps


def policy_from_config(spec: str | dict) -> Policy:
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
        raise PolicyError(f"policy needs 'name', one of {sorted(POLICIES)}; got {name!r}")
    cls = POLICIES[name]
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise PolicyError(f"policy {name!r} takes {accepted or 'no parameters'}, not {unknown}")
    return cls(**params)
