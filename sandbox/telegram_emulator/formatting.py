"""Parse message formatting (HTML, MarkdownV2, Markdown) into text and entities.

The parsers follow tdlib, which the Bot API server uses: they return the plain
text with MessageEntity dicts whose offsets and lengths count UTF-16 code units,
and they fail with tdlib's messages (``Unsupported start tag "br" at byte offset
5``), which the Bot API prefixes with ``can't parse entities:``.

Tag, delimiter and escape handling follow tdlib's parsers. Rare corners are
simplified: a ``tg://user`` link stays a text_link instead of a text_mention, and
URLs are checked by a small rule, not by tdlib's URL parser.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import bad_request

# Whitespace that Telegram trims from both ends of a text after parsing.
_TRIMMED_WHITESPACE = " \t\n\r\x0b\x0c"

# HTML tags that Telegram accepts, with the entity type each one produces. Source:
# core.telegram.org/bots/api#html-style.
_HTML_TAG_TYPES = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}

# The named HTML entities that tdlib decodes; any other ``&name;`` stays as text.
_HTML_NAMED_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}

# Characters that MarkdownV2 reserves outside code. Source:
# core.telegram.org/bots/api#markdownv2-style.
_MARKDOWN_V2_RESERVED = frozenset("_*[]()~`>#+-=|{}.!")
_MARKDOWN_V2_TOGGLES = {"*": "bold", "~": "strikethrough"}
_LINK_KINDS = ("text_link", "custom_emoji")

# Entity types that a bot may set through the ``entities`` parameter. The types that
# Telegram detects itself (mention, url, ...) are dropped, as tdlib drops them.
_SETTABLE_ENTITY_TYPES = frozenset(
    {
        "bold",
        "italic",
        "underline",
        "strikethrough",
        "spoiler",
        "code",
        "pre",
        "text_link",
        "text_mention",
        "custom_emoji",
        "blockquote",
        "expandable_blockquote",
    }
)
_DETECTED_ENTITY_TYPES = frozenset(
    {
        "mention",
        "hashtag",
        "cashtag",
        "bot_command",
        "url",
        "email",
        "phone_number",
        "bank_card_number",
    }
)

# Names that tdlib uses for entities in "Can't find end of ... entity" errors.
_MARKDOWN_ENTITY_NAMES = {
    "italic": "Italic",
    "bold": "Bold",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "code": "Code",
    "pre": "Pre",
    "text_link": "TextUrl",
    "custom_emoji": "CustomEmoji",
}

_LINK_SCHEMES = frozenset({"http", "https", "tg", "ton"})
_SCHEME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# Host names may contain letters of any script (IDN), but no spaces or URL delimiters.
_HOSTNAME_PATTERN = re.compile(r"[^\s<>\"{}|\\^`:/?#\[\]@]+")


class EntityParseError(ValueError):
    """Formatting that Telegram rejects; the message is tdlib's."""


@dataclass(frozen=True)
class FormattedText:
    """Plain text with its MessageEntity dicts, as a Message carries them."""

    text: str
    entities: tuple[dict[str, Any], ...] = ()

    def entity_list(self) -> list[dict[str, Any]]:
        """Return copies of the entities, ready for a Message JSON."""
        return [dict(entity) for entity in self.entities]


def utf16_length(text: str) -> int:
    """Count the UTF-16 code units of ``text``, the unit of entity offsets."""
    return len(text.encode("utf-16-le")) // 2


def _at(source: str, index: int) -> str:
    """Name a position as tdlib's errors do: by its offset in UTF-8 bytes."""
    return f"at byte offset {len(source[:index].encode('utf-8'))}"


@dataclass
class _Open:
    """An entity whose end has not been parsed yet."""

    kind: str
    offset: int
    source_index: int
    attributes: dict[str, str] = field(default_factory=dict)
    tag: str = ""


