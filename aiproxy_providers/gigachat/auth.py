"""GigaChat's credentials: the model's options, the OAuth "authorization key", and the TLS
setting its calls use (Sber's certificates chain to the Russian Trusted Root CA).

OAuth: https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/gigachat-api and
https://developers.sber.ru/docs/en/gigachat/api/authorization
"""

from __future__ import annotations

import base64
import ssl
from typing import Any

import attrs
import structlog

from aiproxy.provider import ConfigError, ModelConfig

__all__ = ["DEFAULT_OAUTH_URL", "GigaChatOptions", "authorization_key", "ssl_setting"]

DEFAULT_OAUTH_URL = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
# PERS: individuals; B2B: businesses paying in advance; CORP: businesses paying afterwards.
SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")

_log = structlog.get_logger(__name__)


def _check_scope(inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in SCOPES:
        raise ValueError(f"scope: must be one of {', '.join(SCOPES)}, got {value!r}")


def _to_bool(value: Any) -> bool:
    # Typed Any because the config converter hands booleans to its integer hook; a "${VAR}"
    # substitution gives a string, so "true"/"false" are accepted too. Anything else is an error:
    # a typo must never switch TLS verification off.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"insecure_skip_verify: expected true or false, got {value!r}")


@attrs.frozen
class GigaChatOptions:
    """``options:`` of a GigaChat model."""

    # Alternative to ``token: "client_id:client_secret"``.
    client_id: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    # The old proxy always sent CORP: the default keeps its configs working unchanged.
    scope: str = attrs.field(default="GIGACHAT_API_CORP", validator=_check_scope)
    oauth_url: str = DEFAULT_OAUTH_URL
    # A PEM file of extra CAs (Sber's Russian Trusted Root CA) trusted for this provider only.
    ca_bundle: str | None = None
    # Development only: no certificate check at all. Never the default.
    insecure_skip_verify: Any = attrs.field(default=False, converter=_to_bool)


def authorization_key(model: ModelConfig, opts: GigaChatOptions) -> str:
    """The base64 "authorization key" Sber's OAuth endpoint takes as Basic credentials."""
    name = model.name
    if opts.client_id or opts.client_secret:
        if not (opts.client_id and opts.client_secret):
            raise ConfigError([f"{name}: options: client_id and client_secret go together"])
        if model.token:
            raise ConfigError([f"{name}: give either token: or options client_id/client_secret, "
                               "not both"])
        pair = f"{opts.client_id}:{opts.client_secret}"
    elif model.token:
        token = model.token.strip()
        if ":" not in token:
            # The personal area hands out the key ready-made (base64 of id:secret); base64 has
            # no colon, so the two forms cannot be confused.
            try:
                base64.b64decode(token, validate=True)
            except ValueError:
                raise ConfigError([f"{name}: token: expected \"client_id:client_secret\" or the "
                                   "base64 authorization key from Sber's personal area"]) from None
            return token
        pair = token
    else:
        raise ConfigError([f"{name}: token: required (\"client_id:client_secret\" or the "
                           "authorization key), or options client_id and client_secret"])
    return base64.b64encode(pair.encode()).decode("ascii")


def ssl_setting(name: str, opts: GigaChatOptions) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` gets on this provider's calls (and on no one else's)."""
    if opts.ca_bundle and opts.insecure_skip_verify:
        raise ConfigError([f"{name}: options: ca_bundle and insecure_skip_verify exclude each "
                           "other"])
    if opts.insecure_skip_verify:
        _log.warning("gigachat_tls_verification_disabled", model=name)
        return False
    if not opts.ca_bundle:
        return True
    # The system's CAs stay trusted (an oauth_url behind a corporate proxy may need them);
    # the bundle is added to them.
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=opts.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{name}: options.ca_bundle: cannot load {opts.ca_bundle}: "
                           f"{getattr(exc, 'strerror', None) or exc}"]) from None
    return ctx

