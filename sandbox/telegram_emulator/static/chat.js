// Chat page of the Telegram emulator: plays one user against the bot through the
// testing API and shows the bot's messages as they arrive (long poll on events).
"use strict";

// Seconds that one events request waits on the server for something new.
const EVENTS_WAIT_SECONDS = 25;
// Milliseconds before the page retries a failed events request.
const RETRY_DELAY_MS = 2000;
// Location that "Send location" sends: Amsterdam Centraal.
const DEFAULT_LOCATION = { latitude: 52.3791, longitude: 4.9003 };
const DEFAULT_PHONE_NUMBER = "+31612345678";

const ENTITY_TAGS = {
  bold: "strong",
  italic: "em",
  underline: "u",
  strikethrough: "s",
  code: "code",
  pre: "pre",
  spoiler: "span",
  blockquote: "blockquote",
  expandable_blockquote: "blockquote",
};

const page = {
  userId: null,
  firstName: "",
  languageCode: "nl",
  blocked: false,
  lastSeq: 0,
  // Raised on every "Open chat", so the long poll of the previous chat stops.
  generation: 0,
};

function byId(id) {
  return document.getElementById(id);
}

function setStatus(text) {
  byId("status").textContent = text;
}

function pause(milliseconds) {
  return new Promise((resolve) => setTimeout(resolve, milliseconds));
}

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) {
    throw new Error(data.error || `HTTP ${response.status}`);
  }
  return data;
}

function isSafeLink(url) {
  return /^(https?:\/\/|tg:)/i.test(url || "");
}

// Entity offsets count UTF-16 code units, which is what JavaScript indexes count.
function appendFormatted(parent, text, entities) {
  const list = entities || [];
  const bounds = new Set([0, text.length]);
  for (const entity of list) {
    bounds.add(entity.offset);
    bounds.add(Math.min(text.length, entity.offset + entity.length));
  }
  const points = [...bounds].sort((a, b) => a - b);
  for (let index = 0; index + 1 < points.length; index += 1) {
    const start = points[index];
    const end = points[index + 1];
    let node = document.createTextNode(text.slice(start, end));
    for (const entity of list) {
      if (entity.offset <= start && entity.offset + entity.length >= end) {
        node = wrapEntity(node, entity);
      }
    }
    parent.appendChild(node);
  }
}

function wrapEntity(node, entity) {
  let element;
  if (entity.type === "text_link" && isSafeLink(entity.url)) {
    element = document.createElement("a");
    element.href = entity.url;
    element.target = "_blank";
    element.rel = "noopener noreferrer";
  } else if (ENTITY_TAGS[entity.type]) {
    element = document.createElement(ENTITY_TAGS[entity.type]);
    if (entity.type === "spoiler") {
      element.className = "spoiler";
    }
  } else {
    return node;
  }
  element.appendChild(node);
  return element;
}

function paragraph(text, className) {
  const element = document.createElement("p");
  element.textContent = text;
  if (className) {
    element.className = className;
  }
  return element;
}

function fileUrl(fileId) {
  return `/_emulator/files/${encodeURIComponent(fileId)}`;
}

function renderContent(message, container) {
  if (message.text !== undefined) {
    const text = document.createElement("p");
    appendFormatted(text, message.text, message.entities);
    container.appendChild(text);
  } else if (message.photo) {
    const largest = message.photo[message.photo.length - 1];
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = fileUrl(largest.file_id);
    image.alt = message.caption ? `Photo: ${message.caption}` : "Photo";
    figure.appendChild(image);
    if (message.caption) {
      const caption = document.createElement("figcaption");
      appendFormatted(caption, message.caption, message.caption_entities);
      figure.appendChild(caption);
    }
    container.appendChild(figure);
  } else if (message.sticker) {
    const image = document.createElement("img");
    image.src = fileUrl(message.sticker.file_id);
    image.alt = `Sticker ${message.sticker.emoji || ""}`.trim();
    image.className = "sticker";
    container.appendChild(image);
  } else if (message.voice) {
    container.appendChild(paragraph(`Voice message, ${message.voice.duration} s`, "meta"));
  } else if (message.document) {
    const link = document.createElement("a");
    link.href = fileUrl(message.document.file_id);
    link.textContent = `Document: ${message.document.file_name || "file"}`;
    container.appendChild(link);
  } else if (message.contact) {
    container.appendChild(paragraph(`Contact: ${message.contact.phone_number}`, "meta"));
  } else if (message.location) {
    const { latitude, longitude } = message.location;
    container.appendChild(paragraph(`Location: ${latitude}, ${longitude}`, "meta"));
  } else {
    container.appendChild(paragraph("Message of a kind this page does not show", "meta"));
  }
}

