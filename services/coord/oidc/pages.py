"""The HTML pages of the login flow: small, self-contained, every value escaped."""

from __future__ import annotations

import html

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5}"
          "code,pre{background:#f3f3f3;padding:.1rem .3rem}button{font-size:1rem;padding:.5rem 1rem}")


def page(title: str, body_html: str) -> bytes:
    """A page; `body_html` is already escaped by the caller."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>trioscale: {html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body_html}</body></html>\n"
    ).encode()


def refused(status: int, reason: str) -> bytes:
    """A login that ended without a device logged in: why, and what to do."""
    heading = "Login refused" if status in (401, 403) else "Login failed"
    return page(heading, f"<p id='reason'>{html.escape(reason)}</p>"
                         "<p>The device was not logged in. Run <code>tailscale up</code> on it to try again.</p>")


def unknown_registration(reg_id: str) -> bytes:
    return page("Unknown login link", f"<p id='reason'>No device is waiting to log in with "
                                      f"<code>{html.escape(reg_id[:80])}</code>: the link is wrong or has expired.</p>"
                                      "<p>Run <code>tailscale up</code> on the device for a new one.</p>")


def confirm(action: str, csrf_name: str, csrf: str, *, who: str, hostname: str, os_name: str, machine: str) -> bytes:
    """The last step: the user sees which device they are about to log in, and says so (a link to
    /register/<id> sent by someone else would otherwise log that person's device in as them)."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in (("Device", hostname or "(no name)"), ("OS", os_name or "(unknown)"),
                                ("Machine key", machine), ("Log in as", who)))
    return page("Log in this device?",
                f"<table>{rows}</table>"
                f"<form method='post' action='{html.escape(action)}'>"
                f"<input type='hidden' name='{html.escape(csrf_name)}' value='{html.escape(csrf)}'>"
                "<button type='submit' id='confirm'>Log in this device</button></form>"
                "<p>Only confirm for a device you just ran <code>tailscale up</code> on.</p>")


def done(who: str, hostname: str, verb: str) -> bytes:
    return page(f"Device {verb}", f"<p id='result'>{html.escape(hostname or 'The device')} is {verb} as "
                                  f"<strong>{html.escape(who)}</strong>.</p><p>You can close this window.</p>")


def admin_approval(reg_id: str) -> bytes:
    """Without OIDC: the admin approves the device on the server."""
    safe = html.escape(reg_id)
    return page("Machine registration",
                "<p>An administrator approves this machine by running, on the server:</p>"
                f"<pre>trioscale nodes register --user USERNAME --key {safe}</pre>"
                "<p>Replace USERNAME with the user the machine will belong to.</p>")
