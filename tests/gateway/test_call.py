"""The pure call logic: reasons from SIP responses and what each state admits."""

import pytest

from gateway.call import CallState, Reason, allows, reason_from_sip, sip_for_reason


@pytest.mark.parametrize(
    ("code", "alerted", "reason"),
    [
        (404, False, Reason.DIAL_STRING),
        (484, False, Reason.DIAL_STRING),
        (604, False, Reason.DIAL_STRING),
        (401, False, Reason.PERMISSION),
        (403, False, Reason.PERMISSION),
        (407, False, Reason.PERMISSION),
        (503, False, Reason.CONGESTION),
        (480, False, Reason.CONGESTION),
        (480, True, Reason.NOT_RESPONDING),
        (408, True, Reason.NOT_RESPONDING),
        (500, False, Reason.EQUIPMENT),
        (502, False, Reason.EQUIPMENT),
        (504, False, Reason.EQUIPMENT),
        (486, True, Reason.BUSY),
        (600, False, Reason.BUSY),
        (302, False, Reason.REDIRECTED),
        (603, True, Reason.REJECTED),
        (488, False, Reason.MEDIA),
        (606, False, Reason.MEDIA),
        (415, False, Reason.MEDIA),
        (499, False, Reason.ERROR),
        (580, False, Reason.ERROR),
    ],
)
def test_reason_from_sip(code: int, alerted: bool, reason: Reason) -> None:
    assert reason_from_sip(code, alerted) is reason


def test_unknown_wire_reason_is_error() -> None:
    assert Reason.from_wire("nonsense") is Reason.ERROR
    assert Reason.from_wire(17) is Reason.ERROR
    assert Reason.from_wire("busy") is Reason.BUSY


def test_decline_maps_to_sip() -> None:
    assert sip_for_reason(Reason.BUSY) == (486, "Busy Here")
    assert sip_for_reason(Reason.REJECTED) == (603, "Decline")
    assert sip_for_reason(Reason.NOT_RESPONDING)[0] == 480


def test_states_admit_their_commands() -> None:
    for action in ("accept", "answer", "terminate", "hold", "retrieve", "transfer"):
        assert not allows(CallState.TERMINATED, action)
    assert allows(CallState.OFFERED, "accept")
    assert not allows(CallState.ACTIVE, "accept")
    assert allows(CallState.ACTIVE, "hold") and not allows(CallState.ACTIVE, "retrieve")
    assert allows(CallState.HELD, "retrieve") and not allows(CallState.HELD, "hold")
    assert allows(CallState.HOLDING, "transfer") and not allows(CallState.RINGING, "transfer")
