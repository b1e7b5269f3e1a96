"""Client-facing texts from the gettext catalogs in ``locales/``.

A msgid is a symbolic key such as ``info.body``; its msgstr is the text the
client reads, with ``{placeholder}`` fields in ``str.format`` syntax. A
catalog is read from ``locales/<language>/LC_MESSAGES/messages.mo`` when that
file exists, and otherwise compiled in memory from ``messages.po`` with
Babel, so a fresh clone runs without a build step.
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
import os
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

import locales

logger = logging.getLogger(__name__)

DEFAULT_LANGUAGE = "nl"
SUPPORTED_LANGUAGES: tuple[str, ...] = ("nl", "en")
LOCALES_DIR = Path(locales.__file__).resolve().parent
DOMAIN = "messages"

STRICT_ENV_VARIABLE = "GV_I18N_STRICT"
"""When set to ``1``, a missing key or placeholder raises instead of logging."""

_strict = os.environ.get(STRICT_ENV_VARIABLE) == "1"


class MissingTranslation(KeyError):
    """Raised in strict mode when a key or one of its placeholders is missing."""


def set_strict(enabled: bool) -> None:
    """Make a missing key raise (tests) or fall back to the key (production)."""
    global _strict
    _strict = enabled


def normalize_language(language: str | None) -> str:
    """Map a language tag such as ``en-GB`` to a supported catalog language."""
    if not language:
        return DEFAULT_LANGUAGE
    primary = language.replace("_", "-").split("-")[0].lower()
    return primary if primary in SUPPORTED_LANGUAGES else DEFAULT_LANGUAGE


@functools.cache
def catalog(language: str) -> gettext.GNUTranslations:
    """Load the catalog of ``language``, compiling the .po file when no .mo exists.

    Raises:
        FileNotFoundError: the language has neither a .mo nor a .po file.
    """
    folder = LOCALES_DIR / language / "LC_MESSAGES"
    compiled = folder / f"{DOMAIN}.mo"
    if compiled.is_file():
        with compiled.open("rb") as handle:
            return gettext.GNUTranslations(handle)

    with (folder / f"{DOMAIN}.po").open("rb") as handle:
        messages = read_po(handle, locale=language)
    buffer = io.BytesIO()
    write_mo(buffer, messages)
    buffer.seek(0)
    logger.debug("catalog compiled in memory language=%s", language)
    return gettext.GNUTranslations(buffer)


def has_key(key: str, language: str = DEFAULT_LANGUAGE) -> bool:
    """Tell whether the catalog of ``language`` has a text for ``key``."""
    return _lookup(key, normalize_language(language)) is not None


def translate(
    key: str, language: str = DEFAULT_LANGUAGE, **placeholders: object
) -> str:
    """Return the text for ``key`` in ``language`` with the placeholders filled in.

    An unsupported language falls back to Dutch. A key missing from the
    English catalog falls back to the Dutch text.

    Raises:
        MissingTranslation: in strict mode, the key is in no catalog or a
            placeholder of its text was not given. Outside strict mode the
            key itself (or the unformatted text) is returned and a warning
            is logged.
    """
    language = normalize_language(language)
    text = _lookup(key, language)
    if text is None and language != DEFAULT_LANGUAGE:
        text = _lookup(key, DEFAULT_LANGUAGE)
    if text is None:
        if _strict:
            raise MissingTranslation(f"no text for key {key!r} in {language}")
        logger.warning("translation missing key=%s language=%s", key, language)
        return key

    try:
        return text.format(**placeholders)
    except (KeyError, IndexError, ValueError) as error:
        if _strict:
            raise MissingTranslation(
                f"key {key!r} in {language}: cannot fill placeholders: {error!r}"
            ) from None
        logger.warning(
            "translation placeholder missing key=%s language=%s", key, language
        )
        return text


def _lookup(key: str, language: str) -> str | None:
    # gettext returns the msgid itself for a missing entry. A msgstr never
    # equals its symbolic key, so that equality means "missing".
    text = catalog(language).gettext(key)
    return None if text == key else text
