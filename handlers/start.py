"""/start: open the journey from an invitation link, or without one.

``/start <token>`` comes from the deep link ``https://t.me/<bot>?start=<token>``
in the invitation. Without a token the client may type the name of the
municipality instead; after a confirmation the bot creates the case itself.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from redis.asyncio import Redis
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import BaseHandler, CallbackQueryHandler, CommandHandler, filters

from bot.i18n import translate
from bot.reminders import scheduler_of
from bot.services import get_services
from handlers.callback_data import (
    SCOPE_MUNICIPALITY,
    Action,
    decode,
    encode,
    scope_pattern,
)
from handlers.common import (
    Context,
    answer_query,
    chat_id_of,
    find_case,
    remove_keyboard,
    reply_language,
    send,
    send_old_button,
    send_step,
    take_chat_language,
)
from handlers.render import Reply, render_no_case
from journey import keys
from journey.gemeenten import NO_MATCH, MatchKind, OfficialListError, load_official_list
from journey.model import Case
from journey.steps import Step, TransitionRejected
from journey.store import InvitationInvalid

logger = logging.getLogger(__name__)

MAX_INVALID_INVITATIONS = 10
"""Invalid invitation tokens one chat may send per window. A token carries 128
random bits, so this only stops a script that floods the bot with guesses."""

INVALID_INVITATION_WINDOW_SECONDS = 3600

RATE_LIMIT_SCOPE = "start"

_REASON_KEYS = {
    "malformed": "start.malformed",
    "unknown": "start.unknown",
    "expired": "start.expired",
    "finished": "start.finished",
}


async def handle_start(update: Update, context: Context) -> None:
    """Handle /start with or without an invitation token."""
    chat_id = chat_id_of(update)
    if chat_id is None:
        return
    open_case = await find_case(update, context)
    token = context.args[0] if context.args else None

    if token is None:
        if open_case is None:
            language = await reply_language(update, context)
            await send(update, context, render_no_case(language))
        else:
            await _send_already_open(update, context, open_case)
        return

    store = get_services(context).store
    language = await reply_language(update, context, open_case)
    if await _invalid_invitations(store.redis, chat_id) >= MAX_INVALID_INVITATIONS:
        logger.warning("invitation attempts rate limited")
        text = translate("start.rate_limited", language)
        await send(update, context, Reply(text))
        return
    try:
        case = await store.resolve_invitation(token)
    except InvitationInvalid as error:
        logger.info("invitation rejected reason=%s", error.reason)
        await _count_invalid_invitation(store.redis, chat_id)
        notice = translate(_REASON_KEYS[error.reason], language)
        if open_case is None:
            await send(update, context, Reply(notice))
        else:
            await send_step(update, context, open_case, notice=notice)
        return

    if open_case is not None:
        # One chat follows one case; a second invitation waits until /stop.
        await _send_already_open(update, context, open_case)
        return
    if case.step is Step.INVITED:
        await _link(update, context, case, chat_id)
        return
    if case.chat_id == chat_id:
        await send_step(update, context, case)
        return
    logger.info("invitation used in another chat case=%s", case.ref)
    await send(update, context, Reply(translate("start.other_chat", case.language)))


async def handle_municipality_name(update: Update, context: Context) -> None:
    """Match a typed municipality name and ask the client to confirm or choose."""
    message = update.effective_message
    if message is None or not message.text:
        return
    language = await reply_language(update, context)
    registry = get_services(context).registry
    candidates = match_municipalities(context, message.text)

    if not candidates:
        await send(
            update, context, Reply(translate("municipality.not_found", language))
        )
        return

    if len(candidates) > 1:
        rows = [
            [_municipality_button(code, name, Action.YES)] for code, name in candidates
        ]
        rows.append(
            [
                _municipality_button(
                    "none", translate("button.none_of_these", language), Action.NO
                )
            ]
        )
        text = translate("municipality.choose", language)
        await send(update, context, Reply(text, InlineKeyboardMarkup(rows)))
        return

    code, name = candidates[0]
    municipality = registry.get(code)
    if municipality is None or not municipality.participates:
        text = translate("municipality.not_participating", language, name=name)
        await send(update, context, Reply(text))
        return

    markup = InlineKeyboardMarkup(
        [
            [
                _municipality_button(
                    code, translate("button.municipality_yes", language), Action.YES
                ),
                _municipality_button(
                    code, translate("button.municipality_no", language), Action.NO
                ),
            ]
        ]
    )
    text = translate("municipality.confirm", language, name=name)
    await send(update, context, Reply(text, markup))


async def handle_municipality_button(update: Update, context: Context) -> None:
    """Create the case for the confirmed or chosen municipality, or ask again."""
    query = update.callback_query
    assert query is not None
    await answer_query(query)
    chat_id = chat_id_of(update)
    if chat_id is None:
        return

    open_case = await find_case(update, context)
    if open_case is not None:
        await send_old_button(update, context, open_case)
        return
    await remove_keyboard(update)
    language = await reply_language(update, context)

    services = get_services(context)
    data = decode(query.data)
    if data is None or data.action is not Action.YES:
        # Nee, or data that no button of the bot carries: ask for the name.
        await send(update, context, Reply(translate("municipality.retry", language)))
        return
    municipality = services.registry.get(data.tag)
    if municipality is None or not municipality.participates:
        # A choice from a list of several names may be one that does not take part.
        name = _official_name(data.tag) or data.tag
        text = translate("municipality.not_participating", language, name=name)
        await send(update, context, Reply(text))
        return

    # NOTE: two taps processed at the same moment can both get here and create
    # two cases. The chat then follows the second one, and the first expires.
    language = await take_chat_language(context, chat_id) or language
    case, _token = await services.store.create(
        municipality.code, language=language, step=Step.INFO, chat_id=chat_id
    )
    logger.info("case started without invitation case=%s", case.ref)
    # The case starts its own reminder series, as an invitation's case does.
    scheduler = scheduler_of(context.bot_data)
    if scheduler is not None:
        await scheduler.schedule_case(case.case_id, case.created_at)
    await send_step(update, context, case)


def match_municipalities(context: Context, text: str) -> list[tuple[str, str]]:
    """Return the municipalities (code, name) the client may mean by ``text``.

    The official CBS list matches aliases ("Den Bosch") and small typos. The
    registry's own names are the fallback, for a registry entry that the
    official list lacks. An empty list means that nothing matched.
    """
    registry = get_services(context).registry
    try:
        result = load_official_list().match(text)
    except OfficialListError as error:
        logger.warning("official municipality list not loaded error=%s", error)
        result = NO_MATCH

    if result.kind is not MatchKind.NONE:
        return [(official.code, official.name) for official in result.candidates]
    registered = registry.find_by_name(text)
    if registered is not None:
        return [(registered.code, registered.name)]
    return []


async def _link(update: Update, context: Context, case: Case, chat_id: int) -> None:
    store = get_services(context).store
    try:
        linked = await store.link_chat(case, chat_id)
    except TransitionRejected:
        # Two /start updates with the same link: the other one linked it.
        current = await store.get(case.case_id)
        if current.chat_id == chat_id:
            await send_step(update, context, current)
        else:
            await send(
                update, context, Reply(translate("start.other_chat", case.language))
            )
        return
    logger.info("chat linked case=%s", linked.ref)
    # A language chosen with /taal before the link wins over the website's.
    chosen = await take_chat_language(context, chat_id)
    if chosen is not None and chosen != linked.language:
        linked = await store.update(linked.case_id, {"language": chosen})
    await send_step(update, context, linked)


def _rate_limit_key(chat_id: int) -> str:
    # The key names a hash, because a chat id identifies a person.
    subject = hashlib.sha256(str(chat_id).encode("ascii")).hexdigest()[:24]
    return keys.rate_limit(RATE_LIMIT_SCOPE, subject)


async def _invalid_invitations(redis: Redis, chat_id: int) -> int:
    count = await redis.get(_rate_limit_key(chat_id))
    return int(count) if count else 0


async def _count_invalid_invitation(redis: Redis, chat_id: int) -> None:
    # NOTE: pairing_service.ratelimit has the same fixed-window counter; it
    # belongs in journey/ so that both processes share one implementation.
    key = _rate_limit_key(chat_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, INVALID_INVITATION_WINDOW_SECONDS, nx=True)
        await pipe.execute()


async def _send_already_open(update: Update, context: Context, case: Case) -> None:
    notice = translate("start.already_open", case.language)
    await send_step(update, context, case, notice=notice)


def _official_name(code: str) -> str | None:
    try:
        official = load_official_list().get(code)
    except OfficialListError:
        return None
    return official.name if official is not None else None


def _municipality_button(code: str, label: str, action: Action) -> InlineKeyboardButton:
    return InlineKeyboardButton(
        label, callback_data=encode(SCOPE_MUNICIPALITY, code, action)
    )


def build_handlers() -> list[BaseHandler[Update, Context, Any]]:
    """Return the /start handler and the municipality confirmation handler."""
    return [
        CommandHandler(
            "start",
            handle_start,
            filters=filters.ChatType.PRIVATE & filters.UpdateType.MESSAGE,
        ),
        CallbackQueryHandler(
            handle_municipality_button, pattern=scope_pattern(SCOPE_MUNICIPALITY)
        ),
    ]
