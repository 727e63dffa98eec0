"""Delivery receipts and message ids: the tolerant parser over random and varied input,
and the aiosmpplib 0.7.4 receipt defects that binds.smpp.receipt works around."""

from __future__ import annotations

from datetime import datetime

import pytest
from aiosmpplib.protocol import DeliverSm
from hypothesis import given, settings
from hypothesis import strategies as st

from binds.smpp import receipt as receipt_module
from binds.smpp.receipt import message_id_candidates, normalise_message_id, parse_receipt

STANDARD = (
    "id:0123456789 sub:001 dlvrd:001 submit date:2311231010 done date:2311231011 "
    "stat:DELIVRD err:000 text:hello world"
)
KEYS = ["id", "sub", "dlvrd", "submit date", "submit_date", "done date", "stat", "err", "text"]


def case(key: str, draw_bool: bool) -> str:
    return key.upper() if draw_bool else key.title()


@settings(max_examples=500)
@given(st.text())
def test_parse_receipt_never_raises_on_any_text(text: str) -> None:
    receipt = parse_receipt(text)
    assert receipt is None or receipt.message_id


@settings(max_examples=500)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*KEYS, "ID", "Stat", "Submit Date", "x", ""]),
            st.sampled_from([":", " : ", ":: ", " "]),
            st.text(alphabet="0123456789aBz :_\0\t-", max_size=16),
        ),
        max_size=10,
    )
)
def test_parse_receipt_never_raises_on_receipt_like_text(
    fields: list[tuple[str, str, str]],
) -> None:
    text = " ".join(k + sep + v for k, sep, v in fields)
    receipt = parse_receipt(text)
    if receipt is not None:
        assert receipt.message_id and receipt.message_id == receipt.message_id.strip()
        assert receipt.status in ("delivered", "undelivered", "pending")


@given(
    message_id=st.text(alphabet="0123456789abcdefABCDEF-", min_size=1, max_size=20),
    stat=st.sampled_from(["DELIVRD", "undeliv", "Expired", "ENROUTE", "REJECTD", "XYZ"]),
    err=st.text(alphabet="0123456789xABC", min_size=1, max_size=5),
    submit=st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
        lambda d: d.replace(microsecond=0)
    ),
    seconds=st.booleans(),
    upper=st.lists(st.booleans(), min_size=8, max_size=8),
    order=st.permutations(range(7)),
    gap=st.sampled_from([" ", "  ", "\t", " \r\n "]),
)
def test_parse_receipt_reads_fields_in_any_case_order_and_spacing(
    message_id: str,
    stat: str,
    err: str,
    submit: datetime,
    seconds: bool,
    upper: list[bool],
    order: list[int],
    gap: str,
) -> None:
    date = submit.strftime("%y%m%d%H%M%S" if seconds else "%y%m%d%H%M")
    pairs = [
        ("id", message_id),
        ("sub", "001"),
        ("dlvrd", "001"),
        ("submit date", date),
        ("done_date", date),
        ("stat", stat),
        ("err", err),
    ]
    fields = [case(pairs[i][0], upper[n]) + ":" + pairs[i][1] for n, i in enumerate(order)]
    receipt = parse_receipt(gap.join(fields) + gap + case("text", upper[7]) + ":hi there")
    assert receipt is not None
    assert (receipt.message_id, receipt.stat, receipt.err) == (message_id, stat.upper(), err)
    assert (receipt.sub, receipt.dlvrd, receipt.text) == ("001", "001", "hi there")
    expected = submit if seconds else submit.replace(second=0)
    assert receipt.submit_date == expected and receipt.done_date == expected


def test_standard_receipt() -> None:
    receipt = parse_receipt(STANDARD)
    assert receipt is not None
    assert receipt.message_id == "0123456789" and receipt.status == "delivered"
    assert (receipt.sub, receipt.dlvrd, receipt.err, receipt.text) == (
        "001",
        "001",
        "000",
        "hello world",
    )
    assert receipt.submit_date == datetime(2023, 11, 23, 10, 10)
    assert receipt.done_date == datetime(2023, 11, 23, 10, 11)


def test_dates() -> None:
    def dates(value: str) -> datetime | None:
        receipt = parse_receipt(f"id:1 submit date:{value} stat:DELIVRD")
        assert receipt is not None
        return receipt.submit_date

    assert dates("2311231010") == datetime(2023, 11, 23, 10, 10)
    assert dates("231123101059") == datetime(2023, 11, 23, 10, 10, 59)
    assert dates("20231123101059") == datetime(2023, 11, 23, 10, 10, 59)
    for bad in (
        "",
        "23112310",
        "2313231010",
        "231123106199",
        "abcdefghij",
        "\uff12\uff13" + "1" * 8,
    ):
        assert dates(bad) is None, bad


