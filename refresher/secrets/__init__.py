"""The secrets the service reads from Azure Key Vault, versioned and re-checked.

Callers depend on the :class:`~refresher.secrets.base.SecretStore` protocol;
:class:`~refresher.secrets.keyvault.KeyVaultSecretStore` implements it over
azure-keyvault-secrets, with the version choice and schedule in
:mod:`refresher.secrets.policy`, Key Vault events parsed by
:mod:`refresher.secrets.events` and Key Vault's errors translated once in
:mod:`refresher.secrets.vault_errors`. No value ever reaches a ``repr``, a
log record, a status or an error message.
"""

from __future__ import annotations

from refresher.secrets.base import SecretStatus, SecretStore, SecretValue
from refresher.secrets.keyvault import KeyVaultSecretStore, build_secret_client

__all__ = [
    "KeyVaultSecretStore",
    "SecretStatus",
    "SecretStore",
    "SecretValue",
    "build_secret_client",
]
