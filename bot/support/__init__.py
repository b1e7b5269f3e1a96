"""Support handover: a helpdesk agent takes over a stuck conversation.

Each case that needs help gets a topic in the support group (a Telegram
supergroup with topics). While an agent has the conversation, the client's
messages are copied into the topic and the agent's messages back to the
client, and the bot's own replies and reminders stop. ``desk`` contains the
logic, ``handlers.support`` the PTB handlers.
"""
