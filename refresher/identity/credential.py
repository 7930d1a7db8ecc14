"""The app identity: one azure-core ``TokenCredential`` for everything the service calls as itself.

:class:`AppIdentity` wraps one or more :class:`~refresher.identity.base.TokenRequest`
credentials (tried in order) and owns the token cache:

- **Cached per scope, renewed off the request path.** A background thread
  renews each token at the issuer's ``refresh_on`` hint or at about half its
  lifetime (with jitter). ``get_token`` only touches the network when no usable
  token exists yet (the first call for a scope) or renewal kept failing.
- **One request in flight per scope.** Callers that arrive while a request for
  their scope is in flight wait for it and share its result, token or error,
  so a thousand concurrent first calls make one request.
- **Keep the old token if renewal fails.** A failed renewal is logged and
  retried with bounded, jittered backoff (honouring ``Retry-After``); callers
  keep getting the current token while it is usable. With none, they get an
  error naming the tenant, client and scope, never a secret.
- **Credential rollover.** When Entra ID rejects the credential in use
  (AADSTS7000215 wrong secret, 7000222 expired secret, 700027 unregistered
  certificate, 700024 assertion out of time range, ...), the next configured
  credential is tried; if all are rejected, the set is re-loaded (certificate
  files re-read) at most once per ``reload_interval`` and tried once more, as
  Microsoft.Identity.Web does.
- **A refused token can be dropped.** A resource that rejects a token we
  thought valid (Azure SQL's "login failed") calls :meth:`AppIdentity.invalidate`,
  and the next caller gets a new one.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions

from refresher.background import DueLoop
from refresher.errors import (
    AuthenticationFailedError,
    CacheRefresherError,
    CredentialRejectedError,
    CredentialUnavailableError,
    IdentityError,
    IssuerUnavailableError,
)
from refresher.identity.base import (
    IssuedToken,
    TokenRequest,
    renewal_hint,
    renewal_time,
    retry_time,
)

logger = logging.getLogger(__name__)

RELOAD_INTERVAL_SECONDS = 60.0
"""Re-load the credential set at most this often after rejections."""

WAIT_TIMEOUT_SECONDS = 60.0
"""How long a caller waits for another caller's in-flight request."""

IDLE_WAKEUP_SECONDS = 30.0
"""How often the renewal thread looks for work when nothing is due."""


@dataclass(frozen=True, slots=True)
class TokenStatus:
    """What operators may see of a cached token: times and source, never the token."""

    scope: str
    expires_on: float | None
    renew_at: float | None
    credential: str | None
    requests: int
    last_error: str | None


class _Slot:
    """The state of one scope (guarded by the identity's condition)."""

    def __init__(self) -> None:
        self.token: IssuedToken | None = None
        self.credential: str | None = None
        self.renew_at = 0.0
        self.failures = 0
        self.fetching = False
        self.attempts = 0
        self.last_error: IdentityError | None = None


