"""Form input to the API's own schemas, and their errors as translated, per-field messages."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError
from starlette.datastructures import FormData

from tokenledger.errors import DomainError
from tokenledger.schemas import check_instant
from tokenledger.web.i18n import N_

# pydantic's error types, as a user reads them (params come from the error's context).
ERROR_MESSAGES = {
    "missing": N_("This field is required."),
    "string_too_short": N_("This field is required."),
    "string_too_long": N_("At most %(max_length)s characters."),
    "string_pattern_mismatch": N_("Use lowercase letters, digits and single hyphens."),
    "greater_than_equal": N_("Must be at least %(ge)s."),
    "greater_than": N_("Must be more than %(gt)s."),
    "less_than_equal": N_("Must be at most %(le)s."),
    "less_than": N_("Must be less than %(lt)s."),
    "decimal_parsing": N_("Enter a number."),
    "decimal_type": N_("Enter a number."),
    "finite_number": N_("Enter a number."),
    "decimal_max_places": N_("At most %(decimal_places)s decimal places."),
    "decimal_max_digits": N_("Too many digits."),
    "int_parsing": N_("Enter a whole number."),
    "int_type": N_("Enter a whole number."),
    "int_from_float": N_("Enter a whole number."),
    "literal_error": N_("Choose one of the options."),
    "extra_forbidden": N_("This field is not allowed."),
}
Errors = dict[str, tuple[str, dict[str, Any]]]


def error(name: str, message: str, **params: Any) -> Errors:
    """One field's error: a msgid and its parameters."""
    return {name: (message, params)}


DEFAULT_ERROR = N_("Invalid value.")
VALIDITY_ERROR = N_("The last day must not be before the first day.")
POSITIVE_OR_UNLIMITED = N_("Enter more than 0, or choose unlimited.")


KEY_NAME_ERROR = N_("Give the key a name of at most 200 characters.")


def key_error(exc: DomainError) -> Errors:
    """An ingest key refused (auth.service.create_api_key): its name, or its organization."""
    if exc.code == "invalid_name":
        return error("name", KEY_NAME_ERROR)
    return error("organization", N_("Choose one of the options."))


def field_errors(exc: ValidationError) -> dict[str, tuple[str, dict[str, Any]]]:
    """The first error of each field: (msgid, params); model-level errors under "__all__"."""
    errors: dict[str, tuple[str, dict[str, Any]]] = {}
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        name = location[0] if location else "__all__"
        if name in errors:
            continue
        kind = error.get("type", "")
        if kind == "value_error" and "valid_until" in str(error.get("msg", "")):
            errors["valid_until"] = (VALIDITY_ERROR, {})
            continue
        message = ERROR_MESSAGES.get(kind, DEFAULT_ERROR)
        context = {key: str(value) for key, value in (error.get("ctx") or {}).items()}
        errors[name] = (message, context)
    return errors


def text(form: FormData, name: str) -> str:
    value = form.get(name, "")
    return value.strip() if isinstance(value, str) else ""


def optional(form: FormData, name: str) -> str | None:
    value = text(form, name)
    return value or None


def whole_number(form: FormData, name: str) -> int | str | None:
    """An int when the text is one; otherwise the text, for the schema to refuse."""
    value = text(form, name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def day_start(form: FormData, name: str, tz: ZoneInfo, *, after: bool = False) -> Any:
    """A date field as the first instant of that day (or of the next) in the billing zone."""
    value = text(form, name)
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
        if after:
            day += timedelta(days=1)
        return check_instant(datetime.combine(day, time(), tzinfo=tz))
    except (ValueError, OverflowError):
        return value  # refused by the schema (not a datetime, or outside the range)


def day_of(at: datetime | None, tz: ZoneInfo, *, before: bool = False) -> str:
    """The date a day field shows for an instant (the day before it, for an end)."""
    if at is None:
        return ""
    local = at.astimezone(tz)
    if before:
        local -= timedelta(days=1)
    return local.date().isoformat()
