"""The CRM_GRPC_TLS_* settings: which combinations load, and how a file that
cannot be used is named (crm_runtime.settings and crm_runtime.tls)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from crm_runtime import tls
from crm_runtime.settings import Settings, SettingsError, load_settings
from tests.support import certs


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("CRM_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[certs.Authority, certs.Pair]:
    folder = tmp_path_factory.mktemp("pki")
    ca = certs.authority(folder, "ca")
    return ca, ca.issue(folder, "server", hosts=("localhost",))


def load(monkeypatch: pytest.MonkeyPatch, **env: str | Path) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))
    return load_settings()


def error(monkeypatch: pytest.MonkeyPatch, **env: str | Path) -> str:
    with pytest.raises(SettingsError) as info:
        load(monkeypatch, **env)
    return str(info.value)


# --- which settings load ----------------------------------------------------------------------


def test_no_tls_setting_is_plaintext_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(monkeypatch)
    assert (tls.mode(s), tls.server_enabled(s), tls.client_enabled(s)) == \
        ("plaintext", False, False)
    assert tls.server_credentials(s) is None and tls.channel_credentials(s) is None
    assert tls.summary(s) == ("plaintext on loopback; set CRM_GRPC_TLS_CERT_FILE and "
                              "CRM_GRPC_TLS_KEY_FILE for TLS")
    tls.check(s)


def test_plaintext_off_loopback_names_the_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tls.summary(load(monkeypatch, CRM_GRPC_HOST="0.0.0.0")).startswith(
        "plaintext on 0.0.0.0;")


def test_empty_values_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load(monkeypatch, CRM_GRPC_TLS_CERT_FILE="", CRM_GRPC_TLS_KEY_FILE=" ",
             CRM_GRPC_TLS_CLIENT_CA_FILE="", CRM_GRPC_TLS_SERVER_NAME="")
    assert s.grpc_tls_cert_file is None and s.grpc_tls_key_file is None
    assert s.grpc_tls_server_name is None and tls.mode(s) == "plaintext"


@pytest.mark.parametrize(("given", "missing"), [
    ("CRM_GRPC_TLS_CERT_FILE", "CRM_GRPC_TLS_KEY_FILE"),
    ("CRM_GRPC_TLS_KEY_FILE", "CRM_GRPC_TLS_CERT_FILE"),
    ("CRM_GRPC_TLS_CLIENT_CERT_FILE", "CRM_GRPC_TLS_CLIENT_KEY_FILE"),
    ("CRM_GRPC_TLS_CLIENT_KEY_FILE", "CRM_GRPC_TLS_CLIENT_CERT_FILE"),
])
def test_a_certificate_and_its_key_go_together(monkeypatch: pytest.MonkeyPatch, given: str,
                                               missing: str) -> None:
    message = error(monkeypatch, **{given: "/etc/crm/tls/x.pem"})
    assert given in message and missing in message and "go together" in message


def test_mutual_tls_needs_the_server_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    message = error(monkeypatch, CRM_GRPC_TLS_CLIENT_CA_FILE="/etc/crm/tls/ca.crt")
    assert message.startswith("invalid settings:\n  CRM_GRPC_TLS_CLIENT_CA_FILE:")
    assert "CRM_GRPC_TLS_CERT_FILE and CRM_GRPC_TLS_KEY_FILE" in message


def test_settings_name_files_that_need_not_exist_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading does not read the files (a migrations job shares the
    variables without the certificates); the processes that serve or call do."""
    s = load(monkeypatch, CRM_GRPC_TLS_CERT_FILE="/nowhere/tls.crt",
             CRM_GRPC_TLS_KEY_FILE="/nowhere/tls.key",
             CRM_GRPC_TLS_CLIENT_CA_FILE="/nowhere/ca.crt")
    assert tls.mode(s) == "mutual TLS"
    assert tls.summary(s) == "mutual TLS, client certificates required"
    with pytest.raises(SettingsError, match=r"^CRM_GRPC_TLS_CERT_FILE=/nowhere/tls.crt: "
                                            r"cannot read it \(No such file or directory\)$"):
        tls.check(s)


def test_server_tls_and_the_channels_that_follow(
        monkeypatch: pytest.MonkeyPatch, pki: tuple[certs.Authority, certs.Pair]) -> None:
    ca, server = pki
    s = load(monkeypatch, CRM_GRPC_TLS_CERT_FILE=server.cert, CRM_GRPC_TLS_KEY_FILE=server.key,
             CRM_GRPC_TLS_CA_FILE=ca.cert_file, CRM_GRPC_TLS_SERVER_NAME="customers")
    tls.check(s)
    assert (tls.mode(s), tls.summary(s)) == ("TLS", "TLS")
    assert tls.server_credentials(s) is not None
    assert tls.channel_credentials(s) is not None
    assert tls.client_pair(s) == tls.server_pair(s)  # presented when a server asks
    assert tls.channel_options(s) == [("grpc.ssl_target_name_override", "customers")]


