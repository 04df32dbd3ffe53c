"""Agreement cascades and votes over recorded answers, on hand-made tables whose right answers are known."""

import numpy as np
import pandas as pd
import pytest

from herd import metrics
from herd.collect.grading import answer_codes, infer_grader
from herd.data import Outcomes
from herd.evaluation import evaluate
from herd.policies import Agree, agreement_choice, make_policy, policy_from_config
from herd.routers import make_router

MODELS = ["a", "b", "copy-of-a", "noise", "strong"]
COSTS = np.array([1.0, 1.0, 1.0, 0.5, 10.0])


def _table(n=900, seed=0, cheap_agree_when_wrong=False):
    """Answer codes and correctness. Gold is code 0. 'a' and 'b' are right 80% of the time, independently,
    and when wrong give a wrong answer of their own (so their agreement means right) unless
    ``cheap_agree_when_wrong``, where they are right 60% and every cheap model gives the same wrong
    answer. 'copy-of-a' always answers as 'a' (agreeing with it says nothing); 'noise' is right 30%;
    'strong' 90%."""
    rng = np.random.default_rng(seed)
    cheap = 0.6 if cheap_agree_when_wrong else 0.8
    right = {m: rng.random(n) < p for m, p in zip(MODELS, (cheap, cheap, 0.0, 0.3, 0.9))}
    codes = np.zeros((n, len(MODELS)), int)
    for j, m in enumerate(MODELS):
        wrong_code = 1 if cheap_agree_when_wrong and m != "strong" else 10 + j
        codes[:, j] = np.where(right[m], 0, wrong_code)
    codes[:, 2] = codes[:, 0]
    y = (codes == 0).astype(float)
    return y, codes


def test_agreement_choice_takes_the_earliest_agreeing_model_else_the_last():
    codes = np.array([[5, 5, 7, 1], [5, 6, 6, 1], [5, 6, 7, 1], [-1, -1, 3, 1], [2, 3, 2, 1]])
    assert agreement_choice(codes, [0, 1, 2], 2, 3).tolist() == [0, 1, 3, 3, 0]
    assert agreement_choice(codes, [0, 1, 2], 3, 3).tolist() == [3, 3, 3, 3, 3]
    assert agreement_choice(codes, [0, 1], 2, 3).tolist() == [0, 3, 3, 3, 3]  # no answers never agree


def test_chosen_cascade_pairs_independent_models_not_a_copy():
    y, codes = _table()
    tr, te = np.arange(600), np.arange(600, 900)
    p = Agree().fit(None, y[tr], COSTS, MODELS, answers=codes[tr])
    assert not p.direct_ and p.last == "strong"
    assert set(p.first_stage) >= {"a", "b"}  # the copy adds no independent evidence
    assert set(p.first_stage) != {"a", "copy-of-a"}
    choice = p.choose(None, COSTS, codes[te])
    acc = y[te][np.arange(300), choice].mean()
    assert acc >= y[te, 4].mean() - 0.02
    spent = (p.called(choice, len(MODELS)) @ COSTS).mean()
    assert spent < 0.6 * COSTS[4]  # most queries stop at the cheap agreeing pair
    assert p.validation_accepted_ > 0.5


def test_cheap_models_that_agree_on_wrong_answers_send_everything_to_the_strong_model():
    y, codes = _table(cheap_agree_when_wrong=True)
    p = Agree().fit(None, y, COSTS, MODELS, answers=codes)
    assert p.direct_
    assert (p.choose(None, COSTS, codes) == 4).all()
    assert "straight to strong" in p.summary()
    assert (p.called(p.choose(None, COSTS, codes), 5).sum(axis=1) == 1).all()  # one call each


def test_open_only_keeps_closed_models_out_of_the_first_stage():
    y, codes = _table()
    owned = np.array([True, False, True, True, False])
    p = Agree(open_only=True).fit(None, y, COSTS, MODELS, answers=codes, owned=owned)
    assert "b" not in p.first_stage
    with pytest.raises(ValueError, match="open-weights"):
        Agree(open_only=True).fit(None, y, COSTS, MODELS, answers=codes, owned=np.zeros(5, bool))


