import numpy as np
import pytest

from herd import metrics

CORRECT = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]], float)
COST = np.array([[1.0, 2.0, 3.0]] * 4)


def test_picked_and_accuracy():
    choice = np.array([0, 1, 2, 2])
    assert metrics.picked(CORRECT, choice).tolist() == [1, 1, 0, 0]
    assert metrics.accuracy(metrics.picked(CORRECT, choice)) == 0.5


def test_oracle_takes_cheapest_right_model_and_cheapest_when_none_is_right():
    assert metrics.oracle_accuracy(CORRECT) == 0.75
    assert metrics.oracle_choice(CORRECT, COST).tolist() == [0, 1, 0, 0]
    dearer_first = COST[:, ::-1].copy()
    assert metrics.oracle_choice(CORRECT, dearer_first).tolist() == [0, 1, 2, 1]


def test_oracle_ranks_unpriced_models_last():
    cost = np.array([[np.nan, 2.0, 3.0]] * 4)
    assert metrics.oracle_choice(CORRECT, cost).tolist() == [0, 1, 1, 1]


def test_random_is_the_expected_value():
    acc, cost = metrics.random_expected(CORRECT, COST)
    assert acc == pytest.approx(4 / 12)
    assert cost == pytest.approx(2.0)
    _, cost = metrics.random_expected(CORRECT, np.array([[np.nan, 2.0, 4.0]] * 4))
    assert cost == pytest.approx(3.0)


def test_best_model_breaks_ties_by_cost():
    assert metrics.best_model(CORRECT) == 0
    assert metrics.best_model(CORRECT, np.array([[5.0, 1.0, 1.0]] * 4)) == 1


def test_mean_known_reports_coverage():
    assert metrics.mean_known(np.array([1.0, np.nan, 3.0, np.nan])) == (2.0, 0.5)
    assert metrics.mean_known(np.array([np.nan])) == (None, 0.0)


def test_vote_choice_counts_equal_codes_and_breaks_ties_by_priority():
    codes = np.array([[4, 4, 5], [1, 2, 2], [-1, -1, -1], [7, 8, -1], [7, 8, -1]])
    priority = np.array([2, 1, 0])  # model 2 ranks first, then 1, then 0
    choice = metrics.vote_choice(codes, priority)
    # q0: "4" twice -> its best-ranked giver (model 1); q1: "2" twice -> model 2 (ranked first);
    # q2: nobody answered -> the best-ranked model; q3/q4: a 1-1 tie goes to model 1's answer.
    assert choice.tolist() == [1, 2, 2, 1, 1]
    assert metrics.vote_choice(codes[3:4], np.array([0, 1, 2])).tolist() == [0]


def test_fanout_latency_is_the_slowest_first_call_plus_the_later_ones():
    lat = np.array([[1.0, 3.0, 10.0], [1.0, np.nan, 10.0]])
    first = np.array([[True, True, False], [True, True, False]])
    then = np.array([[False, False, True], [False, False, False]])
    out = metrics.fanout_latency(lat, first, then)
    assert out[0] == 13.0 and np.isnan(out[1])

def test_gap_closed():
    assert metrics.gap_closed(0.8, 0.6, 1.0) == pytest.approx(0.5)
    assert metrics.gap_closed(0.5, 0.6, 1.0) == pytest.approx(-0.25)
    assert metrics.gap_closed(0.9, 0.9, 0.9) is None


COSTS = [1.0, 2.0, 3.0, 4.0, 2.0, 0.5]
ACCS = [0.5, 0.8, 0.85, 0.7, 0.6, 0.2]


def test_pareto_frontier():
    assert sorted(metrics.pareto_frontier(COSTS, ACCS).tolist()) == [0, 1, 2, 5]


def test_hull_drops_points_under_the_chord():
    hc, ha = metrics.cost_quality_hull([1, 2, 3], [0.5, 0.6, 0.9])
    assert hc.tolist() == [1, 3] and ha.tolist() == [0.5, 0.9]


def test_aiq_is_normalized_area_under_hull():
    hc, ha = metrics.cost_quality_hull(COSTS[:5], ACCS[:5])
    assert hc.tolist() == [1, 2, 3] and ha.tolist() == [0.5, 0.8, 0.85]
    assert metrics.aiq(COSTS[:5], ACCS[:5]) == pytest.approx((0.65 + 0.825) / 2, abs=1e-6)
    # Over a wider range: flat past the last point, zero below the first.
    expected = (1.475 + 0.85 * 1.0) / 3.0  # range [1, 4]
    assert metrics.aiq(COSTS[:5], ACCS[:5], (1.0, 4.0)) == pytest.approx(expected, abs=1e-4)
    assert metrics.aiq([2.0], [0.9], (1.0, 3.0)) == pytest.approx(0.45, abs=1e-3)


def test_cost_to_match():
    assert metrics.cost_to_match(COSTS[:5], ACCS[:5], 0.65) == pytest.approx(1.5)
    assert metrics.cost_to_match(COSTS[:5], ACCS[:5], 0.4) == pytest.approx(1.0)
    assert metrics.cost_to_match(COSTS[:5], ACCS[:5], 0.9) is None


def test_pgr_apgr_cpt_on_a_known_table():
    # 4 queries: the strong model is right on all, the weak one on the last two.
    strong = np.array([1, 1, 1, 1.0])
    weak = np.array([0, 0, 1, 1.0])
    perfect = np.array([0.9, 0.8, 0.1, 0.0])  # prefers strong exactly where it matters
    share, pgr = metrics.pgr_curve(perfect, strong, weak)
    assert share.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert pgr.tolist() == [0, 0.5, 1, 1, 1]
    assert metrics.apgr(share, pgr) == pytest.approx(0.25 * (0.25 + 0.75 + 1 + 1))
    assert metrics.cpt(share, pgr, 0.5) == 0.25 and metrics.cpt(share, pgr, 0.8) == 0.5
    worst = -perfect
    share, pgr = metrics.pgr_curve(worst, strong, weak)
    assert pgr.tolist() == [0, 0, 0, 0.5, 1]
    assert metrics.cpt(share, pgr, 0.8) == 1.0
    # A random router's APGR is about 0.5.
    rng = np.random.default_rng(0)
    s, w = (rng.random(4000) < 0.8).astype(float), (rng.random(4000) < 0.6).astype(float)
    share, pgr = metrics.pgr_curve(rng.random(4000), s, w)
    assert metrics.apgr(share, pgr) == pytest.approx(0.5, abs=0.03)
