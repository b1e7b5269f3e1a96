"""The municipality kit: verification, replay detection, decryption, command line."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from journey.package import SuiteName, decode_public_key, generate_key_pair, seal
from municipality_kit.decrypt import (
    ChecksumMismatch,
    DecryptionFailed,
    KeyRing,
    UnknownKeyId,
)
from municipality_kit.verify import (
    DeliveryVerifier,
    InvalidSignature,
    MemorySeenIds,
    ReplayedRequest,
    TimestampOutOfRange,
)
from pairing_service.webhook import signed_headers

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"
CASE_REF = "GV-1A2B3C4D5E"
CODE = "GM0193"
PLAINTEXT = b'{"marker": "kit-test"}' * 100


def delivery_body(public_key: str, suite: SuiteName, key_id: str) -> bytes:
    """Return a webhook body like the service's, sealed for ``public_key``."""
    sealed = seal(
        PLAINTEXT,
        public_key=decode_public_key(public_key, suite),
        suite=suite,
        key_id=key_id,
        case_ref=CASE_REF,
        municipality_code=CODE,
    )
    document: dict[str, Any] = {
        "type": "package.delivered",
        "timestamp": "2026-12-04T10:00:00Z",
        "data": {
            "case_ref": CASE_REF,
            "municipality_code": CODE,
            "consent": [{"role": "client", "at": "2026-12-04T09:59:58Z"}],
            "sources": {"client": ["uwv"]},
            "package": {
                "format": "gv-package/1",
                "suite": suite.value,
                "key_id": key_id,
                "sha256": sealed.sha256,
                "size": sealed.size,
                "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
            },
        },
    }
    return json.dumps(document).encode()


def test_verifier_accepts_signed_request() -> None:
    body = b'{"type":"package.delivered"}'
    headers = signed_headers(SECRET, "msg_ok", body, now=time.time())
    verified = DeliveryVerifier([SECRET]).verify(body, headers)
    assert verified.webhook_id == "msg_ok"
    assert verified.payload == {"type": "package.delivered"}


def test_verifier_rejects_wrong_signature() -> None:
    body = b"{}"
    headers = signed_headers(OTHER_SECRET, "msg_wrong", body, now=time.time())
    with pytest.raises(InvalidSignature):
        DeliveryVerifier([SECRET]).verify(body, headers)


def test_verifier_rejects_changed_body() -> None:
    headers = signed_headers(SECRET, "msg_changed", b'{"a":1}', now=time.time())
    with pytest.raises(InvalidSignature):
        DeliveryVerifier([SECRET]).verify(b'{"a":2}', headers)


@pytest.mark.parametrize("offset", [-301, 301])
def test_verifier_rejects_timestamp_outside_window(offset: int) -> None:
    body = b"{}"
    now = time.time()
    headers = signed_headers(SECRET, "msg_time", body, now=now + offset)
    with pytest.raises(TimestampOutOfRange):
        DeliveryVerifier([SECRET], clock=lambda: now).verify(body, headers)


def test_verifier_rejects_replayed_id() -> None:
    body = b"{}"
    verifier = DeliveryVerifier([SECRET], seen=MemorySeenIds())
    verifier.verify(body, signed_headers(SECRET, "msg_once", body, now=time.time()))
    replay = signed_headers(SECRET, "msg_once", body, now=time.time())
    with pytest.raises(ReplayedRequest):
        verifier.verify(body, replay)


def test_released_id_is_accepted_again() -> None:
    body = b"{}"
    verifier = DeliveryVerifier([SECRET], seen=MemorySeenIds())
    verifier.verify(body, signed_headers(SECRET, "msg_retry", body, now=time.time()))
    verifier.release("msg_retry")
    again = verifier.verify(
        body, signed_headers(SECRET, "msg_retry", body, now=time.time())
    )
    assert again.webhook_id == "msg_retry"


def test_verifier_accepts_either_rotation_secret() -> None:
    body = b"{}"
    headers = signed_headers([OTHER_SECRET, SECRET], "msg_rot", body, now=time.time())
    assert DeliveryVerifier([SECRET]).verify(body, headers).webhook_id == "msg_rot"
    assert DeliveryVerifier([OTHER_SECRET]).verify(body, headers)


@pytest.mark.parametrize("suite", list(SuiteName))
def test_keyring_opens_package(suite: SuiteName) -> None:
    pair = generate_key_pair(suite)
    keyring = KeyRing()
    keyring.add("k1", suite, pair.private_key)
    opened = keyring.open(json.loads(delivery_body(pair.public_key, suite, "k1")))
    assert opened.plaintext == PLAINTEXT
    assert opened.case_ref == CASE_REF


