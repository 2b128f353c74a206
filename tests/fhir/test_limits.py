"""Tests for fhir_bridge.fhir.limits and its use in FhirClient: rate limit, breaker, retry caps."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx

from fhir_bridge.errors import ResourceNotFound, TemporaryFhirError
from fhir_bridge.fhir import FhirClient, RetryPolicy
from fhir_bridge.fhir.limits import CircuitBreaker, CircuitOpenError, CircuitState, TokenBucket

BASE = "https://ehr.example.org/fhir"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SleepRecorder:
    """Stands in for asyncio.sleep, remembers the waits and advances an optional clock."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds


def patient(pid: str = "1") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "meta": {"versionId": "1"}}


@pytest.fixture
def api():
    """respx router mocking the FHIR server at BASE."""
    with respx.mock(base_url=BASE, assert_all_called=False) as mock:
        yield mock


def test_bucket_allows_a_burst_then_spaces_requests_at_the_rate():
    """A bucket of 3 at 2/s lets 3 through at once, then each next one waits 0.5 s more."""
    clock = FakeClock()
    bucket = TokenBucket(2.0, 3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.5)
    assert bucket.reserve() == pytest.approx(1.0)
    clock.now += 10  # a quiet spell refills the bucket, but only up to the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.5)


def test_bucket_rejects_nonsense_settings():
    """Rate must be positive and burst at least 1."""
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1.0, 0)


def test_breaker_opens_after_threshold_and_probes_after_cool_down():
    """Closed -> open after N consecutive failures -> half-open after the cool-down, where one
    probe passes; a failed probe re-opens, a good one closes."""
    clock = FakeClock()
    changes: list[tuple[str, CircuitState]] = []
    breaker = CircuitBreaker(
        "ehr",
        failure_threshold=3,
        reset_timeout=10,
        clock=clock,
        on_change=lambda source, state: changes.append((source, state)),
    )
    breaker.record_failure("HTTP 503")
    breaker.record_failure("HTTP 503")
    breaker.record_success()  # not consecutive any more
    for _ in range(2):
        breaker.record_failure("HTTP 503")
    assert breaker.state is CircuitState.CLOSED
    breaker.record_failure("ConnectError")
    assert breaker.state is CircuitState.OPEN
    with pytest.raises(CircuitOpenError, match="source ehr is open") as info:
        breaker.before_request("GET Patient on source ehr")
    assert info.value.retry_after == pytest.approx(10)
    clock.now += 10
    assert breaker.state is CircuitState.HALF_OPEN
    breaker.before_request("probe")  # the probe goes through
    with pytest.raises(CircuitOpenError, match="half_open"):
        breaker.before_request("a second request while probing")
    breaker.record_failure("HTTP 503")
    assert breaker.state is CircuitState.OPEN
    clock.now += 10
    breaker.before_request("probe")
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot()["times_opened"] == 2
    assert {source for source, _ in changes} == {"ehr"}
    assert [state for _, state in changes] == ["open", "half_open", "open", "half_open", "closed"]


def test_abandoned_probe_lets_another_one_through():
    """A probe cancelled before any answer does not leave the breaker stuck half-open."""
    clock = FakeClock()
    breaker = CircuitBreaker("ehr", failure_threshold=1, reset_timeout=1, clock=clock)
    breaker.record_failure("HTTP 500")
    clock.now += 1
    breaker.before_request("probe")
    breaker.abandon_probe()
    breaker.before_request("probe again")
    assert breaker.state is CircuitState.HALF_OPEN


async def test_open_breaker_fails_fast_without_a_request(api):
    """After N failed attempts the breaker opens; the next call raises a TemporaryFhirError
    naming the source without sending anything, and is not retried."""
    route = api.get("/Patient/1").mock(return_value=httpx.Response(503))
    clock = FakeClock()
    breaker = CircuitBreaker("ehr-a", failure_threshold=3, reset_timeout=30, clock=clock)
    slept = SleepRecorder()
    policy = RetryPolicy(attempts=5, initial_wait=0.01)
    async with FhirClient(BASE, source="ehr-a", retry=policy, sleep=slept, breaker=breaker) as fhir:
        with pytest.raises(CircuitOpenError):
            await fhir.read("Patient", "1")
        assert route.call_count == 3, "the 4th attempt was refused by the open breaker"
        with pytest.raises(TemporaryFhirError, match="circuit breaker of source ehr-a is open"):
            await fhir.read("Patient", "1")
        assert route.call_count == 3
        assert len(slept.calls) == 3  # waits before attempts 2, 3 and 4; none after refusal

        clock.now += 30
        route.mock(return_value=httpx.Response(200, json=patient()))
        assert (await fhir.read("Patient", "1"))["id"] == "1"
    assert breaker.state is CircuitState.CLOSED
    assert route.call_count == 4


async def test_fatal_answers_do_not_open_the_breaker(api):
    """404 and 400 are answers, not outages: they reset the failure count."""
    api.get("/Patient/1").mock(return_value=httpx.Response(404))
    breaker = CircuitBreaker("ehr", failure_threshold=1)
    async with FhirClient(BASE, source="ehr", breaker=breaker) as fhir:
        for _ in range(3):
            with pytest.raises(ResourceNotFound, match="HTTP 404"):
                await fhir.read("Patient", "1")
    assert breaker.state is CircuitState.CLOSED


async def test_rate_limit_waits_before_each_attempt(api):
    """With 1 request/s and burst 1, three reads wait 0, 1 and 1 seconds for tokens."""
    api.get("/Patient/1").mock(return_value=httpx.Response(200, json=patient()))
    clock = FakeClock()
    slept = SleepRecorder(clock)
    bucket = TokenBucket(1.0, 1, clock=clock, sleep=slept)
    async with FhirClient(BASE, limiter=bucket) as fhir:
        for _ in range(3):
            await fhir.read("Patient", "1")
    assert slept.calls == [pytest.approx(1.0), pytest.approx(1.0)]


async def test_x_ms_retry_after_ms_is_honoured(api):
    """Azure's x-ms-retry-after-ms (milliseconds) wins over Retry-After."""
    api.get("/Patient/1").mock(
        side_effect=[
            httpx.Response(429, headers={"x-ms-retry-after-ms": "1500", "Retry-After": "9"}),
            httpx.Response(429, headers={"x-ms-retry-after-ms": "garbage", "Retry-After": "2"}),
            httpx.Response(200, json=patient()),
        ]
    )
    slept = SleepRecorder()
    async with FhirClient(BASE, sleep=slept) as fhir:
        await fhir.read("Patient", "1")
    assert slept.calls == [1.5, 2.0]


async def test_total_wait_across_retries_is_capped(api):
    """Waits of one request never add up to more than max_total_wait; then it gives up."""
    route = api.get("/Patient/1").mock(
        return_value=httpx.Response(503, headers={"Retry-After": "4"})
    )
    slept = SleepRecorder()
    policy = RetryPolicy(attempts=10, max_wait=60, max_total_wait=10)
    async with FhirClient(BASE, sleep=slept, retry=policy) as fhir:
        with pytest.raises(TemporaryFhirError, match="HTTP 503"):
            await fhir.read("Patient", "1")
    assert slept.calls == [4.0, 4.0, 2.0]
    assert sum(slept.calls) == 10
    assert route.call_count == 4
