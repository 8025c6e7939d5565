"""The fields of a request, checked: each refuses what it cannot use with `InvalidRequest` and a
message that quotes the input, cut short (`short`) so a huge input does not make a huge answer."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

from trioscale.shared.domain import secrets as keys
from trioscale.shared.domain.durations import parse_duration

from .api import InvalidRequest

__all__ = [
    "known_fields",
    "known_query",
    "flag",
    "query_flag",
    "text_field",
    "int_id",
    "MAX_ID",
    "given",
    "short",
    "key_prefix",
    "validate_tag",
    "tag_list",
    "validate_user_name",
    "parse_timestamp",
    "parse_expiration",
    "MAX_EXPIRATION",
]


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def known_fields(data: dict[str, Any], names: tuple[str, ...], where: str = "the request body") -> dict[str, Any]:
    """`data` under the camelCase `names`, each also accepted under its proto (snake_case) name as
    Headscale's gateway accepts both. Any other field is refused: a field we do not read would
    otherwise be silently dropped (a misspelt `aclTags` made an untagged key)."""
    aliases = {_snake(n): n for n in names}
    out: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        name = key if key in names else aliases.get(key)
        if name is None:
            unknown.append(key)
            continue
        if name in out:
            raise InvalidRequest(f"{name} is given twice in {where} (as {name} and {_snake(name)})")
        out[name] = value
    if unknown:
        accepted = ", ".join(names) or "none"
        raise InvalidRequest(f"unknown field(s) in {where}: {', '.join(short(k) for k in unknown[:5])} "
                             f"(accepted: {accepted})")
    return out


def known_query(args: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The query parameters under `names` (camelCase or snake_case); any other is refused."""
    single: dict[str, Any] = {}
    for key in args.keys():
        values = args.getlist(key)
        if len(values) > 1:
            raise InvalidRequest(f"query parameter {short(key)} is given more than once")
        single[key] = values[0]
    return known_fields(single, names, "the query")


def flag(data: dict[str, Any], name: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{name} must be true or false")
    return value


def query_flag(query: dict[str, Any], name: str) -> bool:
    """A boolean query parameter as grpc-gateway reads one: true/false (1/0)."""
    value = str(query.get(name, "false")).strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0", ""):
        return False
    raise InvalidRequest(f"{name} must be true or false, not {short(value)}")


def text_field(data: dict[str, Any], name: str, default: str = "") -> str:
    value = data.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be a string")
    return value


def short(value: Any) -> str:
    """`value` for an error message: repr, cut so a huge input does not make a huge answer."""
    text = repr(value)
    return text if len(text) <= 80 else text[:60] + "…"


def given(value: Any) -> bool:
    return value is not None and value != ""


#: ids are 64-bit signed integers in both databases; a larger number would reach the driver and fail there
MAX_ID = 2**63 - 1
_ID_TEXT = re.compile(r"^[0-9]{1,19}$")


def int_id(value: Any, what: str) -> int:
    if isinstance(value, str) and _ID_TEXT.match(value.strip()):
        value = int(value.strip())
    elif isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_ID:
        value = int(value)  # 3.0 is the integer 3 in JSON (and to Headscale's protobuf JSON)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise InvalidRequest(f"invalid {what} id {short(value)} (expected a number from 0 to {MAX_ID})")
    return value


def key_prefix(text: Any, kind: str, what: str) -> str:
    if not isinstance(text, str):
        raise InvalidRequest(f"the {what}'s prefix must be a string")
    try:
        return keys.prefix_of(text, kind)
    except keys.KeyFormatError as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from None


_TAG = re.compile(r"^tag:[A-Za-z][A-Za-z0-9_-]{0,62}$")
_USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,62}$")


def validate_tag(tag: Any) -> str:
    if not isinstance(tag, str) or not _TAG.match(tag):
        raise InvalidRequest(
            f"invalid tag {short(tag)}: tags look like tag:name (a letter, then letters, digits, - or _)"
        )
    return tag


def tag_list(value: Any, field: str) -> list[Any]:
    """Tags as sent: a list, or one comma-separated string (checked one by one by `validate_tag`)."""
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if not isinstance(value, list):
        raise InvalidRequest(f"{field} must be a list of tag:name strings")
    return value


def validate_user_name(name: Any) -> str:
    if not isinstance(name, str) or not _USER_NAME.match(name):
        raise InvalidRequest(
            f"invalid user name {short(name)}: use 1-63 letters, digits and . _ @ + - (starting with a letter or digit)"
        )
    if name.isdigit():
        raise InvalidRequest(f"invalid user name {name!r}: a name cannot be all digits (those are ids)")
    return name


#: the latest expiry a key or node may be given: far enough for any real use, and a datetime that
#: still fits every conversion (timezone shifts, the databases' timestamp types)
MAX_EXPIRATION = timedelta(days=3650)
#: the earliest time accepted for an explicit node expiry (anything before is as expired as this)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def parse_timestamp(value: Any, what: str, now: datetime) -> datetime:
    """An RFC 3339 time (UTC if it names no zone), between 1970 and `MAX_EXPIRATION` from now."""
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidRequest(f"invalid {what} {short(value)} (expected an RFC 3339 time)")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        when = when.astimezone(timezone.utc)  # may overflow near year 1 or 9999
    except (ValueError, OverflowError):
        raise InvalidRequest(f"invalid {what} {short(value)} (expected an RFC 3339 time)") from None
    if when < _EPOCH or when > now + MAX_EXPIRATION:
        raise InvalidRequest(f"invalid {what} {short(value)}: must be between 1970 and 10 years from now")
    return when


def parse_expiration(value: Any, default: timedelta, now: datetime) -> datetime:
    """A duration ('30m', '24h', '90d', seconds) from now, or an RFC 3339 time in the future."""
    if value is None or value == "":
        return now + default
    if isinstance(value, str) and "T" in value.upper():
        when = parse_timestamp(value, "expiration", now)
        if when <= now:
            raise InvalidRequest(f"expiration {short(value)} is in the past")
        return when
    if isinstance(value, str) and len(value) > 64:
        value = value[:64] + "…"  # too long to be a duration: refused below, message stays short
    try:
        delta = parse_duration(value)
    except ValueError:
        raise InvalidRequest(
            f"invalid expiration {short(value)}: use a duration like 30m, 24h or 90d, or an RFC 3339 time"
        ) from None
    if delta <= timedelta(0):
        raise InvalidRequest(f"invalid expiration {short(value)}: must be longer than zero")
    if delta > MAX_EXPIRATION:
        raise InvalidRequest(f"invalid expiration {short(value)}: at most 10 years")
    return now + delta
