"""A stand-in for the Ockto app that talks to the pairing service over HTTP.

It does what the real app does from the service's point of view: it claims
the code in the QR (or behind the open-the-app button), reports the DigiD
logins and the sources one by one, and uploads the package.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from journey.sources import SOURCES
from journey.tokens import TOKEN_LENGTH

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 30.0
"""Generous for a loopback service; a test that hangs fails instead of waiting."""


class AppApiError(RuntimeError):
    """Raised when the service returns an error for an app request."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """The service's response to a successful claim."""

    session_token: str
    confirmation_code: str
    expires_in: int
    has_partner: bool
    municipality_code: str
    municipality_name: str
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UploadResult:
    """The service's response to an uploaded package."""

    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class JourneyResult:
    """The claim and the upload of a whole simulated journey."""

    claim: ClaimResult
    upload: UploadResult


def code_from_link(text: str) -> str:
    """Return the pairing code from an app link, or ``text`` if it is a bare code.

    Raises:
        ValueError: the link has no code in its fragment.
    """
    text = text.strip()
    if len(text) == TOKEN_LENGTH and "/" not in text:
        return text
    fragment = urlsplit(text).fragment
    if not fragment:
        raise ValueError("the app link has no pairing code in its fragment")
    return fragment


class OcktoAppSimulator:
    """Plays the Ockto app against a pairing service at ``base_url``.

    Args:
        base_url: the service's origin, e.g. ``http://127.0.0.1:8080``.
        session: an aiohttp session to use; by default the simulator opens
            its own and closes it in ``close``.
    """

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession | None = None
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._session = session
        self._owns_session = session is None
        self._session_token: str | None = None

    async def __aenter__(self) -> OcktoAppSimulator:
        return self

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session if the simulator opened it."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session_token(self) -> str | None:
        """The app session token after a successful claim."""
        return self._session_token

    async def claim(self, app_link_or_qr_text: str) -> ClaimResult:
        """Claim the pairing code from a decoded QR or app link.

        Raises:
            AppApiError: the service rejected the claim, e.g. 409
                ``code_already_used`` or 410 ``code_expired``.
        """
        return await self._claim(code_from_link(app_link_or_qr_text))

    async def claim_typed(self, typed_code: str) -> ClaimResult:
        """Claim the pairing with the typed code, as a client without a camera does.

        ``typed_code`` is sent as the client typed it, e.g. ``bcdf ghjk``; the
        service ignores case, spaces and the dash.

        Raises:
            AppApiError: the service rejected the claim, e.g. 404
                ``unknown_code`` or 403 ``code_locked``.
        """
        return await self._claim(typed_code)

    async def _claim(self, code: str) -> ClaimResult:
        body = await self._request("POST", "/app/v1/claim", json_body={"code": code})
        self._session_token = body["session_token"]
        municipality = body.get("municipality", {})
        return ClaimResult(
            session_token=body["session_token"],
            confirmation_code=body["confirmation_code"],
            expires_in=int(body["expires_in"]),
            has_partner=bool(body["has_partner"]),
            municipality_code=municipality.get("code", ""),
            municipality_name=municipality.get("name", ""),
            sources=tuple(body.get("sources", ())),
        )

    async def digid_login(self, person: str = "client") -> str:
        """Report that ``person`` logged in with DigiD; returns the case's step."""
        return await self._event({"type": "digid_login", "person": person})

    async def fetch_source(self, source: str, person: str = "client") -> str:
        """Report that a source was fetched for ``person``; returns the step."""
        return await self._event(
            {"type": "source_fetched", "person": person, "source": source}
        )

    async def fail_source(self, source: str, person: str = "client") -> str:
        """Report that fetching a source failed for ``person``; returns the step."""
        return await self._event(
            {"type": "source_failed", "person": person, "source": source}
        )

    async def partner_done(self) -> str:
        """Report that the partner finished in the app; returns the step."""
        return await self._event({"type": "partner_done"})

    async def review_ready(self) -> str:
        """Report that the client reviews the fetched data; returns the step."""
        return await self._event({"type": "review_ready"})

    async def upload_package(self, data: bytes) -> UploadResult:
        """Upload the data package.

        Raises:
            AppApiError: e.g. 413 ``package_too_large``.
        """
        body = await self._request(
            "PUT",
            "/app/v1/package",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            authorized=True,
        )
        return UploadResult(sha256=body["sha256"], size=int(body["size"]))

    async def run_journey(
        self, url: str, *, partner: bool = False, package: bytes
    ) -> JourneyResult:
        """Go through the whole app journey: claim, logins, sources, review, upload.

        With ``partner`` the partner logs in and fetches every source too.
        """
        claimed = await self.claim(url)
        people = ["client", "partner"] if partner else ["client"]
        for person in people:
            await self.digid_login(person)
            for source in claimed.sources or SOURCES:
                await self.fetch_source(source, person)
        if partner:
            await self.partner_done()
        await self.review_ready()
        uploaded = await self.upload_package(package)
        logger.debug("simulated journey done partner=%s", partner)
        return JourneyResult(claim=claimed, upload=uploaded)

    async def _event(self, document: dict[str, Any]) -> str:
        body = await self._request(
            "POST", "/app/v1/events", json_body=document, authorized=True
        )
        return str(body["step"])

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        authorized: bool = False,
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
            )
        request_headers = dict(headers or {})
        if authorized:
            if self._session_token is None:
                raise RuntimeError("claim a code before sending app requests")
            request_headers["Authorization"] = f"Bearer {self._session_token}"
        async with self._session.request(
            method,
            self._base_url + path,
            json=json_body,
            data=data,
            headers=request_headers,
        ) as response:
            text = await response.text()
            try:
                body = json.loads(text) if text else {}
            except json.JSONDecodeError:
                body = {"code": "not_json", "message": text[:200]}
            if response.status >= 400:
                raise AppApiError(
                    response.status,
                    str(body.get("code", "unknown")),
                    str(body.get("message", "")),
                )
            return dict(body)


def synthetic_package(marker: str) -> bytes:
    """Return a realistic-looking JSON package with fake values and ``marker``.

    The marker appears in the plaintext only, so a test can search Redis,
    logs and files for it to prove that the plaintext never got there.
    """
    document = {
        "format": "ockto-export/sandbox",
        "marker": marker,
        "person": {
            "name": "Test Persoon",
            "birth_date": "1970-01-01",
            "bsn": "000000000",
            "note": f"synthetic data {marker}",
        },
        "income": [
            {
                "source": "belastingdienst",
                "year": 2025,
                "kind": "verzamelinkomen",
                "amount_eur": 18250,
            },
            {
                "source": "uwv",
                "period": "2026-10",
                "employer": "Voorbeeld B.V.",
                "gross_eur": 1412.37,
                "net_eur": 1288.05,
            },
            {
                "source": "mijnpensioenoverzicht",
                "kind": "ouderdomspensioen",
                "yearly_eur": 0,
            },
        ],
        "assets": {
            "bank_accounts": [
                {"iban": "NL00TEST0000000000", "balance_eur": 1234.56},
            ],
            "savings_eur": 850.0,
            "property": None,
            "debts_eur": 0,
        },
        "household": {"partner": False, "children": 0},
    }
    return json.dumps(document, indent=2, ensure_ascii=False).encode("utf-8")