def test_keyring_keeps_old_key_during_rotation() -> None:
    old, new = generate_key_pair(), generate_key_pair()
    keyring = KeyRing()
    keyring.add("k-new", SuiteName.X25519, new.private_key)
    keyring.add("k-old", SuiteName.X25519, old.private_key)
    body = delivery_body(old.public_key, SuiteName.X25519, "k-old")
    assert keyring.open(json.loads(body)).key_id == "k-old"


def test_keyring_rejects_unknown_key_id() -> None:
    pair = generate_key_pair()
    keyring = KeyRing()
    keyring.add("k1", SuiteName.X25519, pair.private_key)
    body = delivery_body(pair.public_key, SuiteName.X25519, "k2")
    with pytest.raises(UnknownKeyId):
        keyring.open(json.loads(body))


def test_keyring_rejects_moved_ciphertext() -> None:
    pair = generate_key_pair()
    keyring = KeyRing()
    keyring.add("k1", SuiteName.X25519, pair.private_key)
    payload = json.loads(delivery_body(pair.public_key, SuiteName.X25519, "k1"))
    payload["data"]["municipality_code"] = "GM0363"
    with pytest.raises(DecryptionFailed):
        keyring.open(payload)


def test_keyring_rejects_wrong_checksum() -> None:
    pair = generate_key_pair()
    keyring = KeyRing()
    keyring.add("k1", SuiteName.X25519, pair.private_key)
    payload = json.loads(delivery_body(pair.public_key, SuiteName.X25519, "k1"))
    payload["data"]["package"]["sha256"] = "0" * 64
    with pytest.raises(ChecksumMismatch):
        keyring.open(payload)


# --- the command line --------------------------------------------------------


def kit(*arguments: str | Path) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m municipality_kit`` with ``arguments``."""
    return subprocess.run(
        [sys.executable, "-m", "municipality_kit", *map(str, arguments)],
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_cli_keygen_verify_decrypt(tmp_path: Path) -> None:
    key_file = tmp_path / "zwolle.key.json"
    generated = kit("keygen", "--key-id", "zwolle-2026-01", "--out", key_file)
    entry = json.loads(generated.stdout)["hpke"]
    body = delivery_body(entry["public_key"], SuiteName.X25519, "zwolle-2026-01")
    (tmp_path / "body.json").write_bytes(body)
    headers = signed_headers(SECRET, "msg_cli", body, now=time.time())
    (tmp_path / "headers.json").write_text(json.dumps(headers))
    (tmp_path / "secrets.txt").write_text(SECRET + "\n")
    seen = tmp_path / "seen.json"
    verify = (
        "verify",
        "--secrets-file",
        tmp_path / "secrets.txt",
        "--headers",
        tmp_path / "headers.json",
        "--body",
        tmp_path / "body.json",
        "--seen-ids",
        seen,
    )

    first = kit(*verify)
    replay = kit(*verify)
    decrypted = kit("decrypt", "--key", key_file, "--body", tmp_path / "body.json")

    assert generated.returncode == 0
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert entry["suite"] == "X25519"
    assert first.returncode == 0, first.stderr
    assert b"msg_cli" in first.stdout
    assert replay.returncode == 1
    assert b"replayed_id" in replay.stderr
    assert decrypted.returncode == 0, decrypted.stderr
    assert decrypted.stdout == PLAINTEXT


def test_cli_rejects_wrong_secret(tmp_path: Path) -> None:
    body = b"{}"
    (tmp_path / "body.json").write_bytes(body)
    headers = signed_headers(OTHER_SECRET, "msg_cli_bad", body, now=time.time())
    (tmp_path / "headers.json").write_text(json.dumps(headers))
    (tmp_path / "secrets.txt").write_text(SECRET + "\n")
    result = kit(
        "verify",
        "--secrets-file",
        tmp_path / "secrets.txt",
        "--headers",
        tmp_path / "headers.json",
        "--body",
        tmp_path / "body.json",
    )
    assert result.returncode == 1
    assert b"invalid_signature" in result.stderr


def test_cli_keygen_never_overwrites(tmp_path: Path) -> None:
    key_file = tmp_path / "existing.json"
    key_file.write_text("keep me")
    result = kit("keygen", "--key-id", "x", "--out", key_file)
    assert result.returncode == 2
    assert key_file.read_text() == "keep me"
