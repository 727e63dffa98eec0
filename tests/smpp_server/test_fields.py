"""submit_sm fields as a job takes them: SMPP times and addresses."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from router.smpp_server import statuses as st
from router.smpp_server.addresses import destination, source
from router.smpp_server.statuses import Refused
from router.smpp_server.times import parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("300101120000004+", datetime(2030, 1, 1, 11, tzinfo=UTC).timestamp()),
        ("300101120000508-", datetime(2030, 1, 1, 14, 0, 0, 500_000, tzinfo=UTC).timestamp()),
        ("000000013000000R", NOW + 5400),
        ("010200000000000R", NOW + (365 + 60) * 86_400),
    ],
)
def test_smpp_times(value: str, expected: float | None) -> None:
    assert parse_time(value, NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "30010112000000+",
        "300101120000004X",
        "301301120000000+",
        "300101120000049+",
        "000000250000000R",
        "3001011200000a0+",
    ],
)
def test_bad_smpp_times(value: str) -> None:
    with pytest.raises(ValueError):
        parse_time(value, NOW)


@pytest.mark.parametrize(
    ("address", "ton", "expected"),
    [
        ("", 0, None),
        ("12345", 0, "12345"),  # a short code
        ("447911123456", 0, "+447911123456"),
        ("+447911123456", 0, "+447911123456"),
        ("447911123456", 1, "+447911123456"),
        ("ACME", 5, "ACME"),
        ("ACME", 0, "ACME"),
        ("7890", 3, "7890"),
    ],
)
def test_sources(address: str, ton: int, expected: str | None) -> None:
    assert source(address, ton, 1) == expected


@pytest.mark.parametrize(
    ("address", "ton", "npi", "status"),
    [
        ("07911123456", 2, 1, st.ESME_RINVSRCADR),
        ("ACME", 1, 1, st.ESME_RINVSRCADR),
        ("1", 7, 1, st.ESME_RINVSRCTON),
        ("1", 1, 2, st.ESME_RINVSRCNPI),
    ],
)
def test_bad_sources(address: str, ton: int, npi: int, status: int) -> None:
    with pytest.raises(Refused) as caught:
        source(address, ton, npi)
    assert caught.value.status == status


def test_destinations() -> None:
    assert destination("447911123456", 1, 1) == "+447911123456"
    assert destination("+447911123456", 0, 0) == "+447911123456"
    for address, ton, status in [
        ("", 1, st.ESME_RINVDSTADR),
        ("4479", 5, st.ESME_RINVDSTADR),
        ("44 79", 1, st.ESME_RINVDSTADR),
        ("1", 255, st.ESME_RINVDSTTON),
    ]:
        with pytest.raises(Refused) as caught:
            destination(address, ton, 1)
        assert caught.value.status == status
