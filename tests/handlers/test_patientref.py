"""Patient references (issue 12, part 3): NHS modulus 11, the deployment's own schemes,
and replies that echo only the last 3 characters."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from handlers.identifiers import nhs_check_digit_ok
from handlers.patientref import PatientRefInvalid, PatientRefScheme, check_patient_ref

HOSPITAL = PatientRefScheme("hospital no.", "RX[0-9]{7}")
CHI = PatientRefScheme("CHI no.", r"(0[1-9]|[12][0-9]|3[01])(0[1-9]|1[0-2])[0-9]{6}")


@pytest.mark.parametrize("typed", ["9434765919", "943 476 5919", "943-476-5919", "943.476.5919", " 9434765919 "])
def test_nhs_numbers_in_any_layout(typed):
    ref = check_patient_ref(typed)
    assert (ref.canonical, ref.scheme, ref.ending, ref.hint) == ("9434765919", "NHS no.", "919", "NHS no. ending 919")
    assert "9434765919" not in repr(ref)


@pytest.mark.parametrize(
    "typed, says",
    [
        ("9434765918", "not a valid NHS number"),  # one digit off
        ("4000000000", "not a valid NHS number"),
        ("Jane", "never a name"),  # a name typed as the reference (the case)
        ("JaneDoe", "never a name"),
        ("12345", "has 5 digits"),
        ("94347659190", "has 11 digits"),
        ("RX1234567", "never a name"),  # no hospital scheme configured here
        ("", "empty"),
    ],
)
def test_refused_references_say_why_without_repeating_them(typed, says):
    with pytest.raises(PatientRefInvalid) as exc:
        check_patient_ref(typed)
    msg = str(exc.value)
    assert says in msg and "patient=" in msg
    if typed:
        assert typed not in msg


def test_modulus_11_check_digit():
    assert nhs_check_digit_ok("9434765919")
    assert not nhs_check_digit_ok("9434765918")
    assert not nhs_check_digit_ok("943476591")  # 9 digits
    # a check digit of 10 means the number cannot be an NHS number: no last digit makes it valid
    assert not any(nhs_check_digit_ok("100000001" + d) for d in "0123456789")


@given(st.text("0123456789", min_size=9, max_size=9))
def test_exactly_one_or_no_check_digit_is_valid(first9):
    assert sum(nhs_check_digit_ok(first9 + d) for d in "0123456789") <= 1


def test_deployment_schemes():
    ref = check_patient_ref("rx-123 4567", [HOSPITAL])
    assert (ref.canonical, ref.hint) == ("RX1234567", "hospital no. ending 567")
    with pytest.raises(PatientRefInvalid) as exc:
        check_patient_ref("Doe", [HOSPITAL])
    assert "an NHS number (10 digits) or a hospital no." in str(exc.value)
    # a 10-digit reference is held to modulus 11 whatever scheme matches it, and named by it
    chi = check_patient_ref("0101751230", [CHI])
    assert chi.hint == "CHI no. ending 230" and nhs_check_digit_ok("0101751230")
    with pytest.raises(PatientRefInvalid, match="not a valid CHI number"):
        check_patient_ref("0101751237", [CHI])
