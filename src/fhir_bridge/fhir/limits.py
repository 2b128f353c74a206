"""Per-source request guards: a token-bucket rate limit and a circuit breaker.

Both live as long as the bridge (one :class:`SourceGuard` per source), not as long as one
``FhirClient``: every client of a source (sync, write-back, subscriptions) shares them, so a
source's budget and its breaker are counted across all of them.

Neither holds an ``asyncio`` primitive: the bucket reserves a slot synchronously and then
sleeps, so one guard works across event loops (the tests run one loop per test).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fhir_bridge.errors import TemporaryFhirError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """Allow `rate` requests a second on average, bursts of up to `burst`.

    :param rate: tokens added per second (> 0).
    :param burst: bucket size: requests allowed at once after a quiet spell (>= 1).
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("TokenBucket rate must be positive")
        if burst < 1:
            raise ValueError("TokenBucket burst must be at least 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._stamp = clock()

    def reserve(self) -> float:
        """Take one token now; return the seconds to wait before using it (0: go ahead)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0  # may go negative: later callers queue behind this one
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> float:
        """Wait for a token; return how long we waited."""
        delay = self.reserve()
        if delay > 0:
            await self._sleep(delay)
        return delay


class CircuitState(StrEnum):
    """closed: requests flow; open: rejected at once; half_open: one probe is let through."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CIRCUIT_STATE_VALUES = {CircuitState.CLOSED: 0, CircuitState.OPEN: 1, CircuitState.HALF_OPEN: 2}


class CircuitOpenError(TemporaryFhirError):
    """The source's circuit breaker is open: the request was not sent (never retried)."""


class CircuitBreaker:
    """Stop hammering a source that keeps failing.

    Opens after `failure_threshold` consecutive temporary failures (network errors, 408, 429,
    5xx); while open, every request fails at once with :class:`CircuitOpenError`. After
    `reset_timeout` seconds it turns half-open and lets one probe through: success closes it,
    failure opens it again for another `reset_timeout`.

    :param on_change: called with the source and the new state (metrics).
    """

    def __init__(
        self,
        source: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[str, CircuitState], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout < 0:
            raise ValueError("reset_timeout must not be negative")
        self.source = source
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._on_change = on_change
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened_count = 0
        self.last_failure: str | None = None

    @property
    def state(self) -> CircuitState:
        """The state now (an open breaker past its cool-down reads half-open)."""
        if (
            self._state is CircuitState.OPEN
            and self._opened_at is not None
            and self._clock() - self._opened_at >= self.reset_timeout
        ):
            self._set(CircuitState.HALF_OPEN)
            self._probing = False
        return self._state

    def before_request(self, what: str) -> None:
        """Let a request through, or raise :class:`CircuitOpenError` naming the source."""
        state = self.state
        if state is CircuitState.CLOSED:
            return
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True  # this request is the probe; others wait for its outcome
            return
        retry_in = self._retry_in()
        raise CircuitOpenError(
            f"{what}: circuit breaker of source {self.source} is {state.value} "
            f"after {self.failure_threshold} consecutive failures; not sent",
            retry_after=retry_in,
        )

    def record_success(self) -> None:
        """A request got an answer that was not a temporary failure."""
        self._failures = 0
        self._probing = False
        if self._state is not CircuitState.CLOSED:
            self._opened_at = None
            self._set(CircuitState.CLOSED)

    def record_failure(self, reason: str) -> None:
        """A request failed temporarily; `reason` is a status or an exception class (no PHI)."""
        self._failures += 1
        self.last_failure = reason
        half_open = self._state is CircuitState.HALF_OPEN
        if half_open or (
            self._state is CircuitState.CLOSED and self._failures >= self.failure_threshold
        ):
            self._opened_at = self._clock()
            self._probing = False
            self.opened_count += 1
            self._set(CircuitState.OPEN)

    def abandon_probe(self) -> None:
        """A let-through request ended without an answer (cancelled): allow another probe."""
        self._probing = False

    def snapshot(self) -> dict[str, Any]:
        """State for operators: state, consecutive failures, last failure, seconds to probe."""
        state = self.state
        return {
            "state": state.value,
            "consecutive_failures": self._failures,
            "failure_threshold": self.failure_threshold,
            "times_opened": self.opened_count,
            "last_failure": self.last_failure,
            "retry_in": self._retry_in() if state is CircuitState.OPEN else None,
        }

    def _retry_in(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, round(self.reset_timeout - (self._clock() - self._opened_at), 3))

    def _set(self, state: CircuitState) -> None:
        if state is self._state:
            return
        self._state = state
        if self._on_change is not None:
            self._on_change(self.source, state)


@dataclass
class SourceGuard:
    """The rate limit (if any) and the circuit breaker of one source."""

    breaker: CircuitBreaker
    bucket: TokenBucket | None = None
