"""The bot's TOML configuration (stdlib ``tomllib``), with secrets from files or env vars.

Layout (see ``referral-bot init`` for a commented example, deploy/config.example.toml
for a production one)::

    [matrix]       homeserver, user_id, password/admin token/pickle key (secrets), store_dir
    [storage]      backend, sqlite_path / dsn, key_file, deployment_secret
    [policy]       grace period, max lifetime, reminder, retention, adult age, consent window,
                   [[policy.patient_references]] (hospital numbers, CHI: name + pattern),
                   time zone, unassigned photos, held photos (preview), photo window,
                   !morephotos extension, the clock's working time and timers (escalation,
                   urgent referrals)
    [directory]    allowed_users / allowed_servers + [[directory.clinicians]]
    [specialties.<key>]  room, title, aliases, roster, lead (escalations mention them)
    [telegram]     (parsed by the Telegram transport itself from ``Config.raw``)

A secret named ``X`` (``password``, ``access_token``, ``admin_token``, ``pickle_key``,
``deployment_secret``) is read, first match wins, from: ``X_env`` (name of an
environment variable), ``X_file`` (a file path), the environment variable
``REFERRAL_BOT_<SECTION>_<X>`` (e.g. ``REFERRAL_BOT_MATRIX_PASSWORD``), or ``X`` written
inline (discouraged; allowed for the throwaway demo). Secrets never appear in
``repr()`` or in error messages.

Durations are given with their unit in the key name: ``grace_period_seconds``,
``grace_period_minutes``, ``..._hours`` or ``..._days``. Working time (the clock's
escalation and urgent timers, handlers/clock.py) is given in ``..._working_hours``,
``..._working_minutes`` or ``..._working_seconds``: a "working day" has no fixed length.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Clinician", "MatrixConfig", "StorageConfig", "Config", "load_config",
           "parse_config"]


class ConfigError(ValueError):
    """The configuration is unusable; str() is one plain sentence naming the setting."""


class Secret(str):
    """A string that does not show itself in repr()."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Clinician:
    """One ``[[directory.clinicians]]`` entry. ``role`` (default ``"referrer"``, so
    configs written before roles were enforced keep working for GPs): ``referrer`` may
    record consent and refer; ``specialist`` may not, and with ``specialties`` is on
    those rosters (may be in the room, may give the opinion); ``both`` is both."""

    user_id: str
    role: str = "referrer"  # referrer | specialist | both
    practice: str | None = None
    name: str = ""
    specialties: tuple[str, ...] = ()

    @property
    def may_refer(self) -> bool:
        return self.role in ("referrer", "both")


@dataclass(frozen=True)
class MatrixConfig:
    homeserver: str
    user_id: str
    store_dir: Path
    password: Secret | None = field(default=None, repr=False)
    access_token: Secret | None = field(default=None, repr=False)
    device_id: str | None = None
    device_name: str = "referral-bot"
    pickle_key: Secret | None = field(default=None, repr=False)
    admin_token: Secret | None = field(default=None, repr=False)
    admin_is_bot: bool = False  # the bot account itself is a server admin
    decrypt_grace_seconds: float = 60.0
    tick_seconds: float = 0.5
    sync_timeout_ms: int = 30000


@dataclass(frozen=True)
class StorageConfig:
    backend: str = "sqlite"
    sqlite_path: Path = Path("var/referral-bot.sqlite3")
    dsn: str | None = None
    key_file: Path = Path("var/referral-bot.key")
    export_dir: Path = Path("var/exports")  # where !export writes FHIR bundles (0600)
    deployment_secret: Secret | None = field(default=None, repr=False)
    # the signed audit head outside the database (storage/seal.py); best on another volume
    anchor_file: Path = Path("var/referral-bot.sqlite3.anchor")


@dataclass(frozen=True)
class SpecialtyConfig:
    key: str
    room: str
    title: str = ""
    aliases: tuple[str, ...] = ()
    roster: tuple[str, ...] = ()
    lead: str | None = None  # escalations mention them (else the whole roster); must be on the roster


