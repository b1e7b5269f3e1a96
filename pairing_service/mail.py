"""E-mail to clients: the invitation, reminders and the expiry notice.

Each message has a plain text part and an HTML part built from the same
catalog texts (``email.<name>.subject`` and ``email.<name>.body``), so no
client text lives here. Mail goes out through aiosmtplib to the SMTP server
in ``MailSettings``.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid

import aiosmtplib

from bot.i18n import translate

logger = logging.getLogger(__name__)

DEFAULT_SMTP_PORT = 25
DEFAULT_SMTP_TIMEOUT_SECONDS = 15.0
"""One SMTP conversation, from connect to the reply to the message; a mail
server that takes longer is treated as down and the caller logs it."""


class MailError(RuntimeError):
    """Raised when the SMTP server could not be reached or rejected a message.

    ``maybe_delivered`` is False when no connection was made, so sending the
    message again cannot make a second copy.
    """

    def __init__(self, message: str, *, maybe_delivered: bool) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


@dataclass(frozen=True, slots=True)
class MailSettings:
    """Where and as whom e-mail is sent.

    ``repr`` hides the password, so the settings can be logged.
    """

    host: str
    sender: str
    port: int = DEFAULT_SMTP_PORT
    username: str | None = None
    password: str | None = None
    start_tls: bool = False
    timeout_seconds: float = DEFAULT_SMTP_TIMEOUT_SECONDS

    def __repr__(self) -> str:
        return (
            f"MailSettings(host={self.host!r}, port={self.port}, "
            f"sender={self.sender!r}, start_tls={self.start_tls})"
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MailSettings | None:
        """Read ``SMTP_HOST``, ``SMTP_PORT``, ``SMTP_FROM``, ``SMTP_USERNAME``,
        ``SMTP_PASSWORD`` and ``SMTP_STARTTLS`` (``1`` to upgrade).

        Returns None when ``SMTP_HOST`` is unset: then no e-mail is sent.

        Raises:
            ValueError: ``SMTP_FROM`` is missing or ``SMTP_PORT`` is not a port.
        """
        host = environ.get("SMTP_HOST", "").strip()
        if not host:
            return None
        sender = environ.get("SMTP_FROM", "").strip()
        if not sender:
            raise ValueError("SMTP_FROM: is missing; set the sender address of e-mail")
        port_text = environ.get("SMTP_PORT", "").strip() or str(DEFAULT_SMTP_PORT)
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"SMTP_PORT: must be a TCP port, got {port_text!r}")
        return cls(
            host=host,
            sender=sender,
            port=int(port_text),
            username=environ.get("SMTP_USERNAME") or None,
            password=environ.get("SMTP_PASSWORD") or None,
            start_tls=environ.get("SMTP_STARTTLS") == "1",
        )


def build_message(
    settings: MailSettings,
    recipient: str,
    name: str,
    language: str,
    *,
    link: str | None = None,
    **placeholders: str,
) -> EmailMessage:
    """Build the e-mail ``name`` (``invitation``, ``reminder``, ``expired``).

    ``link``, when given, fills ``{link}`` in the text and becomes a button
    in the HTML part.
    """
    values = dict(placeholders)
    if link is not None:
        values["link"] = link
    subject = translate(f"email.{name}.subject", language)
    body = translate(f"email.{name}.body", language, **values)

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = settings.sender
    message["To"] = recipient
    message["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2])
    message.set_content(body)
    button = translate(f"email.{name}.button", language) if link else None
    message.add_alternative(
        _html_body(subject, body, link, button, language), subtype="html"
    )
    return message


def _html_body(
    subject: str, body: str, link: str | None, button: str | None, language: str
) -> str:
    paragraphs = []
    for paragraph in body.split("\n\n"):
        lines = [html.escape(line) for line in paragraph.split("\n")]
        if link is not None and html.escape(link) in lines and button is not None:
            # The bare link of the text part becomes a button; the link stays
            # readable below it for a client whose mail app hides buttons.
            href = html.escape(link, quote=True)
            lines = [
                line
                if line != html.escape(link)
                else f'<a href="{href}" style="{_BUTTON_STYLE}">'
                f"{html.escape(button)}</a><br>{line}"
                for line in lines
            ]
        paragraphs.append("<p>" + "<br>".join(lines) + "</p>")
    return (
        f'<!doctype html><html lang="{html.escape(language)}"><head>'
        f'<meta charset="utf-8"><title>{html.escape(subject)}</title></head>'
        f'<body style="font-family:sans-serif;font-size:17px;line-height:1.5">'
        f"{''.join(paragraphs)}</body></html>"
    )


_BUTTON_STYLE = (
    "display:inline-block;padding:12px 20px;background:#0b5c3b;color:#ffffff;"
    "text-decoration:none;border-radius:6px;font-weight:bold"
)


class Mailer:
    """Sends e-mail through one SMTP server, one connection per message."""

    def __init__(self, settings: MailSettings) -> None:
        self._settings = settings

    @property
    def settings(self) -> MailSettings:
        """The SMTP server and sender of this mailer."""
        return self._settings

    async def send(self, message: EmailMessage, *, case_ref: str) -> None:
        """Send ``message``; ``case_ref`` is only for the log.

        Raises:
            MailError: the server was unreachable, timed out or rejected it.
        """
        settings = self._settings
        try:
            await aiosmtplib.send(
                message,
                hostname=settings.host,
                port=settings.port,
                username=settings.username,
                password=settings.password,
                start_tls=settings.start_tls,
                timeout=settings.timeout_seconds,
            )
        except (aiosmtplib.SMTPException, OSError) as error:
            unreached = isinstance(
                error,
                aiosmtplib.SMTPConnectError
                | aiosmtplib.SMTPConnectTimeoutError
                | ConnectionRefusedError,
            )
            logger.warning(
                "e-mail failed case=%s error=%s", case_ref, type(error).__name__
            )
            raise MailError(
                f"sending e-mail failed: {type(error).__name__}",
                maybe_delivered=not unreached,
            ) from error
        logger.info("e-mail sent case=%s", case_ref)
