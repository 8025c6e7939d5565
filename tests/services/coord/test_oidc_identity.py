"""The identity an OIDC login yields: its key spelled as Headscale spells users.provider_identifier
(so users brought over from Headscale log in as themselves), the claims bounded, userinfo merged as
Headscale merges it; who may log in; the bounded table of logins under way; the `oidc:` config
rules configtest reports."""

from __future__ import annotations

from datetime import timedelta

import pytest

from trioscale.config import ConfigError, config_from_dict
from trioscale.options import oidc_options
from trioscale.services.coord.oidc import LoginRefused, PendingLogins, check_allowed, identity_from_claims, provider_id
from trioscale.services.coord.oidc.identity import ClaimError
from trioscale.services.coord.options import OidcOptions


@pytest.mark.parametrize("issuer, subject, expected", [
    ("https://idp.example.com", "sub1", "https://idp.example.com/sub1"),
    ("https://idp.example.com/", "/sub1", "https://idp.example.com/sub1"),
    ("HTTPS://idp.example.com/realms/x/", "abc", "https://idp.example.com/realms/x/abc"),
    ("https://idp.example.com", "..", "https://idp.example.com/.."),
    ("", "sub1", "/sub1"),
    ("oidc", "sub1", "oidc/sub1"),
    ("", "", ""),
])
def test_the_key_is_headscales_identifier(issuer, subject, expected):
    assert provider_id(issuer, subject) == expected


def test_userinfo_fills_in_for_the_same_subject_only():
    claims = {"iss": "https://i", "sub": "s", "email": "a@x", "exp": 2_000_000_000}
    merged = identity_from_claims(claims, {"sub": "s", "email": "b@x", "email_verified": "true", "groups": "g",
                                           "preferred_username": "bee", "picture": "https://p"})
    assert (merged.email, merged.email_verified, merged.groups, merged.username, merged.picture) == (
        "b@x", True, ("g",), "bee", "https://p")
    assert merged.expiry.timestamp() == 2_000_000_000 and merged.provider_id == "https://i/s"
    other = identity_from_claims(claims, {"sub": "someone else", "email": "evil@x"})
    assert other.email == "a@x" and not other.email_verified


def test_claims_are_bounded_and_a_subject_is_needed():
    with pytest.raises(ClaimError):
        identity_from_claims({"iss": "https://i"})
    with pytest.raises(ClaimError):
        identity_from_claims({"iss": "https://i", "sub": "s", "name": "x" * 5000})
    with pytest.raises(ClaimError):
        identity_from_claims({"iss": "https://i", "sub": "s", "groups": ["g"] * 1000})
    with pytest.raises(ClaimError):
        identity_from_claims({"iss": "https://i", "sub": "s", "email": ["a@x"]})


def test_user_names_come_from_the_claims():
    def name(**claims):
        return identity_from_claims({"iss": "https://i", "sub": "s-1/x", **claims}).user_name()

    assert name(preferred_username="alice", email="a@x.org") == "alice"
    assert name(preferred_username="not valid!", email="a@x.org") == "a@x.org"
    assert name(preferred_username="12345") == "oidc-s-1x"


def test_who_may_log_in():
    options = OidcOptions(issuer="https://i", client_id="c", allowed_domains=("example.com",),
                          allowed_groups=("admins", "staff"), allowed_users=("a@example.com", "b@example.com"))

    def check(**claims):
        check_allowed(options, identity_from_claims({"iss": "https://i", "sub": "s", **claims}))

    check(email="a@example.com", email_verified=True, groups=["staff"])
    for claims, reason in [
        ({"email": "a@example.com", "email_verified": True, "groups": ["guests"]}, "allowed group"),
        ({"email": "a@example.com", "email_verified": False, "groups": ["staff"]}, "not verified"),
        ({"email": "a@evil.example", "email_verified": True, "groups": ["staff"]}, "allowed domain"),
        ({"email": "c@example.com", "email_verified": True, "groups": ["staff"]}, "not an allowed user"),
        ({"email_verified": True, "groups": ["staff"]}, "allowed domain"),
    ]:
        with pytest.raises(LoginRefused) as refused:
            check(**claims)
        assert refused.value.status == 403 and reason in str(refused.value)
    # nothing listed: anyone the provider signs in, verified or not
    check_allowed(OidcOptions(issuer="https://i", client_id="c"), identity_from_claims({"iss": "https://i", "sub": "s"}))


def test_pending_logins_expire_are_single_use_and_bounded():
    now = [0.0]
    logins = PendingLogins(limit=2, lifetime=10, clock=lambda: now[0])
    logins.put("a", 1)
    logins.put("b", 2)
    logins.put("c", 3)
    assert len(logins) == 2 and logins.peek("a") is None
    assert logins.take("b") == 2 and logins.take("b") is None
    now[0] = 10.0
    assert logins.take("c") is None and len(logins) == 0


def test_configtest_lists_the_oidc_mistakes(tmp_path):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"oidc": {"issuer": "https://id.example", "client_secret": "x",
                                   "client_secret_path": "/run/secret", "scope": ["email"],
                                   "pkce": {"method": "S512"}}})
    text = "\n".join(info.value.problems)
    for needle in ("oidc.client_id is empty", "not both", "must include `openid`", "oidc.pkce.method"):
        assert needle in text, text
    with pytest.raises(ConfigError) as info:
        config_from_dict({"oidc": {"client_id": "x"}})
    assert "oidc.issuer is empty" in "\n".join(info.value.problems)
    with pytest.raises(ConfigError) as info:
        config_from_dict({"oidc": {"issuer": "not a url", "client_id": "x"}})
    assert "oidc.issuer" in "\n".join(info.value.problems)


def test_the_secret_is_read_from_its_file_and_never_shown(tmp_path, monkeypatch):
    (tmp_path / "secret").write_text("file-secret\n")
    monkeypatch.setenv("CREDS", str(tmp_path))
    cfg = config_from_dict({"oidc": {"issuer": "https://id.example", "client_id": "x",
                                     "client_secret_path": "${CREDS}/secret", "timeout": "3s"}})
    options = oidc_options(cfg)
    assert options.client_secret == "file-secret" and options.timeout == timedelta(seconds=3)
    assert "file-secret" not in repr(options)
    missing = config_from_dict({"oidc": {"issuer": "https://id.example", "client_id": "x",
                                         "client_secret_path": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError) as info:
        oidc_options(missing)
    assert "oidc.client_secret_path" in str(info.value)
    assert oidc_options(config_from_dict({})) is None


async def test_start_waits_for_the_provider_only_when_told_to():
    from trioscale.services.coord import register, service
    from trioscale.services.coord.oidc.registration import RegistrationPages

    class Handlers:
        def __init__(self, options):
            policy = register.RegistrationPolicy(server_url="http://ctl.test", prefix_v4=None, prefix_v6=None)
            self.registration_pages = RegistrationPages(None, policy, lambda: None, options)

    down = OidcOptions(issuer="http://127.0.0.1:9", client_id="c", timeout=timedelta(seconds=2))
    with pytest.raises(RuntimeError, match="only_start_if_oidc_is_available"):
        await service._check_provider(Handlers(down), down)
    relaxed = OidcOptions(issuer="http://127.0.0.1:9", client_id="c", timeout=timedelta(seconds=2),
                          required_at_start=False)
    await service._check_provider(Handlers(relaxed), relaxed)