class _TextBuilder:
    """Output text that tracks its length in UTF-16 units as it grows."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.entities: list[dict[str, Any]] = []

    def append(self, text: str) -> None:
        self.parts.append(text)
        self.length += utf16_length(text)

    def text_since(self, offset: int) -> str:
        # Only used for link texts, which are short, so joining is cheap enough.
        text = "".join(self.parts)
        encoded = text.encode("utf-16-le")
        return encoded[offset * 2 :].decode("utf-16-le")

    def add_entity(self, kind: str, offset: int, **extra: Any) -> None:
        length = self.length - offset
        if length <= 0:
            return
        entity: dict[str, Any] = {"type": kind, "offset": offset, "length": length}
        entity.update(extra)
        self.entities.append(entity)

    def result(self) -> FormattedText:
        entities = sorted(
            self.entities, key=lambda entity: (entity["offset"], -entity["length"])
        )
        return FormattedText("".join(self.parts), tuple(entities))


def _is_valid_link(url: str) -> bool:
    return link_problem(url) is None


def link_problem(url: str) -> str | None:
    """Return tdlib's reason why ``url`` is not a valid link, or None when it is valid.

    Telegram accepts http, https, tg and ton links, and a bare host, which it reads
    as http. The host of an http(s) link must contain a dot, so Telegram rejects
    ``http://localhost``.
    """
    stripped = url.strip()
    if not stripped:
        return "Wrong HTTP URL"

    scheme, separator, rest = stripped.partition(":")
    has_scheme = bool(separator) and _SCHEME_PATTERN.fullmatch(scheme) is not None
    if has_scheme and rest[:1].isdigit():
        # "example.com:8080/path" is a host with a port, not a scheme.
        has_scheme = False
    if has_scheme:
        scheme = scheme.lower()
        if scheme not in _LINK_SCHEMES:
            return "Unsupported URL protocol"
        if scheme in ("tg", "ton"):
            return None if rest.strip("/") else "Wrong HTTP URL"
        if not rest.startswith("//"):
            return "Wrong HTTP URL"
        rest = rest[2:]
    else:
        rest = stripped

    host = re.split(r"[/?#]", rest, maxsplit=1)[0]
    host = host.rsplit("@", 1)[-1]
    if host.startswith("["):
        return (
            None
            if re.fullmatch(r"\[[0-9A-Fa-f:.]+\](:\d{1,5})?", host)
            else "Wrong HTTP URL"
        )
    port_match = re.fullmatch(r"(.*):(\d{1,5})", host)
    hostname = port_match.group(1) if port_match else host
    if not _HOSTNAME_PATTERN.fullmatch(hostname) or "." not in hostname.strip("."):
        return "Wrong HTTP URL"
    return None


# HTML


def _decode_html_entity(source: str, index: int) -> tuple[str, int] | None:
    """Decode the entity that starts with ``&`` at ``index``: (text, length) or None."""
    end = source.find(";", index + 1, index + 12)
    if end < 0:
        return None
    name = source[index + 1 : end]
    if name in _HTML_NAMED_ENTITIES:
        return _HTML_NAMED_ENTITIES[name], end - index + 1
    if name.startswith("#"):
        digits = name[1:]
        try:
            code = int(digits[1:], 16) if digits[:1] in ("x", "X") else int(digits, 10)
        except ValueError:
            return None
        if 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF:
            return chr(code), end - index + 1
    return None


def _unescape_html(text: str) -> str:
    parts: list[str] = []
    index = 0
    while index < len(text):
        if text[index] == "&":
            decoded = _decode_html_entity(text, index)
            if decoded is not None:
                parts.append(decoded[0])
                index += decoded[1]
                continue
        parts.append(text[index])
        index += 1
    return "".join(parts)


def _skip_spaces(source: str, index: int) -> int:
    while index < len(source) and source[index] in " \t\r\n":
        index += 1
    return index


def _parse_html_attributes(
    source: str, index: int, tag: str, tag_start: int
) -> tuple[dict[str, str], int]:
    """Read the attributes of a start tag up to its ``>``.

    Returns the attributes and the index after the ``>``.
    """
    attributes: dict[str, str] = {}
    while True:
        index = _skip_spaces(source, index)
        if index >= len(source):
            raise EntityParseError(f"Unclosed start tag {_at(source, tag_start)}")
        if source[index] == ">":
            return attributes, index + 1
        if source[index] == "/" and source.startswith("/>", index):
            # Telegram has no self-closing tags: tdlib reads "/" as an attribute
            # without a name.
            raise EntityParseError(
                f'Empty attribute name in the tag "{tag}" {_at(source, index)}'
            )

        name_start = index
        while index < len(source) and source[index] not in " \t\r\n=>":
            index += 1
        name = source[name_start:index].lower()
        if not name:
            raise EntityParseError(
                f'Empty attribute name in the tag "{tag}" {_at(source, index)}'
            )

        index = _skip_spaces(source, index)
        if index >= len(source) or source[index] != "=":
            attributes[name] = ""
            continue
        index = _skip_spaces(source, index + 1)
        if index >= len(source):
            raise EntityParseError(f"Unclosed start tag {_at(source, tag_start)}")
        quote = source[index]
        if quote in "\"'":
            end = source.find(quote, index + 1)
            if end < 0:
                raise EntityParseError(f"Unclosed start tag {_at(source, tag_start)}")
            attributes[name] = _unescape_html(source[index + 1 : end])
            index = end + 1
        else:
            value_start = index
            while index < len(source) and source[index] not in " \t\r\n>":
                index += 1
            attributes[name] = _unescape_html(source[value_start:index])


def _close_html_tag(output: _TextBuilder, opened: _Open, parent: _Open | None) -> None:
    kind = opened.kind
    if kind == "text_link":
        url = opened.attributes.get("href", "")
        if url and _is_valid_link(url):
            output.add_entity("text_link", opened.offset, url=url.strip())
        return
    if kind == "custom_emoji":
        emoji_id = opened.attributes.get("emoji-id", "")
        if emoji_id.isdigit():
            output.add_entity("custom_emoji", opened.offset, custom_emoji_id=emoji_id)
        return
    if kind == "code" and parent is not None and parent.kind == "pre":
        language = opened.attributes.get("class", "")
        if language.startswith("language-") and len(language) > len("language-"):
            # <pre><code class="language-x"> is one pre entity with a language.
            parent.attributes["language"] = language[len("language-") :]
            return
    if kind == "pre" and opened.attributes.get("language"):
        output.add_entity("pre", opened.offset, language=opened.attributes["language"])
        return
    if kind == "blockquote" and "expandable" in opened.attributes:
        output.add_entity("expandable_blockquote", opened.offset)
        return
    output.add_entity(kind, opened.offset)


def parse_html(source: str) -> FormattedText:
    """Parse Telegram's HTML style into text and entities.

    Raises:
        EntityParseError: for an unsupported or unbalanced tag, with tdlib's message.
    """
    output = _TextBuilder()
    stack: list[_Open] = []
    index = 0
    while index < len(source):
        char = source[index]
        if char == "&":
            decoded = _decode_html_entity(source, index)
            if decoded is None:
                output.append("&")
                index += 1
            else:
                output.append(decoded[0])
                index += decoded[1]
            continue
        if char != "<":
            output.append(char)
            index += 1
            continue

        tag_start = index
        index += 1
        if index < len(source) and source[index] == "/":
            name_start = index + 1
            index = name_start
            while index < len(source) and source[index] not in " \t\r\n>":
                index += 1
            name = source[name_start:index].lower()
            index = _skip_spaces(source, index)
            if index >= len(source) or source[index] != ">":
                raise EntityParseError(f"Unclosed end tag {_at(source, tag_start)}")
            index += 1
            if not stack:
                raise EntityParseError(f"Unexpected end tag {_at(source, tag_start)}")
            opened = stack.pop()
            if name != opened.tag:
                raise EntityParseError(
                    f"Unmatched end tag {_at(source, tag_start)}, "
                    f'expected "</{opened.tag}>", found "</{name}>"'
                )
            _close_html_tag(output, opened, stack[-1] if stack else None)
            continue

        name_start = index
        while (
            index < len(source)
            and source[index].isascii()
            and (source[index].isalnum() or source[index] == "-")
        ):
            index += 1
        tag = source[name_start:index].lower()
        if tag not in _HTML_TAG_TYPES:
            raise EntityParseError(
                f'Unsupported start tag "{tag}" {_at(source, tag_start)}'
            )
        attributes, index = _parse_html_attributes(source, index, tag, tag_start)
        if tag == "span" and attributes.get("class") != "tg-spoiler":
            raise EntityParseError(
                f'Tag "span" must have class "tg-spoiler" {_at(source, tag_start)}'
            )
        stack.append(
            _Open(_HTML_TAG_TYPES[tag], output.length, tag_start, attributes, tag)
        )

    if stack:
        raise EntityParseError(
            f'Can\'t find end tag corresponding to start tag "{stack[-1].tag}"'
        )
    return output.result()


# MarkdownV2


def _at_line_start(source: str, index: int) -> bool:
    return index == 0 or source[index - 1] == "\n"


def _read_link_url(source: str, index: int) -> tuple[str, int]:
    """Read the ``(url)`` whose ``(`` is at ``index``.

    Returns the URL and the index after the ``)``.
    """
    url_start = index + 1
    parts: list[str] = []
    position = url_start
    while position < len(source):
        char = source[position]
        if char == "\\" and position + 1 < len(source):
            parts.append(source[position + 1])
            position += 2
            continue
        if char == ")":
            return "".join(parts), position + 1
        parts.append(char)
        position += 1
    raise EntityParseError(f"Can't find end of a URL {_at(source, url_start)}")


class _MarkdownV2Parser:
    """One pass over a MarkdownV2 text, keeping the stack of open entities."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.output = _TextBuilder()
        self.stack: list[_Open] = []
        self.quote: _Open | None = None
        self.quote_expandable = False
        self.index = 0

    def parse(self) -> FormattedText:
        source = self.source
        while self.index < len(source):
            char = source[self.index]
            if (
                char == "\\"
                and self.index + 1 < len(source)
                and 0 < ord(source[self.index + 1]) <= 126
            ):
                self.output.append(source[self.index + 1])
                self.index += 2
                continue
            top = self.stack[-1] if self.stack else None
            if top is not None and top.kind in ("code", "pre"):
                self._inside_code(top, char)
                continue
            if self._at_quote_start():
                continue
            if char == "\n":
                self._end_of_line()
                continue
            self._markup(char, top)

        if self.stack:
            opened = self.stack[-1]
            name = _MARKDOWN_ENTITY_NAMES.get(opened.kind, opened.kind)
            if opened.kind == "pre" and opened.attributes.get("language"):
                name = "PreCode"
            raise EntityParseError(
                f"Can't find end of {name} entity {_at(source, opened.source_index)}"
            )
        self._close_quote()
        return self.output.result()

    def _inside_code(self, top: _Open, char: str) -> None:
        source = self.source
        if top.kind == "pre" and source.startswith("```", self.index):
            self.stack.pop()
            language = top.attributes.get("language")
            extra = {"language": language} if language else {}
            self.output.add_entity("pre", top.offset, **extra)
            self.index += 3
            return
        if top.kind == "code" and char == "`":
            self.stack.pop()
            self.output.add_entity("code", top.offset)
            self.index += 1
            return
        self.output.append(char)
        self.index += 1

    def _at_quote_start(self) -> bool:
        source = self.source
        if not _at_line_start(source, self.index):
            return False
        if source.startswith("**>", self.index):
            self._open_quote()
            self.index += 3
            return True
        if source[self.index] == ">":
            self._open_quote()
            self.index += 1
            return True
        return False

    def _open_quote(self) -> None:
        if self.quote is None:
            self.quote = _Open("blockquote", self.output.length, self.index)
            self.quote_expandable = False

    def _close_quote(self) -> None:
        if self.quote is None:
            return
        kind = "expandable_blockquote" if self.quote_expandable else "blockquote"
        self.output.add_entity(kind, self.quote.offset)
        self.quote = None

    def _end_of_line(self) -> None:
        self.output.append("\n")
        self.index += 1
        next_is_quote = self.index < len(self.source) and (
            self.source[self.index] == ">" or self.source.startswith("**>", self.index)
        )
        if self.quote is not None and (not next_is_quote or self.quote_expandable):
            self._close_quote()

    def _markup(self, char: str, top: _Open | None) -> None:
        source = self.source
        if char == "|" and source.startswith("||", self.index):
            self._double_pipe(top)
            return
        if char == "_":
            self._underscore(top)
            return
        if char in _MARKDOWN_V2_TOGGLES:
            self._toggle(_MARKDOWN_V2_TOGGLES[char], 1, top)
            return
        if char == "`":
            self._open_code()
            return

        if char == "[" or (char == "!" and source.startswith("![", self.index)):
            kind = "text_link" if char == "[" else "custom_emoji"
            self.stack.append(_Open(kind, self.output.length, self.index))
            self.index += 1 if char == "[" else 2
            return
        if char == "]" and top is not None and top.kind in _LINK_KINDS:
            self._close_link(top)
            return

        if char in _MARKDOWN_V2_RESERVED:
            raise EntityParseError(
                f"Character '{char}' is reserved and must be escaped "
                "with the preceding '\\'"
            )
        self.output.append(char)
        self.index += 1

    def _double_pipe(self, top: _Open | None) -> None:
        source = self.source
        line_ends = self.index + 2 >= len(source) or source[self.index + 2] == "\n"
        in_spoiler = top is not None and top.kind == "spoiler"
        if self.quote is not None and line_ends and not in_spoiler:
            # "||" at the end of a quoted line makes the quote expandable.
            self.quote_expandable = True
            self.index += 2
            return
        self._toggle("spoiler", 2, top)

    def _underscore(self, top: _Open | None) -> None:
        # "__" is underline and "_" italic. An open entity decides which one a
        # run of underscores closes first, so "___" can end both.
        doubled = self.source.startswith("__", self.index)
        top_kind = top.kind if top is not None else None
        if top_kind == "underline" and doubled:
            self._toggle("underline", 2, top)
        elif top_kind == "italic":
            self._toggle("italic", 1, top)
        elif doubled:
            self._toggle("underline", 2, top)
        else:
            self._toggle("italic", 1, top)

    def _toggle(self, kind: str, width: int, top: _Open | None) -> None:
        if top is not None and top.kind == kind:
            self.stack.pop()
            self.output.add_entity(kind, top.offset)
        else:
            self.stack.append(_Open(kind, self.output.length, self.index))
        self.index += width

    def _open_code(self) -> None:
        source = self.source
        start = self.index
        if not source.startswith("```", start):
            self.stack.append(_Open("code", self.output.length, start))
            self.index += 1
            return

        self.index += 3
        opened = _Open("pre", self.output.length, start)
        line_end = source.find("\n", self.index)
        closing = source.find("```", self.index)
        if line_end >= 0 and (closing < 0 or line_end < closing):
            language = source[self.index : line_end]
            if language and not any(space in language for space in " \t\r"):
                opened.attributes["language"] = language
            self.index = line_end + 1
        self.stack.append(opened)
        # The language line is not part of the text, so the entity starts after it.
        opened.offset = self.output.length

    def _close_link(self, top: _Open) -> None:
        self.stack.pop()
        source = self.source
        self.index += 1
        link_text = self.output.text_since(top.offset)
        if self.index < len(source) and source[self.index] == "(":
            url, self.index = _read_link_url(source, self.index)
        else:
            url = link_text
        if top.kind == "custom_emoji":
            match = re.match(r"^tg://emoji\?id=(\d+)$", url.strip(), re.IGNORECASE)
            if match is None:
                raise EntityParseError(
                    "Custom emoji entity must contain a tg://emoji URL"
                )
            self.output.add_entity(
                "custom_emoji", top.offset, custom_emoji_id=match.group(1)
            )
            return
        if _is_valid_link(url):
            self.output.add_entity("text_link", top.offset, url=url.strip())