@dataclass(frozen=True)
class Config:
    path: Path | None
    matrix: MatrixConfig | None
    storage: StorageConfig
    policy_values: dict[str, Any]
    clinicians: dict[str, Clinician]
    allowed_users: frozenset[str]
    allowed_servers: frozenset[str]
    specialties: dict[str, SpecialtyConfig]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    # -- helpers ----------------------------------------------------------
    def is_allowed(self, user_id: str) -> bool:
        if user_id in self.allowed_users or user_id in self.clinicians:
            return True
        server = user_id.split(":", 1)[1] if ":" in user_id else ""
        return server in self.allowed_servers

    def in_directory(self, user_id: str) -> bool:
        return user_id in self.clinicians

    def roster(self, specialty: str) -> frozenset[str]:
        spec = self.specialties.get(specialty)
        explicit = set(spec.roster) if spec else set()
        from_dir = {c.user_id for c in self.clinicians.values()
                    if specialty in c.specialties and c.role in ("specialist", "both")}
        return frozenset(explicit | from_dir)

    def policy(self):
        """The workflow's ``handlers.policy.Policy`` built from [policy] and [specialties]."""
        from handlers.policy import Policy, Specialty

        specs = {
            key: Specialty(key=key, title=s.title or key.capitalize(), roster=self.roster(key),
                           aliases=frozenset(a.lower() for a in s.aliases), lead=s.lead)
            for key, s in self.specialties.items()
        }
        practices = {c.user_id: c.practice for c in self.clinicians.values() if c.practice}
        filing = self.raw.get("filing") or {}
        values = dict(self.policy_values)
        values["filing_enabled"] = bool(isinstance(filing, dict) and filing.get("sink"))  # docs/filing.md
        if isinstance(filing, dict) and "retention_warning_days" in filing:
            values["retention_warning"] = timedelta(days=float(filing["retention_warning_days"]))
        return Policy(specialties=specs, practices=practices, **values)


# --------------------------------------------------------------------------- parsing
def read_secret(section: dict, name: str, section_name: str, base: Path | None,
                required: bool = False, where: str | None = None,
                what: str | None = None) -> Secret | None:
    """A secret from ``<name>_env``, ``<name>_file``, ``REFERRAL_BOT_<SECTION>_<NAME>`` or
    the value itself, in that order; *where* names the table in messages (default
    ``[section]``), *what* the secret (default its key). The one reader of secrets, so
    every section follows the same rules. An empty secret file is an error: it is a
    mount or a copy gone wrong, never a secret."""
    label = where or f"[{section_name}]"
    env_name = section.get(f"{name}_env")
    if env_name:
        val = os.environ.get(str(env_name))
        if val:
            return Secret(val.strip())
        if required:
            raise ConfigError(f"{label} {name}_env names {env_name}, which is not set.")
    file_name = section.get(f"{name}_file")
    if file_name:
        p = Path(file_name)
        if base and not p.is_absolute():
            p = base / p
        try:
            value = p.read_text().strip()
        except OSError:
            raise ConfigError(f"{label} {name}_file {str(p)!r} cannot be read.") from None
        if not value:
            raise ConfigError(f"{label} {name}_file {str(p)!r} is empty.")
        return Secret(value)
    default_env = f"REFERRAL_BOT_{section_name.upper()}_{name.upper()}"
    if os.environ.get(default_env):
        return Secret(os.environ[default_env].strip())
    if section.get(name):
        return Secret(str(section[name]))
    if required:
        raise ConfigError(f"{label} needs {what or name} (set {name}_file, {name}_env or "
                          f"the environment variable {default_env}).")
    return None


_UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}