def test_keys_any_case_missing_fields_and_odd_values() -> None:
    receipt = parse_receipt(
        "ID:0a1b SUB:001 dlvrd:001 Submit_Date:231123101059 done  date:2311231011 "
        "STAT:undeliv ERR:0x0B Text:héllo"
    )
    assert receipt is not None and receipt.message_id == "0a1b" and receipt.stat == "UNDELIV"
    assert receipt.err == "0x0B" and receipt.status == "undelivered" and receipt.text == "héllo"
    assert receipt.submit_date == datetime(2023, 11, 23, 10, 10, 59)
    assert receipt.done_date == datetime(2023, 11, 23, 10, 11)
    minimal = parse_receipt("id:77 stat:DELIVRD")
    assert minimal is not None and minimal.status == "delivered"
    assert (minimal.err, minimal.sub, minimal.text, minimal.submit_date) == ("", "", "", None)
    only_id = parse_receipt("id:77\0")
    assert only_id is not None and only_id.message_id == "77" and only_id.status == "pending"
    text_err = parse_receipt("id:5 stat:UNDELIV err:ABC")
    assert text_err is not None and text_err.err == "ABC"
    for no_id in ("", "stat:DELIVRD err:000", "id: stat:DELIVRD", "msgid:5 stat:DELIVRD"):
        assert parse_receipt(no_id) is None, no_id


def test_text_field_keeps_keys_already_read() -> None:
    receipt = parse_receipt("id:9 stat:DELIVRD err:000 text:your stat: ok id:3")
    assert receipt is not None and receipt.message_id == "9" and receipt.stat == "DELIVRD"
    assert receipt.text == "your stat: ok id:3"
    after = parse_receipt("id:9 text:hi stat:DELIVRD")  # a carrier that puts stat last
    assert after is not None and after.text == "hi" and after.status == "delivered"


@pytest.mark.parametrize(
    ("stat", "status"),
    [
        ("DELIVRD", "delivered"),
        ("delivrd", "delivered"),
        ("EXPIRED", "undelivered"),
        ("DELETED", "undelivered"),
        ("UNDELIV", "undelivered"),
        ("REJECTD", "undelivered"),
        ("UNKNOWN", "undelivered"),
        ("FAILED", "undelivered"),
        ("ACCEPTD", "pending"),
        ("ENROUTE", "pending"),
        ("SCHEDULED", "pending"),
        ("BUFFRED", "pending"),
        ("", "pending"),
    ],
)
def test_status(stat: str, status: str) -> None:
    receipt = parse_receipt(f"id:1 stat:{stat} err:000")
    assert receipt is not None and receipt.status == status


def test_message_id_normalisation() -> None:
    assert normalise_message_id(" AbC12\0 ", "as-is") == "AbC12"
    assert normalise_message_id("000A1B", "hex") == "a1b"
    assert normalise_message_id("0x0a1b", "hex") == "a1b"
    assert normalise_message_id("0010", "hex") == "10"
    assert normalise_message_id("0000", "hex") == "0"
    assert normalise_message_id("0A1B", "decimal") == "2587"
    assert normalise_message_id("002587", "decimal") == "2587"
    assert normalise_message_id("0A1B", "hex-resp", "resp") == "2587"
    assert normalise_message_id("0002587", "hex-resp", "receipt") == "2587"
    assert normalise_message_id("1000", "hex-receipt", "receipt") == "4096"
    assert normalise_message_id("4096", "hex-receipt", "resp") == "4096"
    for style in ("hex", "decimal", "hex-resp", "hex-receipt"):
        assert normalise_message_id(" Ab-Cz\0", style) == "ab-cz"
        assert normalise_message_id("+12", style) == "+12"
    assert normalise_message_id("\0 \0", "hex") == ""


@given(st.integers(0, 2**64))
def test_ids_written_in_either_base_compare_equal(number: int) -> None:
    hex_id, dec_id = f"{number:016X}", str(number)
    assert normalise_message_id(hex_id, "hex") == normalise_message_id(f"{number:x}", "hex")
    assert normalise_message_id(hex_id, "hex-resp", "resp") == normalise_message_id(
        f"00{dec_id}", "hex-resp", "receipt"
    )
    assert normalise_message_id(dec_id, "hex-receipt", "resp") == normalise_message_id(
        f"{number:x}", "hex-receipt", "receipt"
    )
    if any(c in "ABCDEF" for c in hex_id):  # the only hex ids "decimal" can recognise
        assert normalise_message_id(hex_id, "decimal") == normalise_message_id(dec_id, "decimal")


def candidates(value: str) -> list[str]:
    return message_id_candidates(normalise_message_id(value, "auto"), "auto")


