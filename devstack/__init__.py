"""Local development stack: Entra ID and Key Vault servers the real Azure SDKs talk to,
and a Graph-like paged upstream API for sources.

Never used in production. Start everything with :class:`devstack.stack.DevStack`
(a context manager) or ``python -m devstack``. Modules, by concept:

- ``ca``: the local CA, server certificates, and client-side trust helpers;
- ``server``: an ASGI app on 127.0.0.1 over HTTPS in a background thread;
- ``traffic``: per-endpoint counters and fault injection;
- ``directory``, ``certificates``, ``signing``, ``claims``, ``client_auth``,
  ``aadsts``, ``entra``, ``entra_app``: the Entra ID side;
- ``keyvault``, ``keyvault_auth``, ``keyvault_wire``, ``keyvault_app``,
  ``events``: the Key Vault side and its Event Grid events;
- ``upstream``, ``upstream_users``, ``upstream_auth``, ``upstream_wire``,
  ``upstream_faults``, ``upstream_app``: the upstream API (``/v1.0/users``).
"""
