"""TLS of the gRPC transport, from the ``CRM_GRPC_TLS_*`` settings.

* **Server**: ``CRM_GRPC_TLS_CERT_FILE`` and ``CRM_GRPC_TLS_KEY_FILE`` turn
  TLS on; ``CRM_GRPC_TLS_CLIENT_CA_FILE`` also requires every caller to
  present a certificate signed by that CA (mutual TLS). Unset: plaintext.
* **Clients** (a service calling another, the ``crm`` tools): TLS as soon as
  this process has any TLS setting of its own, trusting
  ``CRM_GRPC_TLS_CA_FILE`` (else gRPC's default roots) and presenting
  ``CRM_GRPC_TLS_CLIENT_CERT_FILE``/``_KEY_FILE``, else the server's own pair,
  to servers that ask for a certificate. ``CRM_GRPC_TLS_SERVER_NAME``
  replaces the target's host in the certificate name check.

Files are read once, when a server or channel is made: a renewed certificate
takes effect at the next start. :func:`check` reads and checks every
configured file up front, so a missing, unreadable or mismatched one stops
start-up with a :class:`SettingsError` naming the variable and the path.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from crm_runtime.settings import Settings, SettingsError, env_name

_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class KeyPair:
    """A certificate chain and its private key, as PEM bytes."""

    cert: bytes
    key: bytes


def server_enabled(settings: Settings) -> bool:
    return settings.grpc_tls_cert_file is not None and settings.grpc_tls_key_file is not None


def mutual(settings: Settings) -> bool:
    """The server requires client certificates."""
    return server_enabled(settings) and settings.grpc_tls_client_ca_file is not None


def client_enabled(settings: Settings) -> bool:
    """Channels this process opens use TLS: it has a TLS setting of its own."""
    return any(path is not None for path in (
        settings.grpc_tls_cert_file, settings.grpc_tls_ca_file,
        settings.grpc_tls_client_cert_file))


def mode(settings: Settings) -> str:
    """What the server speaks: ``plaintext``, ``TLS`` or ``mutual TLS``."""
    if not server_enabled(settings):
        return "plaintext"
    return "mutual TLS" if mutual(settings) else "TLS"


def summary(settings: Settings) -> str:
    """One line for a banner or a log: the server's transport, and how to
    turn TLS on when it is off."""
    if server_enabled(settings):
        required = ", client certificates required" if mutual(settings) else ""
        return f"{mode(settings)}{required}"
    where = "loopback" if is_loopback(settings.grpc_host) else settings.grpc_host
    return (f"plaintext on {where}; set CRM_GRPC_TLS_CERT_FILE and CRM_GRPC_TLS_KEY_FILE "
            "for TLS")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The gRPC server's credentials; None for plaintext."""
    pair = server_pair(settings)
    if pair is None:
        return None
    client_ca = _ca(settings, "grpc_tls_client_ca_file")
    return grpc.ssl_server_credentials([(pair.key, pair.cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """Credentials of a channel to another service; None for plaintext."""
    if not client_enabled(settings):
        return None
    pair = client_pair(settings)
    return grpc.ssl_channel_credentials(
        root_certificates=_ca(settings, "grpc_tls_ca_file"),
        private_key=pair.key if pair else None, certificate_chain=pair.cert if pair else None)


def channel_options(settings: Settings) -> list[tuple[str, str]]:
    """Channel arguments of the TLS settings (the server name override)."""
    if client_enabled(settings) and settings.grpc_tls_server_name:
        return [("grpc.ssl_target_name_override", settings.grpc_tls_server_name)]
    return []


def server_pair(settings: Settings) -> KeyPair | None:
    if not server_enabled(settings):
        return None
    return _pair(settings, "grpc_tls_cert_file", "grpc_tls_key_file")


def client_pair(settings: Settings) -> KeyPair | None:
    """What this process presents when a server asks for a certificate: its
    client pair, else its server pair, else nothing."""
    if settings.grpc_tls_client_cert_file is not None:
        return _pair(settings, "grpc_tls_client_cert_file", "grpc_tls_client_key_file")
    return server_pair(settings)


def check(settings: Settings) -> None:
    """Read and check every configured TLS file (SettingsError naming the
    first bad one), as a process does before it starts serving or calling."""
    server_pair(settings)
    _ca(settings, "grpc_tls_client_ca_file")
    if client_enabled(settings):
        client_pair(settings)
        _ca(settings, "grpc_tls_ca_file")


def _pair(settings: Settings, cert_field: str, key_field: str) -> KeyPair:
    cert_path, key_path = getattr(settings, cert_field), getattr(settings, key_field)
    if cert_path is None or key_path is None:
        raise SettingsError(f"{env_name(cert_field)} and {env_name(key_field)} go together: "
                            "set both, or neither")
    cert = _read(cert_field, cert_path)
    key = _read(key_field, key_path)
    if _CERTIFICATE not in cert.decode("ascii", "replace"):
        raise _bad(cert_field, cert_path, "no PEM certificate in it "
                                          f"(expected a '{_CERTIFICATE}' block)")
    _check_key(key_field, key_path, key)
    _check_match(cert_field, cert_path, key_field, key_path)
    return KeyPair(cert, key)


def _check_key(field: str, path: Path, key: bytes) -> None:
    text = key.decode("ascii", "replace")
    if "ENCRYPTED" in text:
        raise _bad(field, path, "the key is encrypted; give an unencrypted PEM key "
                                "(protect the file instead)")
    if "PRIVATE KEY-----" not in text:
        raise _bad(field, path, "no PEM private key in it "
                                "(expected a '-----BEGIN ... PRIVATE KEY-----' block)")


def _check_match(cert_field: str, cert_path: Path, key_field: str, key_path: Path) -> None:
    """The key belongs to the certificate (gRPC would only say it cannot bind)."""

    def no_password() -> str:
        raise ValueError("encrypted key")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_path, key_path, password=no_password)
    except (ssl.SSLError, ValueError) as exc:
        problem = ("the key does not belong to the certificate"
                   if "KEY_VALUES_MISMATCH" in str(exc) else f"unusable ({exc})")
        raise SettingsError(f"{env_name(cert_field)}={cert_path} and "
                            f"{env_name(key_field)}={key_path}: {problem}") from None


def _ca(settings: Settings, field: str) -> bytes | None:
    path: Path | None = getattr(settings, field)
    if path is None:
        return None
    data = _read(field, path)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise _bad(field, path, f"not PEM CA certificates ({exc})") from None
    return data


def _read(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _bad(field, path, f"cannot read it ({exc.strerror or exc})") from None


def _bad(field: str, path: Path, problem: str) -> SettingsError:
    return SettingsError(f"{env_name(field)}={path}: {problem}")
