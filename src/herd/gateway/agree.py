"""An agreement cascade in the gateway: the first stage is asked together, each reply's final
answer is extracted with the policy's grader, and a reply stands if enough of them agree, by
the same rule offline evaluation applies (``agreement_choice``); else the strong model answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING


from herd.collect.grading import Grader, get_grader
from herd.gateway.cascade import Checked, plus, reply_text, sample_body
from herd.gateway.chat import ChatRequest
from herd.gateway.selection import Plan
from herd.policies import Agree

if TYPE_CHECKING:
    from herd.gateway.dispatch import Dispatcher


@dataclass
class Agreement(Checked):
    """What the first stage did: per model its extracted answer or its error (``steps``), every
    call, their cost, and the reply that stands (None: ask the strong model)."""

    need: int = 2

    @property
    def agreed(self) -> bool:
        return self.answer is not None

    def describe(self, name: str) -> dict:
        return {"agree": {"first_stage": self.steps, "need": self.need, "agreed": self.agreed, "stands": name,
                          "first_stage_cost_usd": self.cost}}

    def logged(self) -> dict:
        # Which models answered, not what: an answer (a whole reply under the exact grader) is
        # text about the user's question, and the log holds none.
        return {"agree": {"asked": [s["model"] for s in self.steps],
                          "answered": [s["model"] for s in self.steps if "answer" in s], "agreed": self.agreed}}

    def headers(self) -> dict:
        answers = "; ".join(f"{s['model']}={s['answer']}" if "answer" in s else f"{s['model']} failed: {s['error']}"
                            for s in self.steps)
        return {"x-herd-agreed": "yes" if self.agreed else "no", **({"x-herd-answers": answers} if answers else {})}


async def ask_first_stage(dispatch: Dispatcher, req: ChatRequest, plan: Plan) -> Agreement:
    """Call the plan's first-stage models at once, each through the gateway's usual path
    (retries, circuit breakers, timeouts, cost), one non-streamed choice each. A failed call
    is an answer missing, which counts against agreement, never a lost request."""
    policy: Agree = plan.agree_policy
    grader = get_grader(policy.grader)
    done = Agreement(need=policy.quorum)
    if not plan.fan_out:  # the plan goes straight to the strong model and says why
        return done
    body = sample_body(req.body, 0, 1)
    calls = await asyncio.gather(*(dispatch.call_in_order([m], body, False) for m in plan.fan_out))
    replies, answers = {}, {}
    for model, (_, outcome, attempts) in zip(plan.fan_out, calls):
        done.attempts += attempts
        if outcome is None or outcome.kind != "ok":
            done.steps.append({"model": model, "error": outcome.detail if outcome else attempts[-1]["outcome"]})
            continue
        done.cost = plus(done.cost, dispatch.account_reply(model, outcome.data))
        replies[model] = outcome.data
        answers[model] = grader.extract(reply_text(outcome.data))
        done.steps.append({"model": model, "answer": answers[model]})
    done.model = agreed_model(policy, grader, answers)
    if done.model is not None:
        done.answer = replies[done.model]
    return done


def agreed_model(policy: Agree, grader: Grader, answers: dict[str, str | None]) -> str | None:
    """The first-stage model whose reply stands, or None to ask the strong model: equal grader
    keys, equal answer codes; a model that gave no answer or was not asked has none."""
    codes, seen = {}, {}
    for model, answer in answers.items():
        key = grader.keyed(answer)
        if key is not None:
            codes[model] = seen.setdefault(key, len(seen))
    return policy.stands(codes)
