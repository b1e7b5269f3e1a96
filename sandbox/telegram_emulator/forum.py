"""Forum topics and group memberships of the emulated Telegram.

A forum is a supergroup with topics. As in Telegram, a topic's
``message_thread_id`` is the id of the service message that created it, and a
call into a deleted topic fails with "message thread not found".
"""

from dataclasses import dataclass, field
from typing import Any

# Statuses of a ChatMember. Source: core.telegram.org/bots/api#chatmember. The
# emulator does not model "restricted".
MEMBER_STATUSES = ("creator", "administrator", "member", "left", "kicked")

# Rights of a ChatMemberAdministrator that the emulator checks or reports.
# Source: core.telegram.org/bots/api#chatmemberadministrator.
ADMINISTRATOR_RIGHTS = (
    "can_manage_chat",
    "can_delete_messages",
    "can_manage_video_chats",
    "can_restrict_members",
    "can_promote_members",
    "can_change_info",
    "can_invite_users",
    "can_post_stories",
    "can_edit_stories",
    "can_delete_stories",
    "can_pin_messages",
    "can_manage_topics",
)

# Colour of a new topic's icon when createForumTopic names none: the first of
# the six colours that core.telegram.org/bots/api#createforumtopic lists.
DEFAULT_ICON_COLOR = 0x6FB9F0
ICON_COLORS = frozenset({0x6FB9F0, 0xFFD67E, 0xCB86DB, 0x8EEE98, 0xFF93B2, 0xFB6F5F})

# Topic name length. Source: core.telegram.org/bots/api#createforumtopic
# ("Topic name, 1-128 characters").
MAX_TOPIC_NAME_LENGTH = 128


@dataclass
class ForumTopic:
    """A topic of a forum supergroup."""

    message_thread_id: int
    name: str
    icon_color: int = DEFAULT_ICON_COLOR
    closed: bool = False
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        """Build the ForumTopic object of the Bot API."""
        return {
            "message_thread_id": self.message_thread_id,
            "name": self.name,
            "icon_color": self.icon_color,
        }


@dataclass
class MemberRecord:
    """A user's or the bot's status in a group, with administrator rights."""

    status: str
    rights: dict[str, bool] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        """Whether the member is the creator or an administrator."""
        return self.status in ("creator", "administrator")

    def can(self, right: str) -> bool:
        """Tell whether the member has ``right``; the creator has every right."""
        if self.status == "creator":
            return True
        return self.status == "administrator" and self.rights.get(right, False)

    def to_json(self, user: dict[str, Any]) -> dict[str, Any]:
        """Build the ChatMember object of the Bot API for ``user``."""
        data: dict[str, Any] = {"status": self.status, "user": dict(user)}
        if self.status == "creator":
            data["is_anonymous"] = False
        elif self.status == "administrator":
            data["can_be_edited"] = False
            data["is_anonymous"] = False
            for right in ADMINISTRATOR_RIGHTS:
                data[right] = self.rights.get(right, False)
        elif self.status == "kicked":
            data["until_date"] = 0
        return data
