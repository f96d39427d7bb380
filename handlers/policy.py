"""Policy: the operator's settings the workflow needs (built by bot/ from the config file).

Pure data. Defaults are the product defaults from DESIGN.md.

``specialties`` maps a specialty key (lower case, e.g. ``"dermatology"``) to a
``Specialty`` with the roster of user ids allowed to give ``!opinion`` and the
aliases GPs may type (``"derm"``, ``"skin"``). ``practices`` maps user ids to a
practice for users whose ``Actor.practice`` the transport could not fill in
(optional; ``Actor.practice`` wins when set).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

__all__ = ["Specialty", "Policy"]


@dataclass(frozen=True)
class Specialty:
    key: str  # "dermatology"
    title: str = ""  # "Dermatology advice"
    roster: frozenset[str] = frozenset()  # user ids who may give the opinion
    aliases: frozenset[str] = frozenset()  # other words GPs may type (lower case)


@dataclass(frozen=True)
class Policy:
    grace_period: timedelta = timedelta(hours=24)  # opinion -> images removed
    max_lifetime: timedelta = timedelta(days=7)  # referral without opinion -> expired
    reminder_lead: timedelta = timedelta(days=1)  # reminder this long before max lifetime
    default_retention: timedelta = timedelta(days=90)  # vault copy kept (when !consent has no retention=)
    max_retention: timedelta = timedelta(days=3650)  # longest retention a consent may ask for
    age_out_years: int = 16  # a parent's consent stops covering new sharing at this age
    specialties: dict[str, Specialty] = field(default_factory=dict)
    practices: dict[str, str] = field(default_factory=dict)
    max_images_per_referral: int = 10
    # filing into the record (docs/filing.md). Off when no sink is configured: then the
    # bot keeps no record copy and retention destroys the vault copies as before.
    filing_enabled: bool = False
    filing_retry_first: timedelta = timedelta(minutes=1)  # doubles after each failed attempt
    filing_retry_max: timedelta = timedelta(hours=6)
    retention_warning: timedelta = timedelta(days=7)  # warn this long before an unfiled referral's retention ends

    def find_specialty(self, word: str) -> Specialty | None:
        """Specialty by key, alias, or title (case-insensitive); None if unknown."""
        w = word.strip().lower()
        for spec in self.specialties.values():
            if w == spec.key.lower() or w in {a.lower() for a in spec.aliases} or (spec.title and w == spec.title.lower()):
                return spec
        return None

    def specialty_names(self) -> list[str]:
        return sorted(self.specialties)
