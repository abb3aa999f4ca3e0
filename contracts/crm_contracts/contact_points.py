"""Normalised contact points, so that the system that records a contact and
the one that looks the customer up compare the same text: e-mail addresses
in lower case, phone numbers in E.164 (``+34911234567``).

A refusal names the field and the problem but never echoes the value: a
contact point is personal data, and refusals end in logs and dead letters
that erasure cannot reach.

Needs the ``normalise`` extra (phonenumbers, email-validator)."""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError, validate_email

from crm_contracts.errors import InvalidArgument


def normalise_email(value: str, field: str = "emails") -> str:
    try:
        return validate_email(value.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidArgument(
            field, f"is not a valid email address: {exc}") from None


def normalise_phone(value: str, field: str = "phones") -> str:
    """E.164, e.g. ``+34911234567``. Numbers must carry their country code."""
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidArgument(field, "is not a phone number in international format "
                                     f"(+<country code><number>): {exc}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgument(field, "is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