def test_explicit_cascade_binds_without_data_and_explains_itself():
    p = make_policy("agree:a,b>strong")
    assert p.label == "agree:a,b>strong" and p.need is None
    p.bind(MODELS)
    assert p.first_stage == ["a", "b"] and p.last == "strong" and p.need_ == 2
    d = p.decide(None, MODELS, COSTS, np.array([[0, 0, 0, 3, 0], [0, 1, 0, 3, 0]]))
    assert d.choice.tolist() == [0, 4]
    assert "a, b agree" in d.reasons[0] and "strong answers" in d.reasons[1]
    three = make_policy("agree:a,b,noise>strong@3").bind(MODELS)
    assert three.need_ == 3 and repr(three) == "Agree(models=['a', 'b', 'noise'], then='strong', need=3)"
    assert policy_from_config({"name": "agree", "models": ["a", "b"], "then": "strong", "need": 2,
                               "grader": "number"}).bind(MODELS).need_ == 2


@pytest.mark.parametrize("spec, message", [
    ("agree:a>strong", "2 to 5 distinct models"),
    ("agree:a,b", "'agree', 'agree:open' or"),
    ("agree:a,b>a", "both in the first stage"),
    ("agree:a,b>strong@3", "need must be between 2 and 2"),
])
def test_bad_agree_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        make_policy(spec)


def test_binding_names_models_missing_from_the_pool():
    with pytest.raises(ValueError, match=r"\['zzz'\] not in the pool"):
        make_policy("agree:a,zzz>strong").bind(MODELS)


def test_answer_codes_compare_answers_as_the_grader_does():
    answers = np.array([["18", "18.00", "$18", "19", None]], dtype=object)
    assert answer_codes(answers, "number")[0].tolist() == [0, 0, 0, 1, -1]
    math = np.array([["\\frac{1}{2}", "0.5", "\\dfrac12", "x+1", "x + 1"]], dtype=object)
    c = answer_codes(math, "math")[0]
    assert c[0] == c[1] == c[2] and c[3] == c[4] and c[0] != c[3]
    literal = np.array([["[1, 2]", "[1,2]", "{'b': 1, 'a': 2}", "{'a': 2, 'b': 1}", "'x'"]], dtype=object)
    c = answer_codes(literal, "literal")[0]
    assert c[0] == c[1] and c[2] == c[3] and len(set(c)) == 3
    letters = np.array([["B", "(B)", "b", "C", ""]], dtype=object)
    assert answer_codes(letters, "choice")[0].tolist() == [0, 0, 0, 1, -1]
    assert infer_grader("gsm8k", []) == "number" and infer_grader("agentverse-mgsm", []) == "number"
    assert infer_grader("my-quiz", ["A", "C", "(B)"]) == "choice"
    assert infer_grader("my-sums", ["12", "3.5", "$4"]) == "number"
    assert infer_grader("my-chat", ["Paris", "a dog"]) == "string"


def _frames(n=300):
    y, codes = _table(n)
    queries = pd.DataFrame({"source": "toy", "benchmark": "gsm8k", "qid": [f"q{i}" for i in range(n)],
                            "text": [f"question {i}" for i in range(n)]})
    rows = []
    for i in range(n):
        for j, m in enumerate(MODELS):
            # the right answer spelled differently by different models
            answer = str(7 + codes[i, j]) if codes[i, j] else ["7", "7.00", "7", "$7", "7.0"][j]
            rows.append({"source": "toy", "benchmark": "gsm8k", "qid": f"q{i}", "model": m, "correct": y[i, j],
                         "cost_usd": COSTS[j] * 1e-3, "answer": answer})
    models = pd.DataFrame({"model": MODELS, "source": "toy", "open_weights": [True, True, True, True, False]})
    return Outcomes.from_frames(queries, pd.DataFrame(rows), models), y, codes


def test_evaluation_charges_every_call_and_reports_votes_and_the_share_kept():
    data, y, codes = _frames()
    ev = evaluate(data, [], policy=[make_policy("agree"), make_policy("agree:a,b>strong")], folds=3, sweep=False)
    (b,) = ev.benchmarks
    explicit = b.row("router", "agree:a,b>strong")
    kept = (codes[:, 0] == codes[:, 1])
    assert explicit.accepted == pytest.approx(kept.mean())
    assert explicit.cost_usd == pytest.approx(np.mean(2e-3 + np.where(kept, 0, 10e-3)))
    assert explicit.accuracy == pytest.approx(np.where(kept, y[:, 0], y[:, 4]).mean())
    assert explicit.ownership == pytest.approx(kept.mean())
    chosen = b.row("router", "agree")
    assert chosen.accuracy >= b.row("best-single").accuracy - 0.02 and chosen.cost_usd < 10e-3
    assert [p["tolerance"] for p in b.cascade_curves["agree"]][:2] == [0.0, 0.005]
    vote = b.row("vote", "majority vote (all models)")
    assert vote.cost_usd == pytest.approx(COSTS.sum() * 1e-3)
    assert {r.method for r in b.rows if r.kind == "vote"} == {"majority vote (all models)",
                                                               "majority vote (top 3 on train)"}


