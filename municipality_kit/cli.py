"""The kit's command line: ``python -m municipality_kit keygen|verify|decrypt|serve``.

Exit status 0 means success, 1 that a delivery was rejected (the message names
the check that failed) and 2 that the command line or an input file is invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from journey.package import InvalidKey, SuiteName, generate_key_pair
from municipality_kit.decrypt import (
    KeyRing,
    OpenedPackage,
    PackageError,
    write_key_file,
)
from municipality_kit.receiver import ReferenceReceiver, create_receiver_app
from municipality_kit.verify import (
    DeliveryVerifier,
    FileSeenIds,
    MemorySeenIds,
    RejectedRequest,
    SeenIds,
)

logger = logging.getLogger(__name__)

EXIT_REJECTED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Raised when an argument or an input file is invalid."""


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of all subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m municipality_kit",
        description="Receive deliveries from Gezondverzekerd.nl: keys, "
        "signature checks and decryption.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    keygen = commands.add_parser(
        "keygen",
        help="generate an HPKE key pair; print the registry's hpke entry",
    )
    keygen.add_argument(
        "--key-id", required=True, help="name of the key, e.g. zwolle-2026-01"
    )
    keygen.add_argument(
        "--suite",
        choices=[suite.value for suite in SuiteName],
        default=SuiteName.X25519.value,
        help="HPKE suite (default: X25519)",
    )
    keygen.add_argument(
        "--out",
        type=Path,
        required=True,
        help="key file to create (mode 0600); an existing file is never replaced",
    )

    verify = commands.add_parser(
        "verify", help="check a saved request's signature, timestamp and id"
    )
    _add_secrets_option(verify)
    verify.add_argument(
        "--headers",
        type=Path,
        required=True,
        help="JSON object with the request's headers",
    )
    verify.add_argument(
        "--body", type=Path, required=True, help="the request body, byte for byte"
    )
    verify.add_argument(
        "--seen-ids",
        type=Path,
        help="JSON file of processed webhook-ids; a known id is rejected as a "
        "replay, a new one is added",
    )

    decrypt = commands.add_parser("decrypt", help="decrypt the package of a request")
    _add_key_option(decrypt)
    decrypt.add_argument(
        "--body", type=Path, required=True, help="the verified request body"
    )
    decrypt.add_argument(
        "--out", type=Path, help="file for the decrypted package (default: stdout)"
    )

    serve = commands.add_parser("serve", help="run the reference receiver")
    _add_secrets_option(serve)
    _add_key_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8090, help="TCP port")
    serve.add_argument("--path", default="/webhook", help="URL path of the webhook")
    serve.add_argument(
        "--out-dir",
        type=Path,
        help="folder for decrypted packages, one file per case reference",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand and return its exit status."""
    arguments = build_parser().parse_args(argv)
    try:
        if arguments.command == "keygen":
            return _keygen(arguments)
        if arguments.command == "verify":
            return _verify(arguments)
        if arguments.command == "decrypt":
            return _decrypt(arguments)
        return _serve(arguments)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


def _add_secrets_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secrets-file",
        type=Path,
        required=True,
        help="file with one signing secret (whsec_...) per line; give the new "
        "and the old one during a rotation",
    )


def _add_key_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        help="key file written by keygen; repeat it to keep old keys during a rotation",
    )


def _keygen(arguments: argparse.Namespace) -> int:
    key_pair = generate_key_pair(SuiteName(arguments.suite))
    try:
        write_key_file(arguments.out, arguments.key_id, key_pair)
    except FileExistsError:
        raise UsageError(f"{arguments.out} exists; choose a new file") from None
    entry = {
        "suite": key_pair.suite.value,
        "key_id": arguments.key_id,
        "public_key": key_pair.public_key,
    }
    print(json.dumps({"hpke": entry}, indent=2))
    print(f"private key written to {arguments.out}", file=sys.stderr)
    return 0


def _verify(arguments: argparse.Namespace) -> int:
    seen: SeenIds | None = None
    if arguments.seen_ids is not None:
        seen = FileSeenIds(arguments.seen_ids)
    verifier = DeliveryVerifier(_read_secrets(arguments.secrets_file), seen=seen)
    headers = _read_json(arguments.headers)
    if not isinstance(headers, dict):
        raise UsageError(f"{arguments.headers}: expected a JSON object of headers")
    body = _read_bytes(arguments.body)
    try:
        verified = verifier.verify(body, {str(k): str(v) for k, v in headers.items()})
    except RejectedRequest as error:
        print(f"rejected: {error.code}: {error}", file=sys.stderr)
        return EXIT_REJECTED
    print(f"verified webhook-id={verified.webhook_id} timestamp={verified.timestamp}")
    return 0


def _decrypt(arguments: argparse.Namespace) -> int:
    keyring = _read_keys(arguments.key)
    try:
        payload = json.loads(_read_bytes(arguments.body))
    except ValueError as error:
        raise UsageError(f"{arguments.body}: not JSON: {error}") from None
    try:
        opened = keyring.open(payload)
    except PackageError as error:
        print(f"rejected: {error.code}: {error}", file=sys.stderr)
        return EXIT_REJECTED
    if arguments.out is None:
        sys.stdout.buffer.write(opened.plaintext)
        sys.stdout.buffer.flush()
    else:
        arguments.out.write_bytes(opened.plaintext)
    print(
        f"decrypted case={opened.case_ref} size={len(opened.plaintext)} "
        f"key_id={opened.key_id}",
        file=sys.stderr,
    )
    return 0


def _serve(arguments: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    verifier = DeliveryVerifier(
        _read_secrets(arguments.secrets_file), seen=MemorySeenIds()
    )
    out_dir: Path | None = arguments.out_dir

    async def store(_webhook_id: str, opened: OpenedPackage) -> None:
        if out_dir is not None:
            target = out_dir / f"{opened.case_ref}.bin"
            await asyncio.to_thread(target.write_bytes, opened.plaintext)

    receiver = ReferenceReceiver(verifier, _read_keys(arguments.key), process=store)
    app = create_receiver_app(receiver.handle, path=arguments.path)
    web.run_app(app, host=arguments.host, port=arguments.port, print=None)
    return 0


def _read_secrets(path: Path) -> list[str]:
    text = _read_bytes(path).decode("utf-8", errors="replace")
    secrets = [line.strip() for line in text.splitlines() if line.strip()]
    if not secrets:
        raise UsageError(f"{path}: no signing secret in the file")
    bad = [
        index for index, line in enumerate(secrets, 1) if not line.startswith("whsec_")
    ]
    if bad:
        raise UsageError(f"{path}: line {bad[0]} is not a whsec_ secret")
    return secrets


def _read_keys(paths: list[Path]) -> KeyRing:
    keyring = KeyRing()
    for path in paths:
        try:
            keyring.add_file(path)
        except OSError as error:
            raise UsageError(f"{path}: cannot read: {error.strerror}") from None
        except (ValueError, InvalidKey) as error:
            raise UsageError(str(error)) from None
    return keyring


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_bytes(path))
    except ValueError as error:
        raise UsageError(f"{path}: not JSON: {error}") from None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror}") from None