def parse_markdown_v2(source: str) -> FormattedText:
    """Parse Telegram's MarkdownV2 style into text and entities.

    Raises:
        EntityParseError: for an unescaped reserved character or an unclosed entity,
            with tdlib's message.
    """
    return _MarkdownV2Parser(source).parse()


# Legacy Markdown


def parse_markdown(source: str) -> FormattedText:
    """Parse Telegram's legacy Markdown style into text and entities.

    Legacy Markdown has no nesting: ``*bold*``, ``_italic_``, ```code```, fenced
    pre blocks and ``[text](url)``. A backslash escapes only ``_ * ` [``.

    Raises:
        EntityParseError: for an entity without its end, with tdlib's message.
    """
    output = _TextBuilder()
    index = 0
    while index < len(source):
        char = source[index]
        if char == "\\" and index + 1 < len(source) and source[index + 1] in "_*`[":
            output.append(source[index + 1])
            index += 2
            continue
        if char not in "_*`[":
            output.append(char)
            index += 1
            continue

        start = index
        if char == "`" and source.startswith("```", index):
            end = source.find("```", index + 3)
            if end < 0:
                raise EntityParseError(
                    f"Can't find end of the entity starting {_at(source, start)}"
                )
            offset = output.length
            output.append(source[index + 3 : end])
            output.add_entity("pre", offset)
            index = end + 3
            continue
        end_char = "]" if char == "[" else char
        end = source.find(end_char, index + 1)
        if end < 0:
            raise EntityParseError(
                f"Can't find end of the entity starting {_at(source, start)}"
            )
        offset = output.length
        output.append(source[index + 1 : end])
        index = end + 1
        if char == "[":
            url = ""
            if index < len(source) and source[index] == "(":
                url_end = source.find(")", index)
                if url_end < 0:
                    raise EntityParseError(
                        f"Can't find end of the entity starting {_at(source, start)}"
                    )
                url = source[index + 1 : url_end]
                index = url_end + 1
            if url and _is_valid_link(url):
                output.add_entity("text_link", offset, url=url.strip())
            continue
        kinds = {"*": "bold", "_": "italic", "`": "code"}
        output.add_entity(kinds[char], offset)
    return output.result()


