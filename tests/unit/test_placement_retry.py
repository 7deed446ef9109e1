"""Placement keys and matching, retry policies and backoff: pure functions, tested with tables."""

import re

import pytest

from indexify import GraphValidationError, RetryPolicy
from indexify.placement import (
    ANY_PLACEMENT,
    normalize_constraints,
    placement_key,
    required_labels,
    satisfies,
)
from indexify.retry import as_policy, compute_backoff

TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

# -- backoff --------------------------------------------------------------------------------

NO_JITTER = RetryPolicy(initial_delay_sec=0.5, multiplier=2.0, max_delay_sec=60.0, jitter=0.0)


@pytest.mark.parametrize(
    ("retry_number", "expected"),
    [(0, 0.0), (-1, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 60.0), (50, 60.0)],
)
def test_backoff_is_exponential_and_capped(retry_number: int, expected: float) -> None:
    assert compute_backoff(NO_JITTER, retry_number, rand=0.3) == pytest.approx(expected)


def test_backoff_without_jitter_ignores_rand() -> None:
    assert compute_backoff(NO_JITTER, 3, rand=0.0) == compute_backoff(NO_JITTER, 3, rand=0.99)


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.75, 0.999])
def test_backoff_grows_monotonically_for_a_fixed_rand(rand: float) -> None:
    policy = RetryPolicy(initial_delay_sec=0.1, multiplier=1.5, max_delay_sec=30.0, jitter=0.2)
    delays = [compute_backoff(policy, n, rand=rand) for n in range(1, 40)]
    assert delays == sorted(delays)
    assert delays[-1] == pytest.approx(min(30.0, 30.0 * (1 + 0.2 * (2 * rand - 1))))
    assert all(0.0 <= d <= policy.max_delay_sec for d in delays)


@pytest.mark.parametrize(
    ("rand", "expected"),
    [(0.0, 0.8), (0.5, 1.0), (0.75, 1.1), (1.0, 1.2)],
)
def test_jitter_spreads_by_at_most_its_fraction(rand: float, expected: float) -> None:
    policy = RetryPolicy(initial_delay_sec=1.0, jitter=0.2)
    assert compute_backoff(policy, 1, rand=rand) == pytest.approx(expected)


def test_jitter_never_exceeds_the_cap_nor_goes_negative() -> None:
    policy = RetryPolicy(initial_delay_sec=10.0, max_delay_sec=10.0, jitter=1.0)
    assert compute_backoff(policy, 5, rand=0.999) == pytest.approx(10.0)
    assert compute_backoff(policy, 1, rand=0.0) == 0.0


def test_random_jitter_stays_in_bounds() -> None:
    policy = RetryPolicy(initial_delay_sec=2.0, jitter=0.25)
    for _ in range(200):
        assert 1.5 <= compute_backoff(policy, 1) <= 2.5


def test_zero_initial_delay_retries_at_once() -> None:
    assert compute_backoff(RetryPolicy(initial_delay_sec=0), 5, rand=0.9) == 0.0


# -- retry policies -------------------------------------------------------------------------


def test_as_policy_accepts_a_count_or_a_policy() -> None:
    assert as_policy(None) == RetryPolicy()
    assert as_policy(None).max_retries == 0
    assert as_policy(3) == RetryPolicy(max_retries=3)
    policy = RetryPolicy(max_retries=2, initial_delay_sec=0.01)
    assert as_policy(policy) is policy


@pytest.mark.parametrize(
    "options",
    [
        {"max_retries": -1},
        {"max_retries": 101},
        {"initial_delay_sec": -1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
        {"unknown": 1},
    ],
)
def test_invalid_policies_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**options)


def test_policy_is_frozen_and_json_able() -> None:
    policy = RetryPolicy(max_retries=4, initial_delay_sec=0.25)
    assert RetryPolicy.model_validate_json(policy.model_dump_json()) == policy
    with pytest.raises(ValueError):
        policy.max_retries = 5  # type: ignore[misc]