def test_a_tool_trusting_a_ca_calls_over_tls_without_a_certificate(
        monkeypatch: pytest.MonkeyPatch, pki: tuple[certs.Authority, certs.Pair]) -> None:
    ca, _ = pki
    s = load(monkeypatch, CRM_GRPC_TLS_CA_FILE=ca.cert_file)
    tls.check(s)
    assert tls.mode(s) == "plaintext"  # it serves nothing
    assert tls.client_enabled(s) and tls.client_pair(s) is None
    assert tls.channel_credentials(s) is not None


# --- files that cannot be used ----------------------------------------------------------------


def check_error(s: Settings) -> str:
    with pytest.raises(SettingsError) as info:
        tls.check(s)
    return str(info.value)


def test_a_file_that_is_no_certificate_is_named(
        pki: tuple[certs.Authority, certs.Pair]) -> None:
    _, server = pki
    s = Settings(grpc_tls_cert_file=server.key, grpc_tls_key_file=server.key)
    assert check_error(s) == (f"CRM_GRPC_TLS_CERT_FILE={server.key}: no PEM certificate in it "
                              "(expected a '-----BEGIN CERTIFICATE-----' block)")


def test_a_file_that_is_no_key_is_named(pki: tuple[certs.Authority, certs.Pair]) -> None:
    _, server = pki
    s = Settings(grpc_tls_cert_file=server.cert, grpc_tls_key_file=server.cert)
    assert check_error(s).startswith(f"CRM_GRPC_TLS_KEY_FILE={server.cert}: no PEM private key")


def test_a_key_of_another_certificate_is_named(
        tmp_path: Path, pki: tuple[certs.Authority, certs.Pair]) -> None:
    ca, server = pki
    other = ca.issue(tmp_path, "other")
    s = Settings(grpc_tls_cert_file=server.cert, grpc_tls_key_file=other.key)
    assert check_error(s) == (f"CRM_GRPC_TLS_CERT_FILE={server.cert} and "
                              f"CRM_GRPC_TLS_KEY_FILE={other.key}: "
                              "the key does not belong to the certificate")


def test_an_encrypted_key_is_named(tmp_path: Path,
                                   pki: tuple[certs.Authority, certs.Pair]) -> None:
    _, server = pki
    key = load_pem_private_key(server.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"a passphrase")))
    s = Settings(grpc_tls_cert_file=server.cert, grpc_tls_key_file=encrypted)
    assert check_error(s).startswith(f"CRM_GRPC_TLS_KEY_FILE={encrypted}: the key is encrypted")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_key_is_named(tmp_path: Path,
                                    pki: tuple[certs.Authority, certs.Pair]) -> None:
    _, server = pki
    key = tmp_path / "private.key"
    key.write_bytes(server.key.read_bytes())
    key.chmod(0)
    s = Settings(grpc_tls_cert_file=server.cert, grpc_tls_key_file=key)
    assert check_error(s) == f"CRM_GRPC_TLS_KEY_FILE={key}: cannot read it (Permission denied)"


def test_a_folder_given_as_a_key_is_named(tmp_path: Path,
                                          pki: tuple[certs.Authority, certs.Pair]) -> None:
    _, server = pki
    s = Settings(grpc_tls_cert_file=server.cert, grpc_tls_key_file=tmp_path)
    assert check_error(s) == f"CRM_GRPC_TLS_KEY_FILE={tmp_path}: cannot read it (Is a directory)"


@pytest.mark.parametrize("field", ["grpc_tls_client_ca_file", "grpc_tls_ca_file"])
def test_a_ca_file_without_certificates_is_named(
        pki: tuple[certs.Authority, certs.Pair], field: str) -> None:
    _, server = pki
    s = Settings(grpc_tls_cert_file=server.cert, grpc_tls_key_file=server.key).model_copy(
        update={field: server.key})
    assert check_error(s).startswith(f"CRM_{field.upper()}="
                                     f"{server.key}: not PEM CA certificates")


def test_a_client_pair_is_checked_like_the_server_pair(
        pki: tuple[certs.Authority, certs.Pair]) -> None:
    ca, server = pki
    s = Settings(grpc_tls_ca_file=ca.cert_file, grpc_tls_client_cert_file=server.cert,
                 grpc_tls_client_key_file=Path("/nowhere/client.key"))
    assert check_error(s).startswith("CRM_GRPC_TLS_CLIENT_KEY_FILE=/nowhere/client.key: "
                                     "cannot read it")
