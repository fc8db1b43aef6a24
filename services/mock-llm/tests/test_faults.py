"""Fault syntax shared by MOCKLLM_FAULT and the X-Mock-Fault header."""

import pytest

from mockllm.faults import Fault, FaultKind, FaultSyntaxError, parse_fault


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("status:503", Fault(FaultKind.STATUS, 503)),
        ("status:429", Fault(FaultKind.STATUS, 429)),
        ("slow:250", Fault(FaultKind.SLOW, 250)),
        ("hang", Fault(FaultKind.HANG)),
        ("hang-after-headers", Fault(FaultKind.HANG_AFTER_HEADERS)),
        ("error-event:3", Fault(FaultKind.ERROR_EVENT, 3)),
        ("cut:0", Fault(FaultKind.CUT, 0)),
        ("  CUT : 4 ", Fault(FaultKind.CUT, 4)),
    ],
)
def test_valid_faults_parse(text: str, expected: Fault) -> None:
    assert parse_fault(text) == expected


@pytest.mark.parametrize("text", [None, "", "   "])
def test_empty_means_no_fault(text: str | None) -> None:
    assert parse_fault(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "explode",
        "status",
        "status:abc",
        "status:200",
        "status:600",
        "slow:-5",
        "cut:",
        "hang:5",
        "hang-after-headers:1",
        "error-event:1.5",
    ],
)
def test_bad_faults_are_rejected(text: str) -> None:
    with pytest.raises(FaultSyntaxError):
        parse_fault(text)
