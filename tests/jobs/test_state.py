"""The job tables against QEMU 7.2's (qemu-facts 5.5), cell by cell."""
import pytest

from blocklayer.jobs.state import (
    TRANSITIONS,
    VERBS,
    BadTransition,
    JobStatus,
    JobVerb,
    VerbRefused,
    check_transition,
    check_verb,
)

ORDER = ["undefined", "created", "running", "paused", "ready", "standby", "waiting", "pending", "aborting", "concluded", "null"]
# QEMU's JobSTT, rows are the old status, columns the new one (in ORDER)
STT = {
    "undefined": "01000000000",
    "created":   "00100000101",
    "running":   "00011010100",
    "paused":    "00100000000",
    "ready":     "00000110100",
    "standby":   "00001000000",
    "waiting":   "00000001100",
    "pending":   "00000000110",
    "aborting":  "00000000110",
    "concluded": "00000000001",
    "null":      "00000000000",
}
VERB_TABLE = {
    "cancel":    "01111111000",
    "pause":     "01111100000",
    "resume":    "01111100000",
    "set-speed": "01111100000",
    "complete":  "00001000000",
    "finalize":  "00000001000",
    "dismiss":   "00000000010",
    "change":    "00111100000",
}


def test_status_names_in_qemu_order():
    assert [s.value for s in JobStatus] == ORDER


@pytest.mark.parametrize("old", ORDER)
@pytest.mark.parametrize("new", ORDER)
def test_transitions(old, new):
    allowed = STT[old][ORDER.index(new)] == "1"
    assert (JobStatus(new) in TRANSITIONS[JobStatus(old)]) == allowed
    if allowed:
        check_transition("j", JobStatus(old), JobStatus(new))
    else:
        with pytest.raises(BadTransition):
            check_transition("j", JobStatus(old), JobStatus(new))


@pytest.mark.parametrize("verb", list(VERB_TABLE))
@pytest.mark.parametrize("status", ORDER)
def test_verbs(verb, status):
    allowed = VERB_TABLE[verb][ORDER.index(status)] == "1"
    assert (JobStatus(status) in VERBS[JobVerb(verb)]) == allowed
    if allowed:
        check_verb("j", JobStatus(status), JobVerb(verb))
        return
    with pytest.raises(VerbRefused) as exc:
        check_verb("job0", JobStatus(status), JobVerb(verb))
    assert str(exc.value) == (f"Job 'job0' in state '{status}' cannot accept "
                              f"command verb '{verb}'")
    assert exc.value.qmp_class == "GenericError"
