"""Limits that Telegram applies to bots, as the emulator enforces them.

Each constant names its source. Where Telegram does not document a value, the
comment states this and gives the value's origin.
"""

# Text of a message, counted in Unicode code points after entity parsing.
# Source: core.telegram.org/bots/api#sendmessage ("1-4096 characters after entities
# parsing"). tdlib counts code points (utf8_length) when it checks this limit.
MAX_MESSAGE_TEXT_LENGTH = 4096

# Caption of a photo after entity parsing. Source: core.telegram.org/bots/api#sendphoto
# ("0-1024 characters after entities parsing").
MAX_CAPTION_LENGTH = 1024

# Data sent back in a callback query.
# Source: core.telegram.org/bots/api#inlinekeyboardbutton ("1-64 bytes").
MAX_CALLBACK_DATA_BYTES = 64

# Buttons in one inline keyboard and in one row of it. Not in the Bot API docs:
# the values are those of python-telegram-bot's InlineKeyboardMarkupLimit, which marks
# them as undocumented.
MAX_INLINE_KEYBOARD_BUTTONS = 100
MAX_INLINE_KEYBOARD_ROW_BUTTONS = 8

# Notification text of answerCallbackQuery. Source:
# core.telegram.org/bots/api#answercallbackquery ("0-200 characters").
MAX_CALLBACK_ANSWER_TEXT_LENGTH = 200

# Seconds within which a callback query must be answered.
# NOTE: Telegram documents no number. 15 s is an estimate from bots that observe
# "query is too old" errors after about that time.
CALLBACK_QUERY_ANSWER_TIMEOUT = 15.0

# Text of a copy_text button. Source: core.telegram.org/bots/api#copytextbutton
# ("1-256 characters").
MAX_COPY_TEXT_LENGTH = 256

# Bot commands. Source: core.telegram.org/bots/api#botcommand ("1-32 characters. Can
# contain only lowercase English letters, digits and underscores", description
# "1-256 characters") and #setmycommands ("At most 100 commands can be specified").
MAX_COMMAND_LENGTH = 32
MAX_COMMAND_DESCRIPTION_LENGTH = 256
MAX_COMMANDS = 100

# getUpdates. Source: core.telegram.org/bots/api#getupdates ("limit ... Values between
# 1-100 are accepted. Defaults to 100").
MAX_GET_UPDATES_LIMIT = 100

# Update types delivered when allowed_updates is not given. Source:
# core.telegram.org/bots/api#getupdates ("all update types except chat_member,
# message_reaction, and message_reaction_count").
OPT_IN_UPDATE_TYPES = frozenset(
    {"chat_member", "message_reaction", "message_reaction_count"}
)

# setWebhook. Source: core.telegram.org/bots/api#setwebhook (secret_token "1-256
# characters. Only characters A-Z, a-z, 0-9, _ and - are allowed"; max_connections
# "1-100. Defaults to 40").
MAX_WEBHOOK_SECRET_TOKEN_LENGTH = 256
MIN_WEBHOOK_CONNECTIONS = 1
MAX_WEBHOOK_CONNECTIONS = 100
DEFAULT_WEBHOOK_CONNECTIONS = 40

# Photo uploads. Source: core.telegram.org/bots/api#sendphoto ("The photo must be at
# most 10 MB in size. The photo's width and height must not exceed 10000 in total.
# Width and height ratio must be at most 20").
MAX_PHOTO_BYTES = 10 * 1024 * 1024
MAX_PHOTO_WIDTH_PLUS_HEIGHT = 10000
MAX_PHOTO_ASPECT_RATIO = 20

# Other uploads through multipart/form-data.
# Source: core.telegram.org/bots/api#sending-files ("50 MB max size for other files").
MAX_UPLOAD_BYTES = 50 * 1024 * 1024

# Files a bot may download with getFile. Source: core.telegram.org/bots/api#getfile
# ("bots can download files of up to 20MB in size").
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024

# Seconds after which a message can no longer be deleted. Source:
# core.telegram.org/bots/api#deletemessage ("A message can only be deleted if it was
# sent less than 48 hours ago").
MESSAGE_DELETE_WINDOW = 48 * 3600.0

# Chat actions. Source: core.telegram.org/bots/api#sendchataction. The legacy names
# record_audio and upload_audio are still accepted by the Bot API server (tdlib's
# Client.cpp maps them to the voice actions).
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "record_audio",
        "upload_audio",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

# Rate limits.
# Source: core.telegram.org/bots/faq#my-bot-is-hitting-limits-how-do-i-avoid-this
# ("avoid sending more than one message per second" in a single chat, "not be able to
# send more than 20 messages per minute to the same group", "not allow more than 30
# messages per second or so" for bulk notifications).
# NOTE: the FAQ gives no burst sizes. The private-chat burst of 5 is an estimate of
# the "short bursts" that the FAQ tolerates.
GLOBAL_MESSAGES_PER_SECOND = 30.0
GLOBAL_BURST = 30
PRIVATE_CHAT_MESSAGES_PER_SECOND = 1.0
PRIVATE_CHAT_BURST = 5
GROUP_MESSAGES_PER_MINUTE = 20.0
GROUP_BURST = 20