def _duration(section: dict, name: str, units: dict[str, int] = _UNITS) -> timedelta | None:
    """``<name>_<unit>`` for one of *units* (seconds per unit); None when not given."""
    found = [(unit, section[f"{name}_{unit}"]) for unit in units if f"{name}_{unit}" in section]
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError(f"[policy] {name} is given more than once; keep one unit.")
    unit, value = found[0]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"[policy] {name}_{unit} must be a number of {unit.replace('_', ' ')} (0 or more).")
    return timedelta(seconds=float(value) * units[unit])


_WORKING_UNITS = {"working_seconds": 1, "working_minutes": 60, "working_hours": 3600}
_WEEKDAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}


def _working_duration(section: dict, name: str) -> timedelta | None:
    """``<name>_working_hours`` / ``_working_minutes`` / ``_working_seconds``: working time."""
    if f"{name}_working_days" in section or f"{name}_days" in section:
        raise ConfigError(f"[policy] {name} is working time: give it in _working_hours, _working_minutes "
                          "or _working_seconds (a working day has no fixed length).")
    return _duration(section, name, _WORKING_UNITS)


def _clock_of_day(text: str) -> timedelta:
    hours, sep, minutes = text.strip().partition(":")
    if not sep or not hours.isdigit() or not minutes.isdigit() or len(minutes) != 2:
        raise ValueError(text)
    value = timedelta(hours=int(hours), minutes=int(minutes))
    if int(minutes) > 59 or value > timedelta(hours=24):
        raise ValueError(text)
    return value


def _working_calendar(p: dict) -> dict[str, Any]:
    """working_days = ["mon", …], working_hours = "09:00-17:00", non_working_dates = [dates]."""
    from datetime import date

    out: dict[str, Any] = {}
    if "working_days" in p:
        days = p["working_days"]
        if not isinstance(days, list) or not days:
            raise ConfigError('[policy] working_days must be a list such as ["mon", "tue", "wed", "thu", "fri"].')
        try:
            out["working_days"] = frozenset(_WEEKDAYS[str(d).strip().lower()[:3]] for d in days)
        except KeyError:
            raise ConfigError('[policy] working_days: use mon, tue, wed, thu, fri, sat, sun.') from None
    if "working_hours" in p:
        start, sep, end = str(p["working_hours"]).partition("-")
        try:
            if not sep:
                raise ValueError
            hours = (_clock_of_day(start), _clock_of_day(end))
        except ValueError:
            raise ConfigError('[policy] working_hours must look like "09:00-17:00" (local time; "24:00" is '
                              'midnight).') from None
        if hours[1] <= hours[0]:
            raise ConfigError("[policy] working_hours must end after they start.")
        out["working_hours"] = hours
    if "non_working_dates" in p:
        dates = p["non_working_dates"]
        if not isinstance(dates, list):
            raise ConfigError('[policy] non_working_dates must be a list of dates such as ["2026-12-25"].')
        try:
            out["non_working_dates"] = frozenset(
                d if isinstance(d, date) else date.fromisoformat(str(d)) for d in dates)
        except ValueError:
            raise ConfigError('[policy] non_working_dates must be dates such as "2026-12-25".') from None
    return out


def _patient_reference_schemes(entries: Any) -> tuple:
    """[[policy.patient_references]] name = "hospital no.", pattern = "RX[0-9]{7}"."""
    import re

    from handlers.patientref import PatientRefScheme

    if not isinstance(entries, list):
        raise ConfigError("[[policy.patient_references]] must be a list of tables with name and pattern.")
    out = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("pattern"):
            raise ConfigError(f"[[policy.patient_references]] entry {i} needs name and pattern.")
        try:
            re.compile(str(entry["pattern"]))
        except re.error:
            raise ConfigError(f"[[policy.patient_references]] entry {i}: pattern is not a valid regular expression.") from None
        out.append(PatientRefScheme(name=str(entry["name"]), pattern=str(entry["pattern"])))
    return tuple(out)


def _path(value: Any, base: Path | None, default: str) -> Path:
    p = Path(str(value) if value else default)
    if base and not p.is_absolute():
        p = base / p
    return p