# -- placement ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, {}),
        ({}, {}),
        ({"gpu": "a100"}, {"gpu": "a100"}),
        ({"zone": "eu", "gpu": "a100"}, {"gpu": "a100", "zone": "eu"}),
        (["gpu=a100"], {"gpu": "a100"}),
        (["gpu == a100", "zone=eu"], {"gpu": "a100", "zone": "eu"}),
        ("gpu=a100", {"gpu": "a100"}),
        ({"cores": 8}, {"cores": "8"}),
    ],
)
def test_normalize_constraints(raw: object, expected: dict[str, str]) -> None:
    normalized = normalize_constraints(raw, function="f")  # type: ignore[arg-type]
    assert normalized == expected
    assert list(normalized) == sorted(normalized)


@pytest.mark.parametrize("raw", [["gpu"], ["=a100"], ["gpu="], {"gpu": ""}, {"": "x"}])
def test_invalid_constraints_name_the_function(raw: object) -> None:
    with pytest.raises(GraphValidationError) as info:
        normalize_constraints(raw, function="embed")  # type: ignore[arg-type]
    assert (info.value.function, info.value.parameter) == ("embed", "placement_constraints")


def test_required_labels_add_the_image() -> None:
    assert required_labels(None, {}) == {}
    assert required_labels("img", {"gpu": "a100"}) == {"gpu": "a100", "image": "img"}
    assert list(required_labels("img", {"zone": "eu", "gpu": "a"})) == ["gpu", "image", "zone"]


@pytest.mark.parametrize(
    "required",
    [
        {},
        {"gpu": "a100"},
        {"gpu": "a100", "zone": "eu-west-1"},
        {"image": "indexify-executor-default"},
        {"gpu": "nvidia a100"},
        {"region": "us.east"},
        {"label": "x" * 200},
        {f"k{i}": f"v{i}" for i in range(30)},
        {"ünïcode": "välue"},
    ],
)
def test_placement_key_is_topic_safe_and_stable(required: dict[str, str]) -> None:
    key = placement_key(required)
    assert TOPIC_SAFE.match(key), key
    assert placement_key(dict(reversed(list(required.items())))) == key
    assert placement_key(dict(required)) == key


def test_placement_key_values() -> None:
    assert placement_key({}) == ANY_PLACEMENT == "any"
    assert placement_key({"gpu": "a100"}) == "gpu-a100"
    assert placement_key({"zone": "eu", "gpu": "a100"}) == "gpu-a100_zone-eu"
    hashed = placement_key({"gpu": "nvidia a100"})
    assert re.fullmatch(r"p[0-9a-f]{12}", hashed)
    assert placement_key({"gpu": "nvidia a100"}) == hashed


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"gpu": "a100"}, {"gpu": "h100"}),
        ({"gpu": "a100"}, {"gpu": "a100", "zone": "eu"}),
        ({"a": "b c"}, {"a": "b d"}),
        ({"a-b": "c"}, {"a": "b-c"}),
        ({"a": "b_c-d"}, {"a": "b", "c": "d"}),
        ({"zone": "eu_west"}, {"zone_eu": "west"}),
        ({"instance-type": "gpu"}, {"instance": "type-gpu"}),
    ],
)
def test_different_requirements_get_different_placement_keys(
    first: dict[str, str], second: dict[str, str]
) -> None:
    # Executors subscribe to task topics by placement key: a shared key would send a task to
    # executors that do not satisfy its constraints.
    assert placement_key(first) != placement_key(second)


@pytest.mark.parametrize(
    ("labels", "required", "expected"),
    [
        ({}, {}, True),
        ({"gpu": "a100"}, {}, True),
        ({"gpu": "a100"}, {"gpu": "a100"}, True),
        ({"gpu": "a100", "zone": "eu"}, {"gpu": "a100"}, True),
        ({"gpu": "h100"}, {"gpu": "a100"}, False),
        ({}, {"gpu": "a100"}, False),
        ({"gpu": "a100"}, {"gpu": "a100", "zone": "eu"}, False),
        ({"image": "img"}, {"image": "img"}, True),
        ({"GPU": "a100"}, {"gpu": "a100"}, False),
    ],
)
def test_satisfies(labels: dict[str, str], required: dict[str, str], expected: bool) -> None:
    assert satisfies(labels, required) is expected