# Explicit entities


def _entities_from_json(text: str, value: Any) -> FormattedText:
    """Check the ``entities`` parameter against ``text``, as tdlib does.

    Entities of types that Telegram detects by itself are dropped, and entities that
    reach past the text are cut at its end.
    """
    if not isinstance(value, list):
        return FormattedText(text)

    text_length = utf16_length(text)
    entities: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict):
            raise bad_request("can't parse MessageEntity: expected an Object")
        kind = item.get("type")
        if not isinstance(kind, str) or not kind:
            raise bad_request("can't parse MessageEntity: Type is not specified")
        if kind in _DETECTED_ENTITY_TYPES:
            continue
        if kind not in _SETTABLE_ENTITY_TYPES:
            raise bad_request("can't parse MessageEntity: Unsupported type specified")
        for field_name in ("offset", "length"):
            if field_name not in item:
                raise bad_request(
                    f"can't parse MessageEntity: Can't find field \"{field_name}\""
                )
            if not isinstance(item[field_name], int) or isinstance(
                item[field_name], bool
            ):
                raise bad_request(
                    "can't parse MessageEntity: "
                    f'Field "{field_name}" must be a valid Number'
                )
        if kind == "text_link" and not isinstance(item.get("url"), str):
            raise bad_request(
                'can\'t parse MessageEntity: Field "url" must be of type String'
            )

        start = max(0, item["offset"])
        end = min(text_length, item["offset"] + item["length"])
        if end <= start:
            continue
        entity = dict(item)
        entity["offset"] = start
        entity["length"] = end - start
        entities.append(entity)
    entities.sort(key=lambda entity: (entity["offset"], -entity["length"]))
    return FormattedText(text, tuple(entities))


