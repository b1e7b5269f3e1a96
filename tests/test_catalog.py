"""The client texts: readability of the Dutch catalog, parity of the English one.

Readability is the Flesch-Douma score, the Dutch form of Flesch reading ease
(206.84 - 0.93 x words per sentence - 77 x syllables per word), as textstat
computes it after ``set_lang("nl")``. B1 Dutch scores 65 or more.
"""

from __future__ import annotations

import re

import pytest
import textstat

from bot.config import BotSettings
from bot.i18n import (
    DEFAULT_LANGUAGE,
    catalog_problems,
    catalog_texts,
    placeholders,
    translate,
)
from bot.services import BotServices
from handlers.render import render_progress, render_status, render_step
from journey.model import Case
from journey.municipalities import Municipality, MunicipalityRegistry
from journey.sources import SOURCES
from journey.steps import Step

MIN_MESSAGE_SCORE = 65.0
"""Flesch-Douma score of plain B1 Dutch; every message must reach it."""

MIN_AVERAGE_SCORE = 75.0
"""The catalog as a whole must read easier than the minimum for one message."""

MAX_SENTENCE_WORDS = 15
"""B1 guidance for people with low literacy: short sentences, one idea each."""

LABEL_PREFIXES = ("button.", "command.", "source.", "progress.", "label.")
LABEL_SUFFIXES = (".subject", ".button")
"""Keys of labels, headlines and single lines, not messages. Their
Flesch-Douma score depends on syllables alone: the button "Terug" (two
syllables) scores 52 and "Mijnpensioenoverzicht" scores -256. They count in
the catalog average, and the bot's labels are scored again inside the
rendered messages that show them."""

SOURCE_NAME_STAND_IN = "bron"
"""Scored in place of a source name in the progress message. The client must
recognise the names that the Ockto app shows, such as Mijnpensioenoverzicht,
so they cannot be simplified, and four of them outweigh every other word."""

SAMPLE_VALUES: dict[str, object] = {
    "municipality": "Zwolle",
    "name": "Zwolle",
    "code": "K7P2",
    "minutes": 10,
    "number": 1,
    "total": 4,
    "source": "UWV",
    "link": "https://t.me/gezondverzekerd_bot?start=AbCdEf",
    "typed_code": "K7P2-9XQ4-M3T8",
    "where": "Je kijkt of je alles bij de hand hebt.",
    "next": "Je vertelt of je een partner hebt.",
    "hours": "maandag tot en met vrijdag van 09:00 tot 17:00 uur",
    "days": "maandag tot en met vrijdag",
    "start": "09:00",
    "end": "17:00",
    "first": "maandag",
    "last": "vrijdag",
    "ref": "GV-1A2B3C4D5E",
    "step": "check_sms",
    "checklist": "DigiD ja, sms nee",
    "partner": "nee",
    "pairing": "nog niet gekoppeld",
    "delivery": "nog niet",
    "reminders": 1,
    "error": "geen",
}
"""Typical values for the placeholders when a text is scored."""

LONGEST_VALUES: dict[str, object] = {
    **SAMPLE_VALUES,
    "municipality": "Alphen aan den Rijn",
    "name": "Alphen aan den Rijn",
    "source": "Mijnpensioenoverzicht",
}
"""The values with the most words, for the sentence length check; Alphen aan
den Rijn has the most words of the 342 municipality names."""

DUTCH = catalog_texts(DEFAULT_LANGUAGE)
ENGLISH = catalog_texts("en")

textstat.set_lang("nl")


DEFAULT_SAMPLE = "Zwolle"
"""Value of a placeholder that the tables above do not name."""

AGENT_PREFIX = "support."
CLIENT_PREFIX_FOR_AGENT_KEYS = "support.client."
"""Keys under ``support.`` are for the helpdesk's agents, except those under
``support.client.``; only client texts have to be B1 Dutch."""