function renderInlineKeyboard(message, container) {
  const rows = (message.reply_markup || {}).inline_keyboard;
  if (!rows) {
    return;
  }
  const keyboard = document.createElement("div");
  keyboard.className = "keyboard";
  keyboard.setAttribute("role", "group");
  keyboard.setAttribute("aria-label", `Buttons of message ${message.message_id}`);
  rows.forEach((row, rowIndex) => {
    const rowElement = document.createElement("div");
    rowElement.className = "keyboard-row";
    row.forEach((button, columnIndex) => {
      const key = `${message.message_id}:${rowIndex}:${columnIndex}`;
      let control;
      if (button.url !== undefined && isSafeLink(button.url)) {
        control = document.createElement("a");
        control.href = button.url;
        control.target = "_blank";
        control.rel = "noopener noreferrer";
        control.className = "button-link";
        control.textContent = `${button.text} ↗`;
      } else {
        control = document.createElement("button");
        control.type = "button";
        control.textContent = button.text;
        if (button.callback_data !== undefined) {
          control.addEventListener("click", () => tap(message.message_id, button.callback_data));
        } else {
          control.disabled = true;
          control.title = "This kind of button does not work in the emulator";
        }
      }
      control.dataset.focusKey = key;
      rowElement.appendChild(control);
    });
    keyboard.appendChild(rowElement);
  });
  container.appendChild(keyboard);
}

function renderMessage(message) {
  const item = document.createElement("li");
  const fromBot = Boolean(message.from && message.from.is_bot);
  item.className = fromBot ? "message from-bot" : "message from-user";
  const sender = document.createElement("p");
  sender.className = "sender";
  const time = new Date(message.date * 1000).toLocaleTimeString();
  const name = fromBot ? "Bot" : (message.from && message.from.first_name) || "You";
  sender.textContent = `${name}, ${time}${message.edit_date ? " (edited)" : ""}`;
  item.appendChild(sender);
  renderContent(message, item);
  renderInlineKeyboard(message, item);
  return item;
}

function keyboardButtonText(button) {
  return typeof button === "string" ? button : button.text;
}

function renderReplyKeyboard(keyboard) {
  const container = byId("reply-keyboard");
  container.replaceChildren();
  container.hidden = !keyboard;
  if (!keyboard) {
    return;
  }
  keyboard.keyboard.forEach((row, rowIndex) => {
    const rowElement = document.createElement("div");
    rowElement.className = "keyboard-row";
    row.forEach((button, columnIndex) => {
      const control = document.createElement("button");
      control.type = "button";
      control.textContent = keyboardButtonText(button);
      control.dataset.focusKey = `reply:${rowIndex}:${columnIndex}`;
      control.addEventListener("click", () => pressReplyButton(button));
      rowElement.appendChild(control);
    });
    container.appendChild(rowElement);
  });
}

async function refreshMessages() {
  const focusKey = document.activeElement && document.activeElement.dataset
    ? document.activeElement.dataset.focusKey
    : undefined;
  const data = await api("GET", `/_emulator/chats/${page.userId}/messages`);
  const list = byId("messages");
  list.replaceChildren(...data.messages.map(renderMessage));
  renderReplyKeyboard(data.reply_keyboard);
  if (focusKey) {
    const again = document.querySelector(`[data-focus-key="${focusKey}"]`);
    if (again) {
      again.focus();
    }
  }
  list.lastElementChild?.scrollIntoView({ block: "end" });
}

async function pollEvents(generation) {
  while (generation === page.generation) {
    try {
      const path = `/_emulator/chats/${page.userId}/events?after=${page.lastSeq}&wait=${EVENTS_WAIT_SECONDS}`;
      const data = await api("GET", path);
      if (generation !== page.generation) {
        return;
      }
      page.lastSeq = data.last_seq;
      if (data.events.length > 0) {
        await refreshMessages();
        data.events.filter((event) => event.kind === "callback_answered").forEach(showAnswer);
      }
    } catch (error) {
      setStatus(`Lost contact with the emulator (${error.message}); trying again.`);
      await pause(RETRY_DELAY_MS);
    }
  }
}

