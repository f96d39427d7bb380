"""Policy: the operator's settings the workflow needs (built by bot/ from the config file).

Pure data. Defaults are the product defaults from DESIGN.md.

``specialties`` maps a specialty key (lower case, e.g. ``"dermatology"``) to a
``Specialty`` with the roster of user ids allowed to give ``!opinion`` and the
aliases GPs may type (``"derm"``, ``"skin"``). ``practices`` maps user ids to a
practice for users whose ``Actor.practice`` the transport could not fill in
(optional; ``Actor.practice`` wins when set).

``consent_window`` is how long after ``!consent`` referrals may be opened under it
when the GP gives no ``valid-for=`` (one episode; issue 12), ``max_consent_window``
the longest ``valid-for=`` allowed. ``patient_ref_schemes`` are the deployment's
own patient-reference schemes accepted besides NHS numbers (handlers/patientref.py).

The clock (issue 12 part 5, handlers/clock.py): ``working_days`` / ``working_hours`` /
``non_working_dates`` define working time in ``time_zone``; ``escalate_after`` and the
``urgent_*`` timers are working time; ``Specialty.lead`` is who an escalation mentions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from handlers.patientref import PatientRefScheme

__all__ = ["Specialty", "Policy", "PatientRefScheme"]


@dataclass(frozen=True)
class Specialty:
    key: str  # "dermatology"
    title: str = ""  # "Dermatology advice"
    roster: frozenset[str] = frozenset()  # user ids who may give the opinion
    aliases: frozenset[str] = frozenset()  # other words GPs may type (lower case)
    # the roster member mentioned when a referral waits too long (None: the whole roster)
    lead: str | None = None


@dataclass(frozen=True)
class Policy:
    grace_period: timedelta = timedelta(hours=24)  # opinion -> images removed
    max_lifetime: timedelta = timedelta(days=7)  # referral without opinion -> expired
    reminder_lead: timedelta = timedelta(days=1)  # reminder this long before max lifetime
    default_retention: timedelta = timedelta(days=90)  # vault copy kept (when !consent has no retention=)
    max_retention: timedelta = timedelta(days=3650)  # longest retention a consent may ask for
    age_out_years: int = 16  # a parent's consent stops covering new sharing at this age
    consent_window: timedelta = timedelta(days=30)  # one episode: referrals may open this long after !consent
    max_consent_window: timedelta = timedelta(days=365)  # the longest valid-for= a GP may give
    patient_ref_schemes: tuple[PatientRefScheme, ...] = ()  # accepted besides NHS numbers (hospital no. ...)
    specialties: dict[str, Specialty] = field(default_factory=dict)
    practices: dict[str, str] = field(default_factory=dict)
    max_images_per_referral: int = 10
    # times shown to people are in this IANA zone, with its abbreviation (storage stays UTC)
    time_zone: str = "Europe/London"
    # a photo the bot could not place is kept (clean, in the vault, never posted) this long
    # for the GP to say which referral it is for; then it is destroyed and the GP is told
    unassigned_photo_ttl: timedelta = timedelta(minutes=10)
    # a photo held because the check found a face or text (consent not covering identifiable
    # images) waits this long for the GP's !blur or !discard; then it and its preview are
    # destroyed and the GP is told (nothing undecided lingers in the vault or the chat)
    held_photo_ttl: timedelta = timedelta(hours=24)
    # a referral still counts as "waiting for photos" this long after its last photo, so a
    # burst of photos of one patient is not split by a referral opened meanwhile
    photo_window: timedelta = timedelta(minutes=10)
    # !morephotos keeps the referral open this much longer (from the request's deadline)
    more_photos_extension: timedelta = timedelta(days=2)
    # filing into the record (docs/filing.md). Off when no sink is configured: then the
    # bot keeps no record copy and retention destroys the vault copies as before.
    filing_enabled: bool = False
    filing_retry_first: timedelta = timedelta(minutes=1)  # doubles after each failed attempt
    filing_retry_max: timedelta = timedelta(hours=6)
    retention_warning: timedelta = timedelta(days=7)  # warn this long before an unfiled referral's retention ends
    # the clock as a safety net (issue 12 part 5; handlers/clock.py, docs/commands.md "The clock").
    # Working time: these hours (local wall clock, offsets from midnight; 24 h = midnight)
    # on these weekdays (Monday = 0), minus the deployment's bank holidays.
    working_days: frozenset[int] = frozenset({0, 1, 2, 3, 4})
    working_hours: tuple[timedelta, timedelta] = (timedelta(hours=9), timedelta(hours=17))
    non_working_dates: frozenset[date] = frozenset()
    escalate_after: timedelta = timedelta(hours=16)  # working time from the first photo posted; 0 = off
    urgent_escalate_after: timedelta = timedelta(hours=4)  # the same for urgent / 2ww referrals
    urgent_max_lifetime: timedelta = timedelta(hours=16)  # working time: an urgent referral's answer window
    urgent_reminder_lead: timedelta = timedelta(hours=4)  # working time: the urgent expiry warning's lead

    def find_specialty(self, word: str) -> Specialty | None:
        """Specialty by key, alias, or title (case-insensitive); None if unknown."""
        w = word.strip().lower()
        for spec in self.specialties.values():
            if w == spec.key.lower() or w in {a.lower() for a in spec.aliases} or (spec.title and w == spec.title.lower()):
                return spec
        return None

    def specialty_names(self) -> list[str]:
        return sorted(self.specialties)

    def specialty_words(self) -> frozenset[str]:
        """Every word that names a specialty (keys, aliases, one-word titles), lower case:
        the grammar never reads one of them as an id."""
        words: set[str] = set()
        for spec in self.specialties.values():
            words.add(spec.key.lower())
            words.update(a.lower() for a in spec.aliases)
            if spec.title and " " not in spec.title.strip():
                words.add(spec.title.strip().lower())
        return frozenset(words)
    def reference_patterns(self) -> list:
        """Compiled patterns of the deployment's own reference schemes, for the identifier
        guard (``handlers.identifiers.find_identifiers(..., reference_patterns=...)``)."""
        return [scheme.compiled() for scheme in self.patient_ref_schemes]
