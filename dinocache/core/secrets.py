"""Credentials in options: what looks like one is never written to a file or printed.

fsspec storage options (`storage_options`) may carry an access key, a secret, a session token, a password
or a connection string. The resolved config is saved beside the outputs (a cache's precompute.yaml, which
anyone with read access to the bucket fetches), and a bad value is echoed in config errors: both go through
`scrub` / `mask` here. Credentials are meant to come from where fsspec and boto look by themselves (the
`AWS_*` variables, `~/.aws/credentials`, `AWS_PROFILE`, instance roles); an explicit one in
`storage_options` is used for the run and then forgotten.
"""

from __future__ import annotations

import re
from typing import Any

# config fields whose values may hold credentials: their text is never echoed in an error
SECRET_FIELDS = frozenset({"storage_options"})

# option names that hold a credential (s3fs key/secret/token, boto aws_*_key*, adlfs account_key,
# connection_string, sas_token, gcsfs token, password, ...); matched as words of the snake_case name
_CREDENTIAL = re.compile(
    r"(^|_)(key|secret|token|password|passwd|pwd|credentials?|sas|signature|connection_string|auth)(_|$)",
    re.IGNORECASE,
)
# names that match a word above but hold no credential
_NOT_CREDENTIAL = frozenset({"key_prefix"})

MASK = "***"


def is_credential(name: str) -> bool:
    """True for an option name that holds a credential (`key`, `secret`, `aws_secret_access_key`, ...)."""
    return name not in _NOT_CREDENTIAL and bool(_CREDENTIAL.search(str(name)))


def scrub(options: Any) -> Any:
    """`options` with every credential entry removed, at any depth (client_kwargs, config_kwargs...)."""
    if isinstance(options, dict):
        return {k: scrub(v) for k, v in options.items() if not is_credential(str(k))}
    if isinstance(options, list | tuple):
        return [scrub(v) for v in options]
    return options


def credential_values(options: Any) -> list[str]:
    """Every credential value (as text) in `options`, at any depth."""
    out: list[str] = []
    if isinstance(options, dict):
        for k, v in options.items():
            if is_credential(str(k)) and v not in (None, "", True, False):
                out.append(str(v))
            else:
                out.extend(credential_values(v))
    elif isinstance(options, list | tuple):
        for v in options:
            out.extend(credential_values(v))
    return out


def mask(text: str, options: Any) -> str:
    """`text` with every credential value of `options` replaced by ***."""
    for v in sorted(credential_values(options), key=len, reverse=True):
        if len(v) >= 3:  # a 1-2 character "secret" would mask unrelated text
            text = text.replace(v, MASK)
    return text