def fill(text: str, values: dict[str, object]) -> str:
    """Return ``text`` with its placeholders replaced by ``values``."""
    return text.format(
        **{name: values.get(name, DEFAULT_SAMPLE) for name in placeholders(text)}
    )


def is_for_client(key: str) -> bool:
    return not key.startswith(AGENT_PREFIX) or key.startswith(
        CLIENT_PREFIX_FOR_AGENT_KEYS
    )


def score(text: str) -> float:
    """Return the Flesch-Douma score of ``text``."""
    return float(textstat.flesch_reading_ease(text))


def sentences(text: str) -> list[str]:
    """Split a text into sentences: at line ends and after . ! or ? and a space."""
    parts = re.split(r"\n+|(?<=[.!?])\s+", text)
    return [part.strip() for part in parts if part.strip()]


def word_count(sentence: str) -> int:
    """Count the tokens of a sentence that contain a letter or a digit."""
    return sum(1 for token in sentence.split() if re.search(r"\w", token))


def is_label(key: str) -> bool:
    return key.startswith(LABEL_PREFIXES) or key.endswith(LABEL_SUFFIXES)


def without_source_names(text: str) -> str:
    for source in SOURCES:
        text = text.replace(DUTCH[f"source.{source}"], SOURCE_NAME_STAND_IN)
    return text


CLIENT_KEYS = sorted(key for key in DUTCH if is_for_client(key))
MESSAGE_KEYS = [key for key in CLIENT_KEYS if not is_label(key)]


# Readability of each Dutch text.


def test_catalog_has_messages_and_labels() -> None:
    assert len(MESSAGE_KEYS) > 80
    assert any(is_label(key) for key in DUTCH)


@pytest.mark.parametrize("key", MESSAGE_KEYS)
def test_dutch_message_readable(key: str) -> None:
    text = fill(DUTCH[key], SAMPLE_VALUES)
    assert score(text) >= MIN_MESSAGE_SCORE, text


@pytest.mark.parametrize("key", CLIENT_KEYS)
def test_dutch_sentences_short(key: str) -> None:
    text = fill(DUTCH[key], LONGEST_VALUES)
    for sentence in sentences(text):
        assert word_count(sentence) <= MAX_SENTENCE_WORDS, sentence


def test_dutch_catalog_average_readable() -> None:
    scores = [score(fill(DUTCH[key], SAMPLE_VALUES)) for key in CLIENT_KEYS]
    average = sum(scores) / len(scores)
    assert average >= MIN_AVERAGE_SCORE


def test_sentence_split_counts_words() -> None:
    parts = sentences("Ja. Nee!\nDat is 038 - 455 29 20.")
    assert parts == ["Ja.", "Nee!", "Dat is 038 - 455 29 20."]
    assert word_count(parts[2]) == 6


# Readability of the rendered messages, labels included.


def make_services() -> BotServices:
    settings = BotSettings(
        telegram_token="1:catalog",
        redis_url="redis://127.0.0.1:1",
        pairing_service_url="http://127.0.0.1:1",
        service_token="unused",
    )
    registry = MunicipalityRegistry(
        [Municipality(code="GM0193", name="Zwolle", participates=True)]
    )
    # Rendering reads only the settings and the registry.
    return BotServices(
        settings=settings,
        store=None,  # type: ignore[arg-type]
        events=None,  # type: ignore[arg-type]
        service=None,  # type: ignore[arg-type]
        registry=registry,
    )


def make_case(step: Step, language: str = DEFAULT_LANGUAGE) -> Case:
    progress = {
        person: {
            "digid": True,
            "sources": {source: "done" for source in SOURCES[:-1]}
            | {SOURCES[-1]: "failed"},
        }
        for person in ("client", "partner")
    }
    return Case(
        case_id="A" * 22,
        step=step,
        version=1,
        municipality_code="GM0193",
        created_at=0.0,
        expires_at=0.0,
        language=language,
        has_partner=True,
        progress=progress,
    )


def rendered_with_labels(text: str, labels: list[str]) -> str:
    return "\n".join([text, *labels])


