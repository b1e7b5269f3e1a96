"""Client of the pairing service's internal API.

Every request carries ``Authorization: Bearer <SERVICE_TOKEN>``. The service
responds to an error with JSON ``{"code", "message"}`` and the matching status;
this client turns that into ``ServiceError(code, status)``. A network failure
or an answer that is not JSON becomes a ``ServiceError`` too, with one of the
codes below, so a handler needs to catch one exception type only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

from journey.model import Role
from journey.steps import Step

logger = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 10.0
"""Total time for one request; the client waits in the chat meanwhile."""

UNAVAILABLE = "service_unavailable"
"""Code of a ``ServiceError`` when the service could not be reached or timed out."""

INVALID_RESPONSE = "invalid_response"
"""Code of a ``ServiceError`` when the response is not the expected JSON."""


class ServiceError(Exception):
    """Raised when the pairing service rejects a request or cannot be reached.

    Attributes:
        code: the stable error code from the service's JSON response, or
            ``UNAVAILABLE`` / ``INVALID_RESPONSE``.
        status: the HTTP status, 0 when no response arrived.
    """

    def __init__(self, code: str, status: int, message: str = "") -> None:
        super().__init__(f"{code} (HTTP {status}): {message}" if message else code)
        self.code = code
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Pairing:
    """A pairing issued by the service: what the bot shows to scan or tap."""

    page_id: str
    page_url: str
    app_link: str
    confirmation_code: str
    expires_at: str
    typed_code: str | None = None
    """The fallback code ``XXXX-XXXX`` to type in the app, when the service has one."""


class ServiceClient:
    """Calls the internal API of the pairing service.

    Use as an async context manager, or call ``close`` when done. The HTTP
    session is created on first use, inside the running event loop.

    Args:
        base_url: the service's root URL, e.g. ``http://127.0.0.1:8080``.
        token: the shared service token.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session, if one was opened."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def create_pairing(self, case_id: str) -> Pairing:
        """Ask for a pairing code; moves the case from ``app`` to ``qr`` or renews it.

        Raises:
            ServiceError: the service rejected the request or is unreachable.
        """
        body = await self._request("POST", f"/v1/cases/{case_id}/pairings", {})
        try:
            return Pairing(
                page_id=str(body["page_id"]),
                page_url=str(body["page_url"]),
                app_link=str(body["app_link"]),
                confirmation_code=str(body["confirmation_code"]),
                expires_at=str(body["expires_at"]),
                typed_code=_optional_text(body.get("typed_code")),
            )
        except KeyError as error:
            raise ServiceError(
                INVALID_RESPONSE, 201, f"pairing answer lacks {error}"
            ) from None

    async def give_consent(self, case_id: str, role: Role, consent: bool) -> Step:
        """Record the yes or no of ``role`` and return the case's step after it.

        Raises:
            ServiceError: the service rejected the request or is unreachable.
        """
        body = await self._request(
            "POST",
            f"/v1/cases/{case_id}/consent",
            {"role": role, "consent": consent},
        )
        return _step_of(body)

    async def erase_case(self, case_id: str) -> Step:
        """Cancel the case and erase everything of it.

        Raises:
            ServiceError: the service rejected the request or is unreachable.
        """
        return _step_of(await self._request("DELETE", f"/v1/cases/{case_id}", None))

    async def _request(
        self, method: str, path: str, payload: dict[str, Any] | None
    ) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=self._timeout
            )
        url = self._base_url + path
        try:
            async with self._session.request(method, url, json=payload) as response:
                status = response.status
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
        except (aiohttp.ClientError, TimeoutError) as error:
            logger.warning(
                "service request failed method=%s path=%s error=%s",
                method,
                _path_template(path),
                type(error).__name__,
            )
            raise ServiceError(UNAVAILABLE, 0, str(error)) from None

        if not isinstance(body, dict):
            raise ServiceError(
                INVALID_RESPONSE, status, "response is not a JSON object"
            )
        if status >= 400:
            code = str(body.get("code") or INVALID_RESPONSE)
            logger.info(
                "service rejected request method=%s path=%s status=%s code=%s",
                method,
                _path_template(path),
                status,
                code,
            )
            raise ServiceError(code, status, str(body.get("message", "")))
        return body


def _step_of(body: dict[str, Any]) -> Step:
    try:
        return Step(body["step"])
    except (KeyError, ValueError):
        raise ServiceError(
            INVALID_RESPONSE, 200, "response has no valid 'step'"
        ) from None


def _path_template(path: str) -> str:
    # A case id is the first half of every token, so logs show the route only.
    parts = path.split("/")
    if len(parts) > 3 and parts[1] == "v1" and parts[2] == "cases":
        parts[3] = "{case_id}"
    return "/".join(parts)


def _optional_text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