def _trim(formatted: FormattedText) -> FormattedText:
    """Strip whitespace from both ends and shift the entities, as Telegram does."""
    text = formatted.text
    stripped = text.strip(_TRIMMED_WHITESPACE)
    if stripped == text:
        return formatted

    left_cut = utf16_length(text[: len(text) - len(text.lstrip(_TRIMMED_WHITESPACE))])
    new_length = utf16_length(stripped)
    entities: list[dict[str, Any]] = []
    for entity in formatted.entities:
        start = max(0, entity["offset"] - left_cut)
        end = min(new_length, entity["offset"] + entity["length"] - left_cut)
        if end > start:
            moved = dict(entity)
            moved["offset"] = start
            moved["length"] = end - start
            entities.append(moved)
    return FormattedText(stripped, tuple(entities))


def format_text(text: str, parse_mode: str | None, entities: Any) -> FormattedText:
    """Turn a text and its parse_mode or entities into what the Message will carry.

    ``parse_mode`` wins over ``entities``, as in tdlib. The result is trimmed of
    surrounding whitespace.

    Raises:
        BotApiError: 400 for an unknown parse_mode or formatting that Telegram
            rejects.
    """
    mode = (parse_mode or "").strip().lower()
    if text and mode and mode != "none":
        parsers = {
            "html": parse_html,
            "markdownv2": parse_markdown_v2,
            "markdown": parse_markdown,
        }
        parser = parsers.get(mode)
        if parser is None:
            raise bad_request("unsupported parse_mode")
        try:
            formatted = parser(text)
        except EntityParseError as error:
            raise bad_request(f"can't parse entities: {error}") from None
    else:
        formatted = _entities_from_json(text, entities)
    return _trim(formatted)