def test_vote_of_normalized_answers_differs_from_a_plain_string_vote():
    data, y, codes = _frames(200)
    m = data.matrix()
    assert m.grader == "number"
    plain = pd.factorize(pd.Series(m.answers.ravel()))[0].reshape(m.answers.shape)
    priority = np.arange(len(MODELS))
    normalized = metrics.picked(m.labels, metrics.vote_choice(m.answer_codes, priority)).mean()
    as_strings = metrics.picked(m.labels, metrics.vote_choice(plain, priority)).mean()
    assert as_strings == pytest.approx(m.labels[:, 0].mean())  # 'a' and its copy spell alike: they always win
    assert normalized > as_strings  # "7", "7.00" and "$7" are one answer only once normalized


def test_pool_selection_scores_an_agreement_cascade_on_the_pool_it_tries():
    from herd.select import routed_accuracy

    data, y, _ = _frames()
    m = data.matrix()
    pool = ["a", "b", "noise", "strong"]
    routed, single = routed_accuracy(m, pool, make_router("logistic"), make_policy("agree"), folds=3, seed=0)
    assert routed >= single - 0.03
    sub = m.columns(pool)
    assert sub.answer_codes.shape == (len(y), 4) and sub.models == pool


def test_pool_selection_reports_na_where_an_explicit_cascade_cannot_serve_the_pool():
    from herd.select import routed_accuracy

    data, _, _ = _frames()
    routed, single = routed_accuracy(data.matrix(), ["a", "strong"], make_router("logistic"),
                                     make_policy("agree:a,b>strong"), folds=3, seed=0)
    assert routed is None and 0 < single <= 1


def test_answers_that_defeat_a_grader_key_as_their_text():
    huge = np.array([["1" * 400, "1" * 400, "1e400000", None]], dtype=object)
    for grader in ("number", "math", "literal"):
        codes = answer_codes(huge, grader)[0]
        assert codes[0] == codes[1] and codes[3] == -1
    assert answer_codes(np.array([["3:00 pm", "3:10 pm"]], dtype=object), "number")[0].tolist() == [0, 1]


def test_costs_known_for_few_queries_are_not_shown_or_matched_against():
    from herd.evaluation import MethodResult
    from herd.report import fmt_cost

    r = MethodResult("s", "b", "knn (argmax)", "router", 0.7, 0.000477, True, None, 100, 0.1, "x", cost_coverage=0.035)
    assert fmt_cost(r) == "n/a (4% priced)"
    data, _, _ = _frames()
    o = data.outcomes.copy()
    o.loc[o["model"] == "strong", "cost_usd"] = np.nan  # the best single model has no price
    unpriced = Outcomes.from_frames(data.queries, o, data.models)
    (b,) = evaluate(unpriced, ["logistic"], policy=[make_policy("argmax")], folds=3).benchmarks
    assert b.row("best-single").cost_usd is None
    assert b.row("router", "logistic (argmax)").cost_to_match_best_single is None


def test_bit_tally_equals_the_float_tally_on_right_wrong_outcomes():
    """Right/wrong outcomes are tallied on packed bits; scores in [0, 1] by floats. On right/wrong
    data both must give the same candidates and the same per-fold figures, with folds of unequal
    size (pads), unanswered questions and a pool that skips models."""
    from herd.policies import _agreement_floats, _AgreementBits

    rng = np.random.default_rng(7)
    n, k = 203, 7
    y = (rng.random((n, k)) < 0.6).astype(float)
    codes = rng.integers(-1, 3, size=(n, k))  # -1: no answer
    fold = rng.integers(0, 3, size=n)
    valid = codes.T >= 0
    same = (codes.T[:, None, :] == codes.T[None, :, :]) & valid[:, None, :]
    pool, strong = [5, 1, 3, 0, 6], 2
    floats = _agreement_floats(same, y, fold, 3, pool, strong)
    bits = _AgreementBits(same, y.T > 0.5, fold, 3).candidates(pool, strong)
    assert [(list(map(int, s)), need) for s, need in floats[0]] == [(list(map(int, s)), need) for s, need in bits[0]]
    for a, b in zip(floats[1:], bits[1:]):
        np.testing.assert_array_equal(np.asarray(a, float), b)
