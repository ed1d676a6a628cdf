"""The attribution policy: parts always sum to the measured energy, exactly."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gpucarbon.attribution.policy import EQUAL_FAST_MAX, largest_remainder, split_equal, split_exact, split_interval


@given(total=st.integers(0, 10**12), weights=st.lists(st.floats(0, 1e6), min_size=1, max_size=50))
def test_split_exact_sums_to_total_and_is_proportional(total, weights):
    parts = split_exact(total, weights)
    assert sum(parts) == total
    assert all(p >= 0 for p in parts)
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        expected = total * weight / weight_sum if weight_sum > 0 else total / len(weights)
        assert abs(part - expected) <= 1.0 + 1e-6 * total  # at most one mJ from the exact share


@settings(max_examples=300)
@given(
    energy=st.integers(0, 10**9),
    idle_cap=st.integers(0, 10**9),
    keys=st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=0, max_size=8, unique=True),
    data=st.data(),
)
def test_split_interval_conserves_energy(energy, idle_cap, keys, data):
    runners = data.draw(st.lists(st.sampled_from(keys), unique=True) if keys else st.just([]))
    running = {k: data.draw(st.floats(0, 1)) for k in runners}
    split = split_interval(energy, idle_cap, sorted(keys), running)
    assert sum(split.parts.values()) + split.unattributed_mj == energy
    assert split.idle_mj + split.active_mj + split.unattributed_mj == energy


def test_no_holders_leaves_everything_unattributed():
    split = split_interval(5000, 1000, [], {})
    assert split.parts == {} and split.unattributed_mj == 5000


def test_idle_is_shared_equally_and_active_follows_utilization():
    # 10 J over 1 s, idle 4 W -> 4 J idle split 2/2; 6 J active split 0.75:0.25
    split = split_interval(10_000, 4_000, ["a", "b"], {"a": 0.6, "b": 0.2})
    assert split.parts == {"a": 2_000 + 4_500, "b": 2_000 + 1_500}


def test_allocated_idle_holder_pays_idle_share_only():
    split = split_interval(10_000, 4_000, ["idle-pod", "runner"], {"runner": 0.5})
    assert split.parts == {"idle-pod": 2_000, "runner": 8_000}


def test_runners_without_samples_share_active_equally():
    split = split_interval(9_000, 3_000, ["a", "b", "holder"], {"a": 0.0, "b": 0.0})
    assert split.parts == {"a": 1_000 + 3_000, "b": 1_000 + 3_000, "holder": 1_000}


def test_no_process_running_active_goes_to_holders_equally():
    split = split_interval(9_000, 3_000, ["x", "y"], {})
    assert split.parts == {"x": 4_500, "y": 4_500}


def test_energy_below_idle_is_all_idle():
    split = split_interval(1_000, 5_000, ["a", "b", "c"], {"a": 1.0})
    assert split.idle_mj == 1_000 and split.active_mj == 0
    assert sorted(split.parts.values()) == [333, 333, 334]


def test_largest_remainder_rounding_is_deterministic():
    assert split_exact(10, [1, 1, 1]) == [4, 3, 3]
    assert split_exact(2, [1, 1, 1]) == [1, 1, 0]
    assert split_exact(100, [0, 0]) == [50, 50]


def test_negative_inputs_are_rejected():
    import pytest

    with pytest.raises(ValueError):
        split_exact(-1, [1])
    with pytest.raises(ValueError):
        split_interval(-5, 0, ["a"], {})


@settings(max_examples=500, deadline=None)
@given(
    total=st.one_of(st.integers(0, 10_000), st.integers(0, EQUAL_FAST_MAX)),
    count=st.integers(1, 70),
    weight=st.one_of(st.sampled_from([0.0, 0.1, 1 / 3, 1.0, 7.5, 1e-300]), st.floats(0.0, 1e6)),
)
def test_equal_weights_fast_path_matches_the_largest_remainder_exactly(total, count, weight):
    """split_exact splits equal weights by divmod; the general method must
    give the same integers (output never changed by the fast path)."""
    assert split_exact(total, [weight] * count) == largest_remainder(total, [weight] * count)


@settings(max_examples=300, deadline=None)
@given(total=st.one_of(st.integers(0, 10_000), st.integers(0, 2 * EQUAL_FAST_MAX)), count=st.integers(1, 70))
def test_split_equal_is_split_exact_with_equal_weights(total, count):
    """split_equal (the idle and embodied splits) skips building the weights;
    it must give split_exact's integers, past the divmod limit too."""
    assert split_equal(total, count) == split_exact(total, [1.0] * count)


def textbook_largest_remainder(total, weights):
    """Hamilton's method as first written here: rank by (-remainder, index)."""
    weight_sum = float(sum(weights))
    if weight_sum <= 0.0:
        weights, weight_sum = [1.0] * len(weights), float(len(weights))
    exact = [total * w / weight_sum for w in weights]
    parts = [int(x) for x in exact]
    while sum(parts) > total:
        parts[max(range(len(parts)), key=lambda i: parts[i])] -= 1
    ranked = sorted(range(len(parts)), key=lambda i: (-(exact[i] - parts[i]), i))
    for i in ranked[: total - sum(parts)]:
        parts[i] += 1
    return parts


@settings(max_examples=500, deadline=None)
@given(
    total=st.integers(0, 10**12),
    weights=st.lists(
        st.one_of(st.sampled_from([0.0, 0.25, 1 / 3, 0.5, 1.0]), st.floats(0, 1e6)), min_size=1, max_size=50
    ),
)
def test_largest_remainder_ranks_ties_to_the_earlier_index(total, weights):
    """largest_remainder ranks remainders with a reverse stable sort; it must
    give the (-remainder, index) ranking's integers, ties included."""
    assert largest_remainder(total, weights) == textbook_largest_remainder(total, weights)
