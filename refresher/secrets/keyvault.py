"""The secret store over Azure Key Vault (azure-keyvault-secrets' ``SecretClient``).

:class:`KeyVaultSecretStore` holds the secrets named in the settings:

- **Loaded on first use, one fetch per secret.** Concurrent first readers of
  a secret share one check; ``get`` never touches the network again while
  the version in use is valid.
- **Cheap change detection.** A check lists the versions' properties (no
  values) and picks the newest version that is enabled and inside its
  ``nbf``/``exp`` window (:mod:`refresher.secrets.policy`); a value is fetched
  only when that version is not one already held. A secret with more versions
  than Key Vault lists in one request is checked by reading its latest version
  alone while that is the one in use (one request, not one per 25 versions),
  and listed in full when it is not, and every few checks anyway
  (:func:`~refresher.secrets.policy.cheap_check_will_do`).
- **Re-checked in the background** every ``poll_interval`` (jittered), no
  later than a staged version's ``nbf`` or the current version's expiry, and
  at once on a Key Vault event (:meth:`handle_event`) or :meth:`check`.
- **Current and previous version** are kept, so callers can fall back to the
  previous value while an upstream still expects it during rotation.
- **Outages keep the last known good values**: a check that could not reach
  Key Vault (or was refused) changes nothing and shows in :meth:`status`;
  only Key Vault's own answer that the secret is gone, disabled or expired
  withdraws a value.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.pipeline.policies import RetryPolicy
from azure.keyvault.secrets import SecretClient, SecretProperties

from refresher.background import DueLoop
from refresher.errors import (
    CacheRefresherError,
    ConfigurationError,
    SecretNotFoundError,
    SecretUnavailableError,
    VaultUnavailableError,
)
from refresher.secrets.base import SecretStatus, SecretValue, format_time
from refresher.secrets.events import parse_secret_event, vault_name_of
from refresher.secrets.policy import (
    POLL_INTERVAL_SECONDS,
    CheckPolicy,
    VersionInfo,
    cheap_check_will_do,
    choose_version,
    why_unusable,
)
from refresher.secrets.state import SecretState
from refresher.secrets.vault_errors import vault_errors
from refresher.settings import Settings

logger = logging.getLogger(__name__)

IDLE_WAKEUP_SECONDS = 30.0
"""The poll thread looks at the schedule at least this often (wall-clock jumps)."""

MIN_WAIT_SECONDS = 0.01
"""...and sleeps at least this long between rounds."""


MAX_RETRY_AFTER_SECONDS = 10.0
"""The longest ``Retry-After`` azure-core waits out between two tries of one request: it
waits out any, and a gateway answering ``Retry-After: 3600`` held a secret check (or a
first load waiting for its secret) for an hour per try. Longer waits are the store's
(:class:`~refresher.secrets.policy.CheckPolicy` honours them up to the check interval)."""


class _BoundedRetryAfter(RetryPolicy[Any, Any]):
    """azure-core's retries, waiting at most ``max_retry_after`` where ``Retry-After``
    asks for more."""

    def __init__(self, *, max_retry_after: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._max_retry_after = max_retry_after

    def get_retry_after(self, response: Any) -> float | None:
        asked = super().get_retry_after(response)
        return None if asked is None else min(asked, self._max_retry_after)


def build_secret_client(
    settings: Settings,
    credential: TokenCredential,
    *,
    verify_challenge_resource: bool = True,
    max_retry_after: float = MAX_RETRY_AFTER_SECONDS,
    **options: Any,
) -> SecretClient:
    """The production ``SecretClient`` for ``settings.vault_url`` as the app identity.

    ``verify_challenge_resource=False`` is for devstack only (a vault that is
    not on ``*.vault.azure.net``); ``options`` go to azure-core (retries, transport);
    no wait between two tries is longer than ``max_retry_after``.
    """
    if settings.vault_url is None:
        raise ConfigurationError(
            "CACHE_REFRESHER_VAULT_URL is not set: set it to the Key Vault's URL, "
            "e.g. https://my-vault.vault.azure.net/"
        )
    if settings.ca_bundle is not None:
        options["connection_verify"] = str(settings.ca_bundle)
    options.setdefault(
        "retry_policy", _BoundedRetryAfter(max_retry_after=max_retry_after, **options)
    )
    return SecretClient(
        settings.vault_url,
        credential,
        verify_challenge_resource=verify_challenge_resource,
        **options,
    )


def version_info(properties: SecretProperties, position: int = 0) -> VersionInfo:
    """The listed properties of one version, as the policy reads them."""

    def seconds(moment: Any) -> float | None:
        return moment.timestamp() if moment is not None else None

    return VersionInfo(
        version=properties.version or "",
        enabled=properties.enabled is not False,
        created_on=seconds(properties.created_on) or 0.0,
        not_before=seconds(properties.not_before),
        expires_on=seconds(properties.expires_on),
        position=position,
    )


class KeyVaultSecretStore:
    """The configured secrets of one Key Vault, versioned and re-checked (a ``SecretStore``).

    ``vault_name`` is the name Key Vault events carry (default: the first label
    of the vault URL's host). ``start()`` (or ``with``) starts the background
    poll, which also loads every secret; without it, ``get`` loads on first
    use and :meth:`check_due` runs due checks.
    """

    def __init__(
        self,
        client: SecretClient,
        names: Iterable[str],
        *,
        poll_interval: float = POLL_INTERVAL_SECONDS,
        vault_name: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self.vault = client.vault_url
        self.vault_name = vault_name or vault_name_of(client.vault_url)
        self._entries = {name.lower(): SecretState(name) for name in names}
        self._policy = CheckPolicy(interval=poll_interval)
        self._clock = clock
        self._rng = rng or random.Random()
        self.version_changes: Counter[str] = Counter()
        """Switches to another version in use, per secret name (a first load is not one)."""
        self._cond = threading.Condition()
        self._loop = DueLoop(
            self.check_due, name="secret-poll", clock=clock, idle=IDLE_WAKEUP_SECONDS,
            min_wait=MIN_WAIT_SECONDS,
        )  # fmt: skip

    # -- SecretStore ---------------------------------------------------------------------

    def get(self, name: str) -> SecretValue:
        """The version of ``name`` in use; loads it on first use (shared by concurrent callers).

        Raises a :class:`~refresher.errors.SecretError` if no valid value is held
        and none could be loaded, or the app identity's
        :class:`~refresher.errors.IdentityError` if it could not get a token.
        """
        entry = self._entry(name)
        now = self._clock()
        with self._cond:
            value, check = entry.current, entry.needs_check(now)
        if value is not None and value.usable_at(now):
            return value
        if check:
            self._refresh(entry, fresh=False)
        return self._value_or_error(entry)

    def previous(self, name: str) -> SecretValue | None:
        """The version used before the current one, while it is still valid."""
        entry = self._entry(name)
        with self._cond:
            previous = entry.previous
        return previous if previous is not None and previous.usable_at(self._clock()) else None

    def versions_in_use(self) -> dict[str, str]:
        with self._cond:
            return {e.name: e.current.version for e in self._entries.values() if e.current}

    def check(self, name: str | None = None) -> list[str]:
        """Re-check ``name`` (or every secret) now, whatever the schedule says.

        Returns the names whose version in use changed (a first load counts).
        Failures do not raise: they are logged and shown by :meth:`status`.
        """
        entries = [self._entry(name)] if name is not None else list(self._entries.values())
        changed = []
        for entry in entries:
            before = self._version(entry)
            self._refresh(entry, fresh=True)
            if self._version(entry) != before:
                changed.append(entry.name)
        return changed

    def status(self) -> list[SecretStatus]:
        with self._cond:
            return [entry.status() for entry in self._entries.values()]

    # -- events and schedule -------------------------------------------------------------

    def handle_event(self, event: Mapping[str, Any]) -> bool:
        """Re-check the secret a Key Vault event (Event Grid schema) is about, at once.

        Events of other vaults, of secrets not configured here, and anything
        that is not a secret event are ignored (``False``). With the poll
        running, the check runs there and this returns at once.
        """
        parsed = parse_secret_event(event)
        if parsed is None or parsed.vault_name.lower() != self.vault_name.lower():
            return False
        entry = self._entries.get(parsed.secret_name.lower())
        if entry is None:
            return False
        logger.info("Key Vault event %s for secret %r", parsed.event_type, entry.name)
        if not self._loop.running:
            self._refresh(entry, fresh=True)
            return True
        with self._cond:
            entry.wanted += 1  # an in-flight check may predate the event: run one more
            entry.next_check = float("-inf")
        self._loop.wake()
        return True

    def check_due(self) -> float | None:
        """Run every check whose time has come; the time of the next one.

        A check in flight elsewhere (a reader's) is not waited for: its end wakes the poll
        (:meth:`_fly`), and counting its past due time here would make the poll spin."""
        now = self._clock()
        with self._cond:
            due = [e for e in self._entries.values() if e.next_check <= now and not e.flying]
        for entry in due:
            self._refresh(entry, fresh=False)
        with self._cond:
            waiting = (e.next_check for e in self._entries.values() if not e.flying)
            return min(waiting, default=None)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the background poll (which loads every secret first)."""
        self._loop.start()

    def close(self) -> None:
        """Stop the background poll. The ``SecretClient`` belongs to the caller."""
        self._loop.close()

    def __enter__(self) -> KeyVaultSecretStore:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- single flight -------------------------------------------------------------------

    def _refresh(self, entry: SecretState, *, fresh: bool) -> None:
        """Check ``entry``, or wait for the check in flight; with ``fresh``, for one
        that started after this call."""
        with self._cond:
            if fresh or not entry.flying:
                entry.wanted += 1
            target = entry.wanted
            if entry.flying:
                self._cond.wait_for(lambda: entry.done >= target)
                return
            entry.flying = True
        self._fly(entry)

    def _fly(self, entry: SecretState) -> None:
        """Run checks until every one asked for is answered (this thread holds the flight)."""
        try:
            while True:
                with self._cond:
                    if entry.done >= entry.wanted:
                        entry.flying = False
                        self._cond.notify_all()
                        self._loop.wake()  # its next check is now on the schedule
                        return
                    generation = entry.wanted
                self._check_once(entry)
                with self._cond:
                    entry.done = generation
                    self._cond.notify_all()
        except BaseException:
            with self._cond:
                entry.flying, entry.done = False, entry.wanted
                self._cond.notify_all()
                self._loop.wake()
            raise

    # -- one check -----------------------------------------------------------------------

    def _check_once(self, entry: SecretState) -> None:
        now = self._clock()
        if self._checked_cheaply(entry, now):
            return
        try:
            with vault_errors(entry.name, self.vault):
                listed = self._client.list_properties_of_secret_versions(entry.name)
                versions = [version_info(p, i) for i, p in enumerate(listed)]
        except CacheRefresherError as exc:
            withdrawn = isinstance(exc, SecretNotFoundError)
            self._failed(entry, exc, now, withdrawn=withdrawn, versions=[])
            return
        chosen = choose_version(versions, now)
        if chosen is None:
            error = SecretUnavailableError(entry.name, self.vault, why_unusable(versions, now))
            self._failed(entry, error, now, withdrawn=True, versions=versions)
            return
        try:
            value = self._value_of(entry, chosen, now)
        except CacheRefresherError as exc:
            self._failed(entry, exc, now, withdrawn=False, versions=versions)
            return
        self._succeeded(entry, value, versions, chosen, now)

    def _checked_cheaply(self, entry: SecretState, now: float) -> bool:
        """Check a secret of many versions by its latest version alone, if that will do:
        whether this was the check (it found the version in use still the latest and
        usable, or failed the way listing would). ``False``: list after all."""
        with self._cond:
            current = entry.current
            cheap = current is not None and cheap_check_will_do(entry.listed, entry.cheap_checks)
        if not cheap or current is None:
            return False
        try:
            with vault_errors(entry.name, self.vault):
                latest = version_info(self._client.get_secret(entry.name).properties)
        except SecretUnavailableError:
            return False  # the latest is disabled: an older one may take over
        except CacheRefresherError as exc:
            withdrawn = isinstance(exc, SecretNotFoundError)
            self._failed(entry, exc, now, withdrawn=withdrawn, versions=[])
            return True
        if latest.version != current.version or not latest.usable_at(now):
            return False
        next_check = self._policy.next_check(now, [latest], latest, self._rng)
        with self._cond:
            entry.confirmed(latest, now, next_check)
        return True

    def _value_of(self, entry: SecretState, chosen: VersionInfo, now: float) -> SecretValue:
        """``chosen``'s value: one already held (with fresh attributes), else fetched."""
        held = entry.held(chosen.version)
        if held is not None:
            value, fetched_at = held.value, held.fetched_at
        else:
            with vault_errors(entry.name, self.vault):
                secret = self._client.get_secret(entry.name, chosen.version)
            value, fetched_at = secret.value or "", now
        return SecretValue(
            name=entry.name,
            version=chosen.version,
            value=value,
            not_before=chosen.not_before,
            expires_on=chosen.expires_on,
            fetched_at=fetched_at,
        )

    def _succeeded(
        self,
        entry: SecretState,
        value: SecretValue,
        versions: list[VersionInfo],
        chosen: VersionInfo,
        now: float,
    ) -> None:
        next_check = self._policy.next_check(now, versions, chosen, self._rng)
        with self._cond:
            old = entry.current.version if entry.current else "none"
            switched = entry.succeeded(value, versions, now, next_check)
            if switched and old != "none":
                self.version_changes[entry.name] += 1
        if switched:
            logger.info(
                "secret %r: version %s is now in use (was %s)", entry.name, value.version, old
            )

    def _failed(
        self,
        entry: SecretState,
        error: CacheRefresherError,
        now: float,
        *,
        withdrawn: bool,
        versions: list[VersionInfo],
    ) -> None:
        """Record a failed check. Only when Key Vault said the secret is gone or has no
        usable version (``withdrawn``) are the held values dropped; then the next check
        is a normal one (or at a staged version's ``nbf``), else a retry with backoff."""
        with self._cond:
            if withdrawn:
                next_check = self._policy.next_check(now, versions, None, self._rng)
            else:
                retry_after = (
                    error.retry_after if isinstance(error, VaultUnavailableError) else None
                )
                next_check = self._policy.retry_at(
                    now, entry.failures + 1, self._rng, retry_after=retry_after
                )
            entry.failed(error, now, next_check, withdrawn=withdrawn)
            kept = entry.current
        logger.warning(
            "checking secret %r failed: %s; %s; next check in %.1f s",
            entry.name,
            error,
            f"version {kept.version} stays in use" if kept else "no value is held",
            next_check - now,
        )

    # -- reading state -------------------------------------------------------------------

    def _entry(self, name: str) -> SecretState:
        entry = self._entries.get(name.lower())
        if entry is None:
            configured = ", ".join(e.name for e in self._entries.values()) or "none"
            raise ConfigurationError(
                f"secret {name!r} is not one of the configured secrets ({configured}): "
                "add it to CACHE_REFRESHER_SECRETS"
            )
        return entry

    def _version(self, entry: SecretState) -> str | None:
        with self._cond:
            return entry.current.version if entry.current else None

    def _value_or_error(self, entry: SecretState) -> SecretValue:
        now = self._clock()
        with self._cond:
            value, error = entry.current, entry.last_error
        if value is not None and value.usable_at(now):
            return value
        if value is not None:
            raise SecretUnavailableError(
                entry.name,
                self.vault,
                f"version {value.version} expired at {format_time(value.expires_on)} "
                "and no newer version could be loaded",
            )
        if error is not None:
            raise error.with_traceback(None)
        raise SecretUnavailableError(entry.name, self.vault, "could not be loaded")