function showAnswer(event) {
  if (!event.text) {
    return;
  }
  setStatus(`Bot: ${event.text}`);
  if (event.show_alert) {
    window.alert(event.text);
  }
}

function profile() {
  return { first_name: page.firstName, language_code: page.languageCode };
}

async function send(kind, fields) {
  try {
    await api("POST", `/_emulator/users/${page.userId}/send`, { kind, ...profile(), ...fields });
    setStatus("");
    await refreshMessages();
  } catch (error) {
    setStatus(`Not sent: ${error.message}`);
  }
}

async function tap(messageId, callbackData) {
  try {
    await api("POST", `/_emulator/users/${page.userId}/tap`, {
      message_id: messageId,
      callback_data: callbackData,
    });
    setStatus("Button tapped, waiting for the bot.");
  } catch (error) {
    setStatus(`Tap failed: ${error.message}`);
  }
}

function pressReplyButton(button) {
  if (typeof button !== "string" && button.request_contact) {
    return send("contact", { phone_number: DEFAULT_PHONE_NUMBER });
  }
  if (typeof button !== "string" && button.request_location) {
    return send("location", DEFAULT_LOCATION);
  }
  const text = keyboardButtonText(button);
  return send(text.startsWith("/") ? "command" : "text", { text });
}

function readFileAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function sendPhoto() {
  const file = byId("photo-file").files[0];
  const fields = {};
  if (file) {
    fields.photo_base64 = await readFileAsBase64(file);
  }
  await send("photo", fields);
}

function showBlocked(blocked) {
  page.blocked = blocked;
  const button = byId("toggle-block");
  button.setAttribute("aria-pressed", String(blocked));
  button.textContent = blocked ? "Unblock bot" : "Block bot";
}

async function toggleBlock() {
  const action = page.blocked ? "unblock" : "block";
  try {
    const data = await api("POST", `/_emulator/users/${page.userId}/${action}`);
    showBlocked(data.blocked);
    setStatus(data.blocked ? "You blocked the bot." : "You unblocked the bot.");
  } catch (error) {
    setStatus(`Could not ${action}: ${error.message}`);
  }
}

async function loadKnownUsers() {
  try {
    const data = await api("GET", "/_emulator/users");
    const list = byId("known-users");
    list.replaceChildren(
      ...data.users.map(({ user }) => {
        const option = document.createElement("option");
        option.value = String(user.id);
        option.label = user.first_name;
        return option;
      }),
    );
    return data.users;
  } catch (error) {
    setStatus(`Could not load the users: ${error.message}`);
    return [];
  }
}

async function openChat(event) {
  event.preventDefault();
  page.userId = Number(byId("user-id").value);
  page.firstName = byId("first-name").value.trim() || `User ${page.userId}`;
  page.languageCode = byId("language").value;
  page.lastSeq = 0;
  page.generation += 1;

  const users = await loadKnownUsers();
  const known = users.find(({ user }) => user.id === page.userId);
  showBlocked(Boolean(known && known.blocked));

  byId("chat").hidden = false;
  byId("chat-heading").textContent = `Chat of user ${page.userId} with the bot`;
  await refreshMessages();
  byId("text").focus();
  pollEvents(page.generation);
}

function sendTyped(event) {
  event.preventDefault();
  const input = byId("text");
  const text = input.value.trim();
  if (!text) {
    return;
  }
  input.value = "";
  send(text.startsWith("/") ? "command" : "text", { text });
}

byId("user-form").addEventListener("submit", openChat);
byId("compose").addEventListener("submit", sendTyped);
byId("send-start").addEventListener("click", () => send("command", { text: "/start" }));
byId("send-sticker").addEventListener("click", () => send("sticker", { emoji: "👍" }));
byId("send-photo").addEventListener("click", sendPhoto);
byId("send-location").addEventListener("click", () => send("location", DEFAULT_LOCATION));
byId("send-contact").addEventListener("click", () => send("contact", { phone_number: DEFAULT_PHONE_NUMBER }));
byId("toggle-block").addEventListener("click", toggleBlock);

// "/chat?user=1001" opens the chat of that user at once.
const requestedUser = new URLSearchParams(window.location.search).get("user");
if (requestedUser && /^[0-9]+$/.test(requestedUser)) {
  byId("user-id").value = requestedUser;
  byId("user-form").requestSubmit();
} else {
  loadKnownUsers();
}
