"""The pure retry policy: what is retried, how long to wait, Retry-After, shared host backoff."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bulkdl.errors import RejectedError, ResponseError, TransientError
from bulkdl.retry import HostBackoff, RetryPolicy, is_retryable_error, parse_retry_after

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_rate_limits_and_server_faults_are_retried(status: int) -> None:
    """429 and the 5xx faults are worth another try."""
    assert is_retryable_error(TransientError("x", status=status))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 501])
def test_other_statuses_are_not_retried(status: int) -> None:
    """Other 4xx (and 501) are not retried even if wrapped as transient."""
    assert not is_retryable_error(TransientError("x", status=status))
    assert not is_retryable_error(RejectedError("x", status=status))


@pytest.mark.parametrize(
    "error",
    [ConnectionResetError(), ConnectionRefusedError(), TimeoutError(), TransientError("reset")],
)
def test_resets_refusals_and_timeouts_are_retried(error: BaseException) -> None:
    """Network failures without a status are retryable."""
    assert is_retryable_error(error)


def test_parse_errors_are_not_retried() -> None:
    """A body that does not parse is not a transient fault."""
    assert not is_retryable_error(ResponseError("html"))
    assert not is_retryable_error(ValueError("x"))


def test_backoff_grows_exponentially_with_full_jitter_and_cap() -> None:
    """With rand()=1 the wait doubles per attempt up to the cap; rand() scales it (full jitter)."""
    policy = RetryPolicy(base=0.5, multiplier=2.0, cap=3.0)
    assert [policy.backoff(n, lambda: 1.0) for n in (1, 2, 3, 4, 100)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff(3, lambda: 0.25) == 0.5
    assert policy.backoff(3, lambda: 0.0) == 0.0


def test_attempts_are_capped() -> None:
    """``attempts`` counts every try: after the last one, no more retries."""
    policy = RetryPolicy(attempts=3)
    error = TransientError("x", status=503)
    assert [policy.should_retry(n, error) for n in (1, 2, 3)] == [True, True, False]
    assert not policy.should_retry(1, RejectedError("x", status=400))


def test_delay_honours_retry_after_up_to_a_cap() -> None:
    """The server's Retry-After wins over a shorter backoff, capped at max_retry_after."""
    policy = RetryPolicy(base=0.1, cap=1.0, max_retry_after=10.0)
    assert policy.delay(1, TransientError("x", status=429, retry_after=4.0), lambda: 1.0) == 4.0
    assert policy.delay(1, TransientError("x", status=429, retry_after=99.0), lambda: 1.0) == 10.0
    assert policy.delay(1, TransientError("x", status=500), lambda: 1.0) == 0.1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("Wed, 01 May 2024 12:00:30 GMT", 30.0),
        ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("1.5", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after_seconds_or_http_date(header: str | None, seconds: float | None) -> None:
    """Retry-After is delta-seconds or an HTTP-date; past dates give 0; junk gives None."""
    assert parse_retry_after(header, NOW) == seconds


def test_host_backoff_makes_every_worker_wait() -> None:
    """After a 429 with Retry-After, any worker asking the shared state must wait the rest."""
    host = HostBackoff()
    assert host.wait_time(100.0) == 0.0
    assert host.penalize(100.0, retry_after=5.0) == 5.0
    assert host.wait_time(101.0) == 4.0  # a second worker, a second later
    assert host.wait_time(106.0) == 0.0


def test_host_backoff_never_shortens_a_running_pause() -> None:
    """A later, shorter penalty does not cut an earlier, longer pause."""
    host = HostBackoff()
    host.penalize(0.0, retry_after=10.0)
    host.penalize(1.0, retry_after=1.0)
    assert host.wait_time(5.0) == 5.0


def test_host_backoff_grows_without_retry_after_and_resets() -> None:
    """Penalties without Retry-After double (jittered, capped); a success resets the streak."""
    host = HostBackoff(base=1.0, cap=5.0, rand=lambda: 1.0)
    assert [host.penalize(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    host.reset()
    assert host.penalize(100.0) == 1.0
    assert host.penalize(0.0, retry_after=1e9) == 5.0
