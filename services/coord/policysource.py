"""Where the coordinator's policy comes from: the database (`policy.mode: database`, set with
`trioscale policy set` / PUT /api/v1/policy) or a file (`policy.mode: file`, `policy.path`).

* Database: every `policy.set` change in the log installs the newest version. Versions are checked
  (parsed, compiled, `tests` run) by the admin API before they are stored.
* File: read at start (an invalid file stops the start with the reason); then checked every second
  (mtime/size, then a hash of the content) and re-read on SIGHUP. A changed file that is invalid is
  logged with line and column and the previous policy stays in force.
* No policy at all (database mode, nothing stored; file mode without `policy.path`, as Headscale
  allows) = allow all, like Tailscale's default policy.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from trioscale.shared.domain.netmap import Tailnet
from trioscale.shared.domain.policy import Policy, PolicyError
from trioscale.shared.store.base import Store

from trioscale.shared.domain.policy.host import PolicyHost, parse_and_check

log = logging.getLogger("trioscale.coord.policy")

#: how often the policy file is looked at (mtime and size; the content is hashed when they change)
FILE_POLL_INTERVAL = 1.0
#: what an unreadable stored policy is replaced with: deny all (fail closed)
DENY_ALL = '{"acls": []}'

#: installs a validated policy (None = allow all) with its text and stored version
Install = Callable[[Policy | None, str | None, int | None], None]


class PolicyFileError(Exception):
    """The policy file cannot be used at start (missing, unreadable or invalid)."""


def read_policy_file(path: str | os.PathLike[str]) -> tuple[str, str]:
    """(text, sha256) of the file; OSError / UnicodeDecodeError propagate."""
    data = Path(path).read_bytes()
    return data.decode("utf-8"), hashlib.sha256(data).hexdigest()


class PolicySource:
    """The policy's source for one coordinator. `host` is the live policy (its version says what is
    in force), `tailnet` what a changed file is checked against, `install` how a new one goes live."""

    def __init__(self, store: Store, *, mode: str, path: str | None, tailnet: Tailnet, host: PolicyHost,
                 install: Install) -> None:
        self.store = store
        self.mode = mode
        self.path = path
        self.tailnet = tailnet
        self.host = host
        self.install = install
        #: the content last read from the file (an unchanged file is not parsed again)
        self.file_digest: str | None = None

    async def initial(self) -> tuple[Policy | None, str | None, int | None]:
        if self.mode == "file":
            path = self.path
            if path is None:
                log.info("policy.mode is file and no policy.path is set: all traffic is allowed")
                return None, None, None
            try:
                text, digest = read_policy_file(path)  # type: ignore[arg-type]
                policy = Policy.parse(text)
            except OSError as exc:
                raise PolicyFileError(f"policy file {path}: {exc.strerror or exc}") from None
            except (UnicodeDecodeError, PolicyError) as exc:
                raise PolicyFileError(f"policy file {path}: {exc}") from None
            self.file_digest = digest
            log.info("policy loaded from %s", path)
            return policy, text, None
        record = await self.store.get_policy()
        if record is None:
            log.info("no policy set: all traffic is allowed (set one with `trioscale policy set -f FILE`)")
            return None, None, None
        try:
            policy = Policy.parse(record.text)
        except PolicyError as exc:
            log.error("stored policy version %s cannot be parsed (%s); denying all traffic until a valid "
                      "policy is set", record.version, exc)
            return Policy.parse(DENY_ALL), record.text, record.version
        log.info("policy version %s loaded from the database", record.version)
        return policy, record.text, record.version

    async def on_policy_set(self) -> None:
        """A `policy.set` change: install the newest stored version (database mode only)."""
        if self.mode != "database":
            return
        record = await self.store.get_policy()
        if record is None or record.version == self.host.version:
            return
        try:
            policy = Policy.parse(record.text)
        except PolicyError as exc:  # checked before it was stored; only a hand-edited row gets here
            log.error("stored policy version %s is invalid, keeping the previous one: %s", record.version, exc)
            return
        self.install(policy, record.text, record.version)
        log.info("policy version %s in force", record.version)

    def reload_file(self, *, force: bool = False) -> bool:
        """Re-read the policy file; install it when its content changed and it is valid. Returns True
        when a new policy was installed. An invalid file is logged and the previous policy stays."""
        path = self.path
        try:
            text, digest = read_policy_file(path)  # type: ignore[arg-type]
        except (OSError, UnicodeDecodeError) as exc:
            log.error("policy file %s cannot be read, keeping the previous policy: %s", path, exc)
            return False
        if digest == self.file_digest:
            if force:
                log.info("policy file %s unchanged", path)
            return False
        try:
            policy = parse_and_check(text, self.tailnet.users.values(), self.tailnet.nodes.values())
        except PolicyError as exc:
            self.file_digest = digest  # do not log the same broken content every second
            log.error("policy file %s is invalid, keeping the previous policy: %s", path, exc)
            return False
        self.file_digest = digest
        self.install(policy, text, None)
        log.info("policy reloaded from %s", path)
        return True


async def watch_policy_file(source: PolicySource, *, interval: float = FILE_POLL_INTERVAL,
                            task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Reload the policy file when it changes (polled) and on SIGHUP."""
    path = source.path

    def stamp() -> tuple | None:
        try:
            st = os.stat(path)  # type: ignore[arg-type]
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    last = stamp()
    with contextlib.ExitStack() as stack:
        try:
            signals = stack.enter_context(trio.open_signal_receiver(signal.SIGHUP))
        except (RuntimeError, ValueError):  # not the main thread: polling only
            signals = None
        task_status.started()
        while True:
            got_signal = False
            if signals is not None:
                with trio.move_on_after(interval):
                    async for _ in signals:
                        got_signal = True
                        break
            else:
                await trio.sleep(interval)
            now = stamp()
            if got_signal:
                log.info("SIGHUP: reloading the policy file %s", path)
                source.reload_file(force=True)
            elif now != last:
                source.reload_file()
            last = now