def labels_of(markup: object) -> list[str]:
    keyboard = getattr(markup, "inline_keyboard", None) or ()
    return [button.text for row in keyboard for button in row]


@pytest.mark.parametrize("step", list(Step), ids=lambda step: step.value)
def test_rendered_step_readable(step: Step) -> None:
    reply = render_step(make_case(step), make_services())
    text = rendered_with_labels(reply.text, labels_of(reply.markup))
    assert score(without_source_names(text)) >= MIN_MESSAGE_SCORE, text


@pytest.mark.parametrize("step", list(Step), ids=lambda step: step.value)
def test_rendered_status_readable(step: Step) -> None:
    reply = render_status(make_case(step), make_services())
    assert score(reply.text) >= MIN_MESSAGE_SCORE, reply.text


def test_progress_with_every_state_readable() -> None:
    case = make_case(Step.FETCHING)
    case.progress["partner"] = {"digid": False, "sources": {}}
    text = render_progress(case)
    assert "Mijnpensioenoverzicht: niet gelukt" in text
    assert "nog niet klaar" in text
    assert score(without_source_names(text)) >= MIN_MESSAGE_SCORE, text


@pytest.mark.parametrize(
    ("message_key", "label_keys"),
    [
        ("checklist.sms.help", ["button.done", "button.later"]),
        ("consent.refuse_confirm", ["button.refuse_confirm", "button.back"]),
        ("stop.confirm", ["button.stop_confirm", "button.stop_keep"]),
        (
            "municipality.confirm",
            ["button.municipality_yes", "button.municipality_no"],
        ),
        ("municipality.choose", ["button.none_of_these"]),
        ("fallback.group", ["button.private_chat"]),
        ("language.choose", ["button.language_nl", "button.language_en"]),
        ("qr.caption", ["button.open_app", "button.qr_page", "button.renew"]),
        ("support.client.offer", ["button.need_help"]),
    ],
)
def test_message_with_its_buttons_readable(
    message_key: str, label_keys: list[str]
) -> None:
    labels = [DUTCH[key] for key in label_keys]
    text = rendered_with_labels(fill(DUTCH[message_key], SAMPLE_VALUES), labels)
    assert score(text) >= MIN_MESSAGE_SCORE, text


def test_every_label_shown_somewhere_scored() -> None:
    # A label is scored inside a rendered message, or is a menu description,
    # a source name in the progress message, or a progress line.
    services = make_services()
    shown: set[str] = set()
    for step in Step:
        reply = render_step(make_case(step), services)
        shown.update(labels_of(reply.markup))
    in_message_tests = {
        "button.done",
        "button.later",
        "button.refuse_confirm",
        "button.back",
        "button.stop_confirm",
        "button.stop_keep",
        "button.municipality_yes",
        "button.municipality_no",
        "button.none_of_these",
        "button.private_chat",
        "button.language_nl",
        "button.language_en",
        "button.open_app",
        "button.qr_page",
        "button.need_help",
    }
    for key in CLIENT_KEYS:
        if not key.startswith("button."):
            continue
        assert DUTCH[key] in shown or key in in_message_tests, key


# The English catalog.


def test_english_catalog_has_dutch_keys() -> None:
    assert set(ENGLISH) == set(DUTCH)


@pytest.mark.parametrize("key", sorted(DUTCH))
def test_english_placeholders_match(key: str) -> None:
    assert placeholders(ENGLISH[key]) == placeholders(DUTCH[key])


def test_catalog_check_finds_no_problem() -> None:
    assert catalog_problems() == []


def test_english_texts_translated() -> None:
    same = [
        key
        for key in MESSAGE_KEYS
        if ENGLISH[key] == DUTCH[key] and key != "checklist.counter"
    ]
    assert same == []


def test_help_names_both_contacts_in_both_languages() -> None:
    for language in ("nl", "en"):
        text = translate("help.body", language)
        assert "support@gezondverzekerd.nl" in text
        assert "038 - 455 29 20" in text
        assert "/taal" in text
