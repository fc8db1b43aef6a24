import pytest

from gateway.balance.outcome import ErrorKind, Outcome, classify


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"status": 200}, Outcome.SUCCESS),
        ({"status": 200, "terminal_seen": False}, Outcome.STREAM_TRUNCATED),
        ({"status": 200, "error_event": True}, Outcome.STREAM_ERROR_EVENT),
        ({"status": 500}, Outcome.SERVER_ERROR),
        ({"status": 503}, Outcome.SERVER_ERROR),
        ({"status": 400}, Outcome.CLIENT_ERROR),
        ({"status": 404}, Outcome.CLIENT_ERROR),
        ({"status": 429}, Outcome.RATE_LIMITED),
        ({"status": None}, Outcome.CONNECT_ERROR),
        ({"error": ErrorKind.CONNECT}, Outcome.CONNECT_ERROR),
        ({"error": ErrorKind.TIMEOUT}, Outcome.TIMEOUT),
        ({"status": 200, "error": ErrorKind.READ}, Outcome.STREAM_TRUNCATED),
        ({"status": 200, "error": ErrorKind.CLIENT_DISCONNECT}, Outcome.CANCELLED),
        (
            {"status": 200, "terminal_seen": False, "error": ErrorKind.CLIENT_DISCONNECT},
            Outcome.CANCELLED,
        ),
    ],
)
def test_classify(kwargs: dict[str, object], expected: Outcome) -> None:
    assert classify(**kwargs) is expected  # type: ignore[arg-type]


def test_only_upstream_misbehaviour_counts_as_failure() -> None:
    failures = {o for o in Outcome if o.is_failure}
    assert failures == {
        Outcome.CONNECT_ERROR,
        Outcome.SERVER_ERROR,
        Outcome.TIMEOUT,
        Outcome.STREAM_ERROR_EVENT,
        Outcome.STREAM_TRUNCATED,
    }