class AppIdentity:
    """The service's own identity towards Azure (an azure-core ``TokenCredential``)."""

    def __init__(
        self,
        credentials: Sequence[TokenRequest],
        *,
        tenant_id: str,
        client_id: str,
        reload: Callable[[], Sequence[TokenRequest]] | None = None,
        reload_interval: float = RELOAD_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not credentials:
            raise CredentialUnavailableError(
                f"no app credential is configured for client {client_id!r} in tenant "
                f"{tenant_id!r}: set AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH, "
                "AZURE_FEDERATED_TOKEN_FILE, or use a managed identity"
            )
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._credentials = list(credentials)
        self._active = 0
        self._reload = reload
        self._reload_interval = reload_interval
        self._last_reload = float("-inf")
        self._clock = clock
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._slots: dict[str, _Slot] = {}
        self.requests: Counter[str] = Counter()
        """Token requests sent, per scope (for metrics and tests)."""
        self._loop = DueLoop(self.renew_due, name="token-renewal", clock=clock,
                             idle=IDLE_WAKEUP_SECONDS)  # fmt: skip

    # -- azure-core TokenCredential / SupportsTokenInfo ---------------------------------

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        """A valid token for the one scope asked for (azure-core ``TokenCredential``)."""
        token = self._get(scopes, tenant_id, fresh=claims is not None)
        return AccessToken(token.token, int(token.expires_on))

    def get_token_info(
        self, *scopes: str, options: TokenRequestOptions | None = None
    ) -> AccessTokenInfo:
        """A valid token and its refresh hint (azure-core ``SupportsTokenInfo``)."""
        options = options or {}
        token = self._get(scopes, options.get("tenant_id"), fresh=bool(options.get("claims")))
        refresh_on = int(token.refresh_on) if token.refresh_on else None
        return AccessTokenInfo(token.token, int(token.expires_on), refresh_on=refresh_on)

    def invalidate(self, scope: str, *, token: str | None = None) -> bool:
        """Forget the cached token for ``scope``: the next ``get_token`` asks Entra ID.

        For a resource that refused a token we still thought valid (Azure SQL's
        "login failed"). With ``token``, only that token is forgotten: if another
        caller already replaced it, the newer one stays, so many connections
        failing at once cause one new request. Whether a token was dropped.
        """
        with self._cond:
            slot = self._slots.get(scope)
            if slot is None or slot.token is None:
                return False
            if token is not None and slot.token.token != token:
                return False
            slot.token, slot.renew_at = None, 0.0
            return True

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start renewing tokens in the background."""
        self._loop.start()

    def close(self) -> None:
        """Stop the background renewal (tokens already handed out stay valid)."""
        self._loop.close()

    def __enter__(self) -> AppIdentity:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def status(self) -> list[TokenStatus]:
        """Every scope this identity holds a token for, without the tokens."""
        with self._cond:
            return [
                TokenStatus(
                    scope,
                    slot.token.expires_on if slot.token else None,
                    slot.renew_at if slot.token else None,
                    slot.credential,
                    self.requests[scope],
                    str(slot.last_error) if slot.last_error else None,
                )
                for scope, slot in sorted(self._slots.items())
            ]

    # -- renewal -------------------------------------------------------------------------

    def renew_due(self) -> float | None:
        """Renew every token whose renewal time has come; the next renewal time, if any."""
        now = self._clock()
        with self._cond:
            due = [
                scope
                for scope, slot in self._slots.items()
                if slot.token is not None and not slot.fetching and slot.renew_at <= now
            ]
        for scope in due:
            # A failure is logged by _fetch; callers keep the current token while usable.
            with contextlib.suppress(IdentityError):
                self._fetch(scope)
        with self._cond:
            times = [slot.renew_at for slot in self._slots.values() if slot.token is not None]
        return min(times, default=None)

    # -- the request path ----------------------------------------------------------------

    def _get(self, scopes: tuple[str, ...], tenant_id: str | None, *, fresh: bool) -> IssuedToken:
        scope = self._one_scope(scopes, tenant_id)
        with self._cond:
            slot = self._slots.setdefault(scope, _Slot())
            token = slot.token
            if token is not None and not fresh and token.usable_at(self._clock()):
                return token
        return self._fetch(scope, fresh=fresh)

    def _one_scope(self, scopes: tuple[str, ...], tenant_id: str | None) -> str:
        if len(scopes) != 1:
            raise ValueError(
                "ask for exactly one scope, such as 'https://vault.azure.net/.default' "
                f"(got {len(scopes)})"
            )
        if tenant_id and tenant_id != self.tenant_id:
            raise CredentialUnavailableError(
                f"a token for tenant {tenant_id!r} was asked for, but this app identity "
                f"belongs to tenant {self.tenant_id!r}: point the resource at that tenant"
            )
        return scopes[0]

    def _fetch(self, scope: str, *, fresh: bool = False) -> IssuedToken:
        """Get a token for ``scope`` from the network, or share the request in flight."""
        with self._cond:
            slot = self._slots.setdefault(scope, _Slot())
            shared = self._wait_for_flight(scope, slot)
            if shared is not None:
                return shared
            token, now = slot.token, self._clock()
            if token is not None and not fresh and token.usable_at(now) and slot.renew_at > now:
                return token  # renewed by someone else a moment ago
            usable = token is not None and token.usable_at(now)
            if not usable and slot.last_error is not None and now < slot.renew_at:
                # The last request failed and its backoff (or Retry-After) is not over:
                # its error again, without a request (each caller would make one).
                raise self._no_token(scope, _waiting(slot.last_error, slot.renew_at - now))
            slot.fetching = True
        try:
            issued, credential = self._request(scope)
        except IdentityError as exc:
            return self._failed(scope, slot, exc)
        except Exception as exc:  # a bug (ours or an SDK's): the flight must still end
            logger.error("token request for scope %r failed unexpectedly", scope, exc_info=exc)
            unexpected = AuthenticationFailedError(
                f"the token request failed unexpectedly ({type(exc).__name__}); see the service log"
            )
            return self._failed(scope, slot, unexpected)
        except BaseException:  # interrupted: waiters must not wait for it
            with self._cond:
                self._land(slot)
            raise
        now = self._clock()
        with self._cond:
            held = slot.token
            if held is not None and issued.token == held.token and now >= renewal_hint(held):
                # The credential's own cache handed back the token held (azure-identity
                # does until refresh_on, and after it while its refresh fails, which it
                # does not report): not renewed; try again later, backing off.
                slot.failures += 1
                slot.renew_at = retry_time(
                    now, slot.failures, retry_after=None, current=held, rng=self._rng
                )
                self._land(slot)
                return held
            renewed = held is None or issued.token != held.token
            slot.token, slot.credential = issued, credential
            slot.renew_at = renewal_time(issued, self._rng, now)
            slot.failures, slot.last_error = 0, None
            self._land(slot)
        if renewed:  # the renewal thread plans again (a renewal of its own needs no wake)
            self._loop.wake()
        return issued

    def _wait_for_flight(self, scope: str, slot: _Slot) -> IssuedToken | None:
        """Wait out a request in flight (lock held); its token, or raise its error.

        ``None`` means no request is in flight now: the caller makes one.
        """
        while slot.fetching:
            attempt = slot.attempts
            if not self._cond.wait_for(lambda: slot.attempts != attempt, WAIT_TIMEOUT_SECONDS):  # noqa: B023
                timeout = f"another token request did not end within {WAIT_TIMEOUT_SECONDS:.0f} s"
                raise self._no_token(scope, IssuerUnavailableError(timeout))
            if slot.token is not None and slot.token.usable_at(self._clock()):
                return slot.token
            if slot.last_error is not None:
                raise self._no_token(scope, slot.last_error)
        return None

    def _land(self, slot: _Slot) -> None:
        """End a request (lock held) and wake whoever waited for it."""
        slot.fetching = False
        slot.attempts += 1
        self._cond.notify_all()

    def _failed(self, scope: str, slot: _Slot, exc: IdentityError) -> IssuedToken:
        """Record a failed request; hand out the current token if still usable, else raise."""
        now = self._clock()
        with self._cond:
            slot.failures += 1
            slot.last_error = exc
            retry_after = exc.retry_after if isinstance(exc, IssuerUnavailableError) else None
            slot.renew_at = retry_time(
                now, slot.failures, retry_after=retry_after, current=slot.token, rng=self._rng
            )
            self._land(slot)
            current = slot.token if slot.token and slot.token.usable_at(now) else None
        logger.warning(
            "token request for scope %r failed (%s: %s); %s; next try in %.1f s",
            scope,
            type(exc).__name__,
            exc,
            "the current token stays in use" if current else "no valid token is held",
            slot.renew_at - now,
        )
        if current is None:
            raise self._no_token(scope, exc) from exc
        return current

    def _no_token(self, scope: str, cause: IdentityError) -> IdentityError:
        message = (
            f"no valid token for scope {scope!r} as client {self.client_id!r} "
            f"in tenant {self.tenant_id!r}: {cause}"
        )
        if isinstance(cause, IssuerUnavailableError):
            return IssuerUnavailableError(message, code=cause.code, retry_after=cause.retry_after)
        if isinstance(cause, AuthenticationFailedError):
            return type(cause)(message, code=cause.code)
        return type(cause)(message)

    def _request(self, scope: str) -> tuple[IssuedToken, str]:
        try:
            return self._try_each(scope)
        except CredentialRejectedError:
            if self._reload is None or self._clock() - self._last_reload < self._reload_interval:
                raise
        self._last_reload = self._clock()
        logger.warning("every app credential was rejected; re-loading the credential set")
        try:
            reloaded = list(self._reload())
        except CacheRefresherError as exc:  # e.g. a certificate file caught mid-rotation
            raise CredentialRejectedError(
                f"every app credential was rejected, and re-loading them failed: {exc} "
                f"(tried again in {self._reload_interval:g} s at the earliest)"
            ) from exc
        self._credentials, self._active = reloaded, 0
        return self._try_each(scope)

    def _try_each(self, scope: str) -> tuple[IssuedToken, str]:
        """Try the credential in use, then the others in order, each once."""
        count = len(self._credentials)
        order = [(self._active + i) % count for i in range(count)]
        rejected: CredentialRejectedError | None = None
        for index in order:
            credential = self._credentials[index]
            self.requests[scope] += 1
            try:
                token = credential.request(scope)
            except CredentialRejectedError as exc:
                logger.warning("Entra ID rejected %s: %s", credential.description, exc)
                rejected = rejected or exc
                continue
            if index != self._active:
                logger.warning("now using %s", credential.description)
                self._active = index
            return token, credential.description
        assert rejected is not None
        raise CredentialRejectedError(
            f"every configured credential was rejected ({count}); first: {rejected}",
            code=rejected.code,
        )


def _waiting(error: IdentityError, seconds: float) -> IdentityError:
    """``error`` as told again while its retry waits ``seconds`` more: an unavailable
    issuer's says how long (a caller's 503 passes it on as ``Retry-After``)."""
    if isinstance(error, IssuerUnavailableError):
        return IssuerUnavailableError(str(error), code=error.code, retry_after=seconds)
    return error
