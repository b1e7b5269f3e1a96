"""Client-facing texts from the gettext catalogs in ``locales/``.

A msgid is a symbolic key such as ``info.body``; its msgstr is the text the
client reads, with ``{placeholder}`` fields in ``str.format`` syntax. A
catalog is read from ``locales/<language>/LC_MESSAGES/messages.mo`` when that
file exists and is not older than ``messages.po``, and otherwise compiled in
memory from ``messages.po`` with Babel, so a fresh clone runs without a build
step.

``python -m bot.i18n compile`` writes the ``.mo`` files (the Docker build runs
it); ``python -m bot.i18n check`` exits 1 when a catalog lacks a key of the
Dutch one or has other placeholders.
"""

from __future__ import annotations

import argparse
import functools
import gettext
import io
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from babel.messages.catalog import Catalog
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
    compiled = mo_path(language)
    source = po_path(language)
    # A .mo older than its .po is stale, e.g. after editing a text in a checkout.
    if compiled.is_file() and (
        not source.is_file() or compiled.stat().st_mtime >= source.stat().st_mtime
    ):
        with compiled.open("rb") as handle:
            return gettext.GNUTranslations(handle)

    messages = read_catalog(language)
    buffer = io.BytesIO()
    write_mo(buffer, messages)
    buffer.seek(0)
    logger.debug("catalog compiled in memory language=%s", language)
    return gettext.GNUTranslations(buffer)


def po_path(language: str) -> Path:
    """Return the path of the ``.po`` source of ``language``."""
    return LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"


def mo_path(language: str) -> Path:
    """Return the path of the compiled ``.mo`` file of ``language``."""
    return LOCALES_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.mo"


def read_catalog(language: str) -> Catalog:
    """Parse the ``.po`` source of ``language`` with Babel.

    Raises:
        FileNotFoundError: the language has no ``.po`` file.
    """
    with po_path(language).open("rb") as handle:
        return read_po(handle, locale=language)


def catalog_texts(language: str) -> dict[str, str]:
    """Return every key of the ``.po`` source of ``language`` with its text."""
    return {
        str(message.id): str(message.string)
        for message in read_catalog(language)
        if message.id
    }


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def placeholders(text: str) -> set[str]:
    """Return the names of the ``{placeholder}`` fields in a catalog text."""
    return set(_PLACEHOLDER.findall(text))


def catalog_problems() -> list[str]:
    """Compare every catalog with the Dutch one; return one line per difference.

    A difference is a missing or extra key, an empty text or other placeholders.
    """
    reference = catalog_texts(DEFAULT_LANGUAGE)
    problems = [
        f"{DEFAULT_LANGUAGE}: key {key!r} has an empty text"
        for key, text in reference.items()
        if not text
    ]
    for language in SUPPORTED_LANGUAGES:
        if language == DEFAULT_LANGUAGE:
            continue
        texts = catalog_texts(language)
        for key in sorted(reference.keys() - texts.keys()):
            problems.append(f"{language}: key {key!r} is missing")
        for key in sorted(texts.keys() - reference.keys()):
            problems.append(f"{language}: key {key!r} is not in the Dutch catalog")
        for key in sorted(reference.keys() & texts.keys()):
            if not texts[key]:
                problems.append(f"{language}: key {key!r} has an empty text")
            elif placeholders(texts[key]) != placeholders(reference[key]):
                problems.append(
                    f"{language}: key {key!r} has placeholders "
                    f"{sorted(placeholders(texts[key]))}, Dutch has "
                    f"{sorted(placeholders(reference[key]))}"
                )
    return problems


def compile_catalogs() -> list[Path]:
    """Write the ``.mo`` file of every supported language; return their paths."""
    written = []
    for language in SUPPORTED_LANGUAGES:
        target = mo_path(language)
        with target.open("wb") as handle:
            write_mo(handle, read_catalog(language))
        written.append(target)
    catalog.cache_clear()
    return written


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``compile`` or ``check`` on the catalogs; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m bot.i18n", description="Compile or check the catalogs."
    )
    parser.add_argument(
        "command",
        choices=("compile", "check"),
        help="compile: write the .mo files; check: compare with the Dutch catalog",
    )
    arguments = parser.parse_args(argv)

    problems = catalog_problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    if arguments.command == "compile":
        for path in compile_catalogs():
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