def parse_config(raw: dict[str, Any], path: Path | None = None, need_matrix: bool = True) -> Config:
    base = path.parent if path else None
    if not isinstance(raw, dict):
        raise ConfigError("The configuration must be a TOML table.")

    m = raw.get("matrix")
    matrix = None
    if m is not None or need_matrix:
        if not isinstance(m, dict):
            raise ConfigError("The configuration needs a [matrix] section.")
        for key in ("homeserver", "user_id"):
            if not m.get(key):
                raise ConfigError(f"[matrix] needs {key}.")
        if not str(m["user_id"]).startswith("@") or ":" not in str(m["user_id"]):
            raise ConfigError("[matrix] user_id must look like @name:server.")
        password = read_secret(m, "password", "matrix", base)
        token = read_secret(m, "access_token", "matrix", base)
        if not password and not token:
            if m.get("password_env"):
                raise ConfigError(f"[matrix] password_env names {m['password_env']}, which is not set.")
            raise ConfigError("[matrix] needs password (or access_token): set password_file, "
                              "password_env or REFERRAL_BOT_MATRIX_PASSWORD.")
        pickle = read_secret(m, "pickle_key", "matrix", base)
        store_dir = _path(m.get("store_dir"), base, "var/matrix-store")
        matrix = MatrixConfig(
            homeserver=str(m["homeserver"]).rstrip("/"),
            user_id=str(m["user_id"]),
            store_dir=store_dir,
            password=password,
            access_token=token,
            device_id=m.get("device_id"),
            device_name=str(m.get("device_name", "referral-bot")),
            pickle_key=pickle,
            admin_token=read_secret(m, "admin_token", "matrix", base),
            admin_is_bot=bool(m.get("admin_is_bot", False)),
            decrypt_grace_seconds=float(m.get("decrypt_grace_seconds", 60)),
            tick_seconds=float(m.get("tick_seconds", 0.5)),
            sync_timeout_ms=int(m.get("sync_timeout_ms", 30000)),
        )

    s = raw.get("storage", {}) or {}
    backend = str(s.get("backend", "sqlite"))
    if backend not in ("sqlite", "postgres"):
        raise ConfigError("[storage] backend must be \"sqlite\" or \"postgres\".")
    sqlite_path = _path(s.get("sqlite_path"), base, "var/referral-bot.sqlite3")
    default_anchor = str(sqlite_path) + ".anchor" if backend == "sqlite" else "var/referral-bot.anchor"
    storage = StorageConfig(
        backend=backend,
        anchor_file=_path(s.get("anchor_file"), base, default_anchor),
        sqlite_path=sqlite_path,
        dsn=s.get("dsn"),
        key_file=_path(s.get("key_file"), base, "var/referral-bot.key"),
        export_dir=_path(s.get("export_dir"), base, "var/exports"),
        deployment_secret=read_secret(s, "deployment_secret", "storage", base),
    )

    p = raw.get("policy", {}) or {}
    policy_values: dict[str, Any] = {}
    for ours, theirs in (("grace_period", "grace_period"), ("max_lifetime", "max_lifetime"),
                         ("reminder_before", "reminder_lead"), ("reminder_lead", "reminder_lead"),
                         ("retention", "default_retention"),
                         ("default_retention", "default_retention"),
                         ("max_retention", "max_retention"),
                         ("unassigned_photo", "unassigned_photo_ttl"),
                         ("held_photo", "held_photo_ttl"),
                         ("photo_window", "photo_window"),
                         ("more_photos_extension", "more_photos_extension"),
                         ("consent_window", "consent_window"),
                         ("max_consent_window", "max_consent_window")):
        d = _duration(p, ours)
        if d is not None:
            policy_values[theirs] = d
    for key in ("adult_age", "age_out_years"):
        if key in p:
            policy_values["age_out_years"] = int(p[key])
    if "max_images_per_referral" in p:
        policy_values["max_images_per_referral"] = int(p["max_images_per_referral"])
    zone_name = p.get("time_zone", p.get("timezone"))
    if zone_name is not None:
        from handlers.timefmt import UnknownTimeZone, zone

        try:
            zone(str(zone_name))
        except UnknownTimeZone:
            raise ConfigError(f"[policy] time_zone {str(zone_name)!r} is not a time zone name like "
                              "\"Europe/London\".") from None
        policy_values["time_zone"] = str(zone_name)
    policy_values.update(_working_calendar(p))
    for ours, theirs in (("escalate_after", "escalate_after"),
                         ("urgent_escalate_after", "urgent_escalate_after"),
                         ("urgent_max_lifetime", "urgent_max_lifetime"),
                         ("urgent_reminder_before", "urgent_reminder_lead")):
        d = _working_duration(p, ours)
        if d is not None:
            policy_values[theirs] = d
    if policy_values.get("urgent_max_lifetime") is not None and not policy_values["urgent_max_lifetime"]:
        raise ConfigError("[policy] urgent_max_lifetime must be more than 0: an urgent referral needs time "
                          "to be answered.")
    if policy_values.get("unassigned_photo_ttl") is not None and not policy_values["unassigned_photo_ttl"]:
        raise ConfigError("[policy] unassigned_photo must be more than 0: the GP needs time to say "
                          "which referral a photo is for.")
    if policy_values.get("held_photo_ttl") is not None and not policy_values["held_photo_ttl"]:
        raise ConfigError("[policy] held_photo must be more than 0: the GP needs time to look at the "
                          "preview and decide.")
    schemes = _patient_reference_schemes(p.get("patient_references", []))
    if schemes:
        policy_values["patient_ref_schemes"] = schemes

    d = raw.get("directory", {}) or {}
    clinicians: dict[str, Clinician] = {}
    for entry in d.get("clinicians", []) or []:
        if not isinstance(entry, dict) or not entry.get("user_id"):
            raise ConfigError("Each [[directory.clinicians]] entry needs a user_id.")
        role = str(entry.get("role", "referrer"))
        if role not in ("referrer", "specialist", "both"):
            raise ConfigError(f"Clinician role must be referrer, specialist or both (got {role!r}).")
        c = Clinician(user_id=str(entry["user_id"]), role=role,
                      practice=entry.get("practice"), name=str(entry.get("name", "")),
                      specialties=tuple(str(x).lower() for x in entry.get("specialties", [])))
        clinicians[c.user_id] = c

    specialties: dict[str, SpecialtyConfig] = {}
    for key, spec in (raw.get("specialties", {}) or {}).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"[specialties.{key}] must be a table.")
        if matrix is not None and not spec.get("room"):  # Telegram-only configs use forum groups
            raise ConfigError(f"[specialties.{key}] needs room (the room id of an encrypted room).")
        lead = spec.get("lead")
        specialties[key.lower()] = SpecialtyConfig(
            key=key.lower(), room=str(spec.get("room", "")), title=str(spec.get("title", "")),
            aliases=tuple(spec.get("aliases", [])), roster=tuple(spec.get("roster", [])),
            lead=str(lead) if lead else None)

    config = Config(
        path=path, matrix=matrix, storage=storage, policy_values=policy_values,
        clinicians=clinicians,
        allowed_users=frozenset(d.get("allowed_users", []) or []),
        allowed_servers=frozenset(s.lstrip(":") for s in (d.get("allowed_servers", []) or [])),
        specialties=specialties, raw=raw,
    )
    for key, spec in specialties.items():
        if spec.lead and spec.lead not in config.roster(key):
            raise ConfigError(f"[specialties.{key}] lead {spec.lead} is not on its roster; add them to roster "
                              f"(or as a specialist in {key} in [directory]).")
    return config


def load_config(path: str | os.PathLike, need_matrix: bool = True) -> Config:
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"The config file {str(p)!r} does not exist "
                          "(`referral-bot init` writes an example).") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"The config file {str(p)!r} is not valid TOML: {exc}.") from None
    return parse_config(raw, p.resolve(), need_matrix=need_matrix)
