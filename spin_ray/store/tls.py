"""TLS to the fit store's Redis: the options a rediss:// URL carries, and one line when a handshake fails.

A `rediss://` or `rediss+cluster://` URL takes redis-py's TLS options in its query string, e.g.
`rediss+cluster://:PASSWORD@10.0.0.5:6380,10.0.0.6:6380?ssl_ca_certs=/etc/spin-ray/ca.pem`: the CA that
signed the servers' certificates (a private CA, as self-managed clusters use; a public one needs nothing),
and for mutual TLS the client's certificate and key. A failed certificate check never heals by waiting,
so it ends the connection attempt at once with the option that fixes it.
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import parse_qsl

from spin_ray.errors import FitStoreError
from spin_ray.redact import redact_url, scrub

FILE_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
CERT_REQS = ("none", "optional", "required")
TLS_OPTIONS = (*FILE_OPTIONS, "ssl_cert_reqs", "ssl_check_hostname")
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def tls_options(url: str, only_tls: bool) -> dict[str, str | bool]:
    """The TLS options in `url`'s query string, checked; with `only_tls`, any other query option is an error."""
    query = url.split("?", 1)[1] if "?" in url else ""
    options: dict[str, str | bool] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in TLS_OPTIONS:
            if only_tls:
                raise FitStoreError(f"Redis URL {redact_url(url)!r} has the option {key!r}, which a Redis Cluster URL "
                                    f"does not take: give only {', '.join(TLS_OPTIONS)}")
            continue
        if key in FILE_OPTIONS and not os.path.isfile(value):
            raise FitStoreError(f"Redis URL {redact_url(url)!r}: {key}={value} is not a file: give the path of the "
                                f"PEM file")
        if key == "ssl_cert_reqs" and value not in CERT_REQS:
            raise FitStoreError(f"Redis URL {redact_url(url)!r}: ssl_cert_reqs={value} is not one of "
                                f"{', '.join(CERT_REQS)}")
        if key == "ssl_check_hostname":
            if value.lower() not in _TRUE + _FALSE:
                raise FitStoreError(f"Redis URL {redact_url(url)!r}: ssl_check_hostname={value} is not true or false")
            options[key] = value.lower() in _TRUE
            continue
        options[key] = value
    if options and not url.startswith("rediss"):
        raise FitStoreError(f"Redis URL {redact_url(url)!r} gives TLS options ({', '.join(options)}) to a plain "
                            f"connection: write rediss:// (or rediss+cluster://) for TLS")
    return options


def _ssl_cause(err: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ssl.SSLError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def tls_failure(err: BaseException, url: str) -> FitStoreError | None:
    """A one-line error for a TLS handshake that cannot succeed by retrying (bad certificate, not TLS); else None."""
    cause = _ssl_cause(err)
    if cause is None:
        return None
    reason = scrub(getattr(cause, "verify_message", None) or cause.reason or str(cause), url)
    if isinstance(cause, ssl.SSLCertVerificationError):
        return FitStoreError(
            f"Redis at {redact_url(url)} sent a TLS certificate that was not verified ({reason}): give the CA that "
            f"signed it as ?ssl_ca_certs=/path/ca.pem in the URL (ssl_check_hostname=false if it names another host)")
    return FitStoreError(f"the TLS handshake with Redis at {redact_url(url)} failed ({reason}): does that port speak "
                         f"TLS? (rediss:// needs Redis's tls-port; redis:// its plain port)")
