"""The bot's parts that need no Telegram: settings, catalogs, buttons, QR image."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from bot import i18n
from bot.__main__ import main
from bot.config import DEFAULT_FILE_BASE_URL, BotMode, BotSettings, ConfigError
from handlers.callback_data import (
    SCOPE_MUNICIPALITY,
    SCOPE_STOP,
    Action,
    case_tag,
    decode,
    encode,
)
from handlers.qr_image import render_qr_png
from journey.model import Case
from journey.steps import Step

MAX_SENTENCE_WORDS = 15
"""B1-level Dutch: a sentence of at most 15 words."""


def catalog_messages(language: str) -> dict[str, str]:
    path = i18n.LOCALES_DIR / language / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as handle:
        catalog = read_po(handle)
    return {str(message.id): str(message.string) for message in catalog if message.id}


def base_environment(tmp_path: Path) -> dict[str, str]:
    registry = tmp_path / "registry.json"
    registry.write_text('{"municipalities": []}', encoding="utf-8")
    return {
        "TELEGRAM_BOT_TOKEN": "123456:secret",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "PAIRING_SERVICE_URL": "http://127.0.0.1:8080/",
        "SERVICE_TOKEN": "s" * 32,
        "MUNICIPALITY_REGISTRY": str(registry),
    }


# Settings.


def test_settings_read_from_environment(tmp_path: Path) -> None:
    environment = base_environment(tmp_path)
    environment["TELEGRAM_API_BASE_URL"] = "http://127.0.0.1:9999/bot"
    settings = BotSettings.from_env(environment)
    assert settings.api_base_url == "http://127.0.0.1:9999/bot"
    assert settings.file_base_url == "http://127.0.0.1:9999/file/bot"
    assert settings.pairing_service_url == "http://127.0.0.1:8080"
    assert settings.mode is BotMode.POLLING
    assert settings.consumer_name


def test_settings_default_to_telegram(tmp_path: Path) -> None:
    settings = BotSettings.from_env(base_environment(tmp_path))
    assert settings.api_base_url == "https://api.telegram.org/bot"
    assert settings.file_base_url == DEFAULT_FILE_BASE_URL


@pytest.mark.parametrize(
    "variable",
    [
        "TELEGRAM_BOT_TOKEN",
        "REDIS_URL",
        "PAIRING_SERVICE_URL",
        "SERVICE_TOKEN",
        "MUNICIPALITY_REGISTRY",
    ],
)
def test_missing_variable_is_named(tmp_path: Path, variable: str) -> None:
    environment = base_environment(tmp_path)
    del environment[variable]
    with pytest.raises(ConfigError, match=variable):
        BotSettings.from_env(environment)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TELEGRAM_API_BASE_URL", "ftp://example.org/bot"),
        ("TELEGRAM_FILE_BASE_URL", "not a url"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("BOT_MODE", "push"),
        ("TELEGRAM_POLL_TIMEOUT", "thirty"),
        ("TELEGRAM_POLL_TIMEOUT", "30000"),
        ("TELEGRAM_BOT_TOKEN", "123 456"),
        ("MUNICIPALITY_REGISTRY", "/no/such/registry.json"),
        ("SERVICE_TOKEN", "s" * 31),
    ],
)
def test_invalid_variable_is_named(tmp_path: Path, variable: str, value: str) -> None:
    environment = base_environment(tmp_path)
    environment[variable] = value
    with pytest.raises(ConfigError, match=variable):
        BotSettings.from_env(environment)


def test_settings_repr_hides_secrets(tmp_path: Path) -> None:
    environment = base_environment(tmp_path)
    environment["REDIS_URL"] = "redis://:hunter2@127.0.0.1:6379/0"
    text = repr(BotSettings.from_env(environment))
    assert "123456:secret" not in text
    assert "s" * 32 not in text
    assert "hunter2" not in text


def test_main_exits_on_missing_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    assert main() == 2


def test_main_rejects_webhook_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in base_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BOT_MODE", "webhook")
    assert main() == 2


# Catalogs.


def test_catalogs_have_same_keys() -> None:
    assert set(catalog_messages("nl")) == set(catalog_messages("en"))


def test_catalogs_have_same_placeholders() -> None:
    english = catalog_messages("en")
    for key, dutch in catalog_messages("nl").items():
        assert set(re.findall(r"{(\w+)}", dutch)) == set(
            re.findall(r"{(\w+)}", english[key])
        ), key


def test_dutch_sentences_are_short() -> None:
    for key, text in catalog_messages("nl").items():
        for sentence in re.split(r"(?<=[.?!])\s+|\n", text):
            words = sentence.split()
            assert len(words) <= MAX_SENTENCE_WORDS, (key, sentence)


def test_every_catalog_text_filled() -> None:
    for language in ("nl", "en"):
        for key, text in catalog_messages(language).items():
            assert text.strip(), (language, key)


def test_code_uses_only_catalog_keys() -> None:
    known = set(catalog_messages("nl"))
    root = Path(__file__).resolve().parent.parent
    used: set[str] = set()
    for folder in ("bot", "handlers"):
        for path in (root / folder).glob("*.py"):
            source = path.read_text(encoding="utf-8")
            used.update(re.findall(r'translate\(\s*"([a-z_.]+)"', source))
            used.update(re.findall(r'notice_and_step\(\s*[^"]*"([a-z_.]+)"', source))
    assert used
    assert used <= known, used - known


def test_catalog_compiles_without_mo_file() -> None:
    i18n.catalog.cache_clear()
    translations = i18n.catalog("nl")
    assert translations.gettext("button.yes") == "Ja"


def test_missing_key_raises_in_strict_mode() -> None:
    i18n.set_strict(True)
    try:
        with pytest.raises(i18n.MissingTranslation):
            i18n.translate("no.such.key")
        with pytest.raises(i18n.MissingTranslation):
            i18n.translate("municipality.confirm")
    finally:
        i18n.set_strict(False)


def test_missing_key_falls_back_in_production(caplog: pytest.LogCaptureFixture) -> None:
    i18n.set_strict(False)
    assert i18n.translate("no.such.key") == "no.such.key"
    assert "translation missing key=no.such.key" in caplog.text


# Callback data.


def sample_case(case_id: str = "A" * 22) -> Case:
    return Case(
        case_id=case_id,
        step=Step.PARTNER_CHECK_DIGID,
        version=1,
        municipality_code="GM0193",
        created_at=0.0,
        expires_at=0.0,
    )


def test_callback_data_round_trips() -> None:
    case = sample_case()
    data = encode(case.step, case_tag(case), Action.LATER)
    parsed = decode(data)
    assert parsed is not None
    assert parsed.step is Step.PARTNER_CHECK_DIGID
    assert parsed.tag == case_tag(case)
    assert parsed.action is Action.LATER


def test_callback_data_fits_telegram_limit() -> None:
    case = sample_case()
    scopes: list[Step | str] = [*Step, SCOPE_STOP, SCOPE_MUNICIPALITY]
    for scope in scopes:
        for action in Action:
            assert len(encode(scope, case_tag(case), action).encode()) <= 64


def test_case_tag_differs_between_cases() -> None:
    assert case_tag(sample_case("A" * 22)) != case_tag(sample_case("B" * 22))


@pytest.mark.parametrize(
    "data", [None, "", "x", "info:1A2B", "info:1A2B:fly", "a:b:c:d", "info:1A 2B:yes"]
)
def test_foreign_callback_data_rejected(data: str | None) -> None:
    assert decode(data) is None


def test_encode_rejects_separator_in_part() -> None:
    with pytest.raises(ValueError):
        encode("info", "1A:2B", Action.YES)


# QR image.


def test_qr_survives_jpeg_recompression() -> None:
    zxingcpp = pytest.importorskip("zxingcpp")
    image_module = pytest.importorskip("PIL.Image")
    link = "https://bot.gezondverzekerd.nl/app/open#" + "Ab-_" * 11
    image = image_module.open(io.BytesIO(render_qr_png(link))).convert("RGB")

    # Telegram recompresses photos as JPEG; 320 px at quality 60 is a rougher
    # copy than a chat shows at full size.
    small = image.resize((320, 320))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=60)
    buffer.seek(0)

    decoded = zxingcpp.read_barcodes(image_module.open(buffer))
    assert [barcode.text for barcode in decoded] == [link]