def test_auto_candidates() -> None:
    assert normalise_message_id(" 000A1B\0", "auto") == "a1b"
    assert normalise_message_id("0x0A1B", "auto") == "a1b"
    assert normalise_message_id("0000", "auto") == "0"
    assert normalise_message_id("Ab-Cz", "auto") == "Ab-Cz"  # not a number: case kept
    assert candidates("0A1B") == ["a1b", "2587"]
    assert candidates("0000002587") == ["2587", "a1b", "9607"]
    assert candidates("msg-7") == ["msg-7"]
    assert candidates("") == [""]
    for style in ("as-is", "hex", "decimal", "hex-resp", "hex-receipt"):
        assert message_id_candidates("2587", style) == ["2587"]


ID_STYLES = {
    "decimal": lambda n: str(n),
    "decimal-10": lambda n: str(n).zfill(10),
    "hex-upper": lambda n: format(n, "X"),
    "hex-lower": lambda n: format(n, "x"),
    "hex-padded": lambda n: format(n, "016X"),
    "hex-0x": lambda n: f"0x{n:x}",
    "zeros": lambda n: "000" + str(n),
}


@given(
    number=st.integers(0, 2**64),
    resp=st.sampled_from(sorted(ID_STYLES)),
    receipt=st.sampled_from(sorted(ID_STYLES)),
)
def test_auto_matches_ids_written_in_any_style_on_either_side(
    number: int, resp: str, receipt: str
) -> None:
    """The resp id's indexed form is among the receipt's candidates (lookup), and the
    receipt's own form among the resp's (an early report found at replay)."""
    resp_id = normalise_message_id(ID_STYLES[resp](number), "auto")
    receipt_id = normalise_message_id(ID_STYLES[receipt](number), "auto")
    assert resp_id in message_id_candidates(receipt_id, "auto")
    assert receipt_id in message_id_candidates(resp_id, "auto")
    assert message_id_candidates(receipt_id, "auto")[0] == receipt_id  # exact form first


# --- aiosmpplib 0.7.4 defects this module works around ---------------------------------


def their_receipt(text: str) -> DeliverSm:
    return DeliverSm(short_message=text, esm_class=0x04)  # esm_class 0x04: a receipt


def test_aiosmpplib_defect_receipt_12_digit_dates() -> None:
    text = "id:1 sub:001 dlvrd:001 submit date:231123101059 done date:231123101159 stat:DELIVRD"
    with pytest.raises(ValueError, match="unconverted data remains"):
        their_receipt(text).parse_receipt()
    ours = parse_receipt(text)
    assert ours is not None and ours.done_date == datetime(2023, 11, 23, 10, 11, 59)


def test_aiosmpplib_defect_receipt_non_numeric_err() -> None:
    for err in ("ABC", "0x0B"):
        text = f"id:1 sub:001 dlvrd:001 stat:UNDELIV err:{err} text:x"
        with pytest.raises(ValueError, match="invalid literal for int"):
            their_receipt(text).parse_receipt()
        ours = parse_receipt(text)
        assert ours is not None and ours.err == err and ours.status == "undelivered"


def test_aiosmpplib_defect_receipt_extra_space_and_underscore_keys() -> None:
    """A double space makes the key " stat" (so stat is lost), and submit_date is not
    read as a date."""
    theirs = their_receipt("id:1  stat:DELIVRD submit_date:2311231010").parse_receipt()
    assert "stat" not in theirs and theirs[" stat"] == "DELIVRD"
    assert theirs["submit_date"] == "2311231010"
    ours = parse_receipt("id:1  stat:DELIVRD submit_date:2311231010")
    assert ours is not None and ours.status == "delivered"
    assert ours.submit_date == datetime(2023, 11, 23, 10, 10)


_TOKEN = st.text(alphabet="0123456789abcdefABCDEF:\0_-xX", max_size=12)


@settings(max_examples=400)
@given(
    st.tuples(*[_TOKEN] * 7),
    st.one_of(st.none(), st.text(max_size=40)),
    st.sampled_from(["Text:", "text:"]),
    st.sampled_from(["dlvrd", "dlvr"]),
)
def test_standard_layout_shortcut_reads_what_the_tolerant_reader_reads(
    values: tuple[str, ...], body: str | None, text_key: str, dlvrd: str
) -> None:
    """Receipts in Appendix B's layout take a one-match shortcut; whatever the values
    hold (colons, NULs, keys glued to them), the result is the tolerant reader's."""
    names = ["id", "sub", dlvrd, "submit date", "done date", "stat", "err"]
    raw = " ".join(f"{n}:{v}" for n, v in zip(names, values, strict=True))
    if body is not None:
        raw += f" {text_key}{body}"
    fast, slow = parse_receipt(raw), receipt_module._parse_tolerantly(raw)
    if ":" not in "".join(values) and values[0]:
        assert receipt_module._STANDARD.fullmatch(raw), raw  # the shortcut was taken
    if slow is None:
        assert fast is None
        return
    assert fast is not None
    for name in ("message_id", "stat", "err", "sub", "dlvrd", "submit_date", "done_date", "text"):
        assert getattr(fast, name) == getattr(slow, name), (name, raw)
