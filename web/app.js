// Dak Web's page: it draws what the client core tells it, and hands it
// what the user does. The core (dak_web.wasm, through wasm-bindgen's
// dak_web.js) runs in a worker (worker.js), which owns the profile; this
// page talks to it through `Core`, one message each way per call.
//
// Invariants:
// - Nothing from a message, a name or the server is ever markup: every
//   such string goes into a text node (textContent), and nothing here uses
//   innerHTML, insertAdjacentHTML, document.write or eval. The
//   Content-Security-Policy the server sends forbids inline script anyway.
// - What the user typed is cleared only once the core has taken it (sent,
//   or queued with 🕓 while offline); on an error it stays in the box.
// - Every control has an accessible name in the page's language.

import { LANGUAGES, has, initialLanguage, language, setLanguage, t } from "./i18n.js";

const $ = (id) => document.getElementById(id);

// The engine in the worker, as methods that return Promises.
class Core {
  constructor(worker, onEvent) {
    this.worker = worker;
    this.next = 1;
    this.waiting = new Map();
    worker.onmessage = (e) => {
      const { id, value, error, event } = e.data;
      if (event !== undefined) return onEvent(event);
      const call = this.waiting.get(id);
      if (!call) return;
      this.waiting.delete(id);
      if (error) {
        const err = new Error(error.message);
        err.code = error.code;
        call.reject(err);
      } else {
        call.resolve(value);
      }
    };
    worker.onerror = () => {
      // The worker is gone (it could not load, or the core stopped): no
      // call waiting on it will be answered.
      for (const call of this.waiting.values()) {
        const err = new Error(t("error_STOPPED"));
        err.code = "STOPPED";
        call.reject(err);
      }
      this.waiting.clear();
      onEvent(JSON.stringify({ type: "open_failed", code: "NO_WASM", message: t("no_wasm") }));
    };
  }
  call(method, ...args) {
    return this.callMoving([], method, ...args);
  }
  // As call, handing `transfer` (ArrayBuffers) to the worker uncopied.
  callMoving(transfer, method, ...args) {
    const id = this.next++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ id, method, args }, transfer);
    });
  }
  // A file: sealed by the core, uploaded by the worker, then sent.
  sendFile(chat, buffer, name, type, caption, voice, durationMs, replyTo) {
    return this.callMoving([buffer], "sendFile", chat, buffer, name, type, caption, voice, durationMs, replyTo);
  }
  // A message's file, downloaded, checked and opened: {bytes, media_type, file_name}.
  fetchFile(id) { return this.call("fetchFile", id); }
  thumbnail(id) { return this.call("thumbnail", id); }
  status() { return this.call("status"); }
  requestCode(server, phone) { return this.call("requestCode", server, phone); }
  verify(code, pin, name) { return this.call("verify", code, pin, name); }
  link(server, name) { return this.call("link", server, name); }
  chats() { return this.call("chats"); }
  messages(chat, limit) { return this.call("messages", chat, limit); }
  // The bytes of WebAssembly memory the core uses in the worker.
  memory() { return this.call("memory"); }
  send(chat, text, replyTo = "") { return this.call("send", chat, text, replyTo); }
  // Reactions, edits, deletes, forwards, timers, group changes: one JSON
  // object each ({do: "react", ...}; dak-web's actions.rs lists them).
  act(action) { return this.call("act", JSON.stringify(action)); }
  markRead(chat) { return this.call("markRead", chat); }
  groupInfo(chat) { return this.call("groupInfo", chat); }
  createGroup(title, members) { return this.call("createGroup", title, members); }
  addMembers(chat, members) { return this.call("addMembers", chat, members); }
  removeMember(chat, member) { return this.call("removeMember", chat, member); }
  safetyNumber(chat) { return this.call("safetyNumber", chat); }
  devices() { return this.call("devices"); }
  removeDevice(id) { return this.call("removeDevice", id); }
  approveLink(code) { return this.call("approveLink", code); }
  // The operator's notices this browser accepted, oldest first.
  notices() { return this.call("notices"); }
  reconnect() { this.call("reconnect").catch(() => {}); }
}
const server = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;

const ui = {
  // The operator's notice in the banner (or {refused: reason}); null: none.
  notice: null,
  client: null,
  status: { state: "no_account" },
  chats: [],
  open: null, // the open chat's key
  businessAsked: new Set(), // 1:1 chats looked up as businesses this session
  pendingPhone: "",
  // Chats whose safety number changed since they were last compared.
  changedSafety: new Map(),
  openFailed: "",
  refreshQueued: false,
  // The message whose actions are shown, and the one armed for deletion.
  actionsFor: null,
  armedDelete: null,
  // Replying to or editing a message: {mode: "reply"|"edit", id, text}.
  composing: null,
  // The message being forwarded.
  forwarding: null,
  // How many of the open chat's newest messages are shown, and whether
  // that is all of them. Scrolling back doubles it (dak-web's CHAT_PAGE).
  limit: 200,
  complete: true,
  loadingEarlier: false,
  // The first message drawn in the open chat's window, and the rows'
  // average height (for the spacers that stand in for the others).
  windowFirst: null,
  rowHeight: 48,
};

// The reactions offered on a message (any emoji arrives and is shown).
const REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];

// ---- words ----

function translatePage() {
  document.documentElement.lang = language();
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
  for (const el of document.querySelectorAll("[data-t-label]")) {
    el.setAttribute("aria-label", t(el.dataset.tLabel));
    el.title = t(el.dataset.tLabel);
  }
  $("message").placeholder = t("message");
  showSafetyNotice();
  showOperatorNotice();
  showComposing();
  $("language").value = language();
  showStatus();
  renderChats();
  renderMessages();
}

function showError(e) {
  const box = $("error");
  if (!e) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const code = e.code ? "error_" + e.code : "";
  box.textContent = code && has(code) ? t(code) : String(e.message || e);
  box.hidden = false;
}

const timeFormat = () =>
  new Intl.DateTimeFormat(language(), { hour: "2-digit", minute: "2-digit" });
const dateFormat = () => new Intl.DateTimeFormat(language(), { day: "numeric", month: "short" });
const numberFormat = () => new Intl.NumberFormat(language());

function when(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? timeFormat().format(d) : dateFormat().format(d);
}

// ---- status ----

function showStatus() {
  const s = ui.status;
  document.body.dataset.state = s.state;
  $("status").textContent = s.state === "offline" && s.offline_since_ms
    ? t("status_offline_since", { time: when(s.offline_since_ms), waiting: numberFormat().format(s.waiting || 0) })
    : t("status_" + s.state);
  const registered = s.registered && s.state !== "signed_out";
  $("welcome").hidden = registered;
  $("chats").hidden = !registered;
  $("chat").hidden = !registered || !ui.open;
  document.body.classList.toggle("chat-open", Boolean(registered && ui.open));
  const banner = $("banner");
  const storage = s.storage || {};
  // Which compaction the profile's journal comes from (for diagnostics).
  document.body.dataset.journalGeneration = storage.generation ?? "";
  let warning = "";
  if (ui.openFailed) warning = ui.openFailed;
  else if (storage.persistent === false && registered) warning = t("not_persistent");
  else if (storage.dropped_bytes > 0) warning = t("storage_damaged_tail");
  else if (!s.registered && localStorage.getItem("dak.registered")) warning = t("storage_lost");
  banner.hidden = !warning;
  banner.textContent = warning;
  if (s.registered && s.phone) localStorage.setItem("dak.registered", s.phone);
  $("notify").hidden = !("Notification" in window) || Notification.permission !== "default";
  $("notices-open").hidden = !registered;
}

// ---- the operator's notices ----

// The heading of a notice: who it is from and what kind, never words a
// chat message could choose.
function noticeHeading(n) {
  if (n.targeted) return t("notice_targeted");
  return t("notice_heading", { kind: t("notice_kind_" + n.kind), state: t("notice_state_" + n.state) });
}

// A notice's words, as text nodes only (a notice is never markup).
function noticeBody(n) {
  const out = [];
  const line = (text) => {
    const p = document.createElement("p");
    p.textContent = text;
    out.push(p);
  };
  const title = document.createElement("p");
  const strong = document.createElement("strong");
  strong.textContent = n.title;
  title.append(strong);
  out.push(title);
  const times = [t("notice_published", { time: when(n.published_ms) })];
  if (n.started_ms) times.push(t("notice_started", { time: when(n.started_ms) }));
  if (n.aware_ms) times.push(t("notice_aware", { time: when(n.aware_ms) }));
  line(times.join(" · "));
  for (const [key, text] of [["notice_what", n.what_happened], ["notice_affected", n.affected], ["notice_not_affected", n.not_affected], ["notice_advice", n.advice]]) {
    if (text) line(t(key) + " " + text);
  }
  return out;
}

function showOperatorNotice() {
  const box = $("operator-notice");
  const n = ui.notice;
  box.hidden = !n;
  if (!n) return;
  box.classList.toggle("targeted", Boolean(n.targeted || n.refused || n.kt));
  if (n.kt) {
    $("operator-notice-heading").textContent = t("kt_warning_heading");
    const p = document.createElement("p");
    p.textContent = n.kt;
    $("operator-notice-body").replaceChildren(p);
    return;
  }
  if (n.refused) {
    $("operator-notice-heading").textContent = t("notice_refused_heading");
    const p = document.createElement("p");
    p.textContent = t("notice_refused", { reason: n.refused });
    $("operator-notice-body").replaceChildren(p);
    return;
  }
  $("operator-notice-heading").textContent = noticeHeading(n);
  $("operator-notice-body").replaceChildren(...noticeBody(n));
}

async function openNotices() {
  const list = JSON.parse(await ui.client.notices()).reverse();
  const items = list.map((n) => {
    const li = document.createElement("li");
    const h = document.createElement("h4");
    h.textContent = noticeHeading(n);
    li.append(h, ...noticeBody(n));
    return li;
  });
  $("notices-list").replaceChildren(...items);
  $("notices-empty").hidden = items.length > 0;
  $("notices-dialog").showModal();
}

// ---- the chat list ----

function tickMark(tick) {
  return { pending: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓" }[tick] ?? "";
}

function tickElement(tick) {
  const span = document.createElement("span");
  span.className = "tick tick-" + tick;
  span.dataset.tick = tick;
  span.textContent = tickMark(tick);
  span.setAttribute("role", "img");
  span.setAttribute("aria-label", t("tick_" + tick));
  span.title = t("tick_" + tick);
  return span;
}

// Lists are redrawn whole as events arrive; the control that had the
// keyboard focus (marked with data-focus) gets it back in the new drawing.
function keepingFocus(list, draw) {
  const had = list.contains(document.activeElement) ? document.activeElement.dataset.focus : undefined;
  draw();
  if (had === undefined) return;
  const again = [...list.querySelectorAll("[data-focus]")].find((el) => el.dataset.focus === had);
  if (again) again.focus();
}

// Marks the open chat's row without drawing the list again.
function markOpenChat() {
  for (const row of $("chat-list").querySelectorAll("button.chat-row")) {
    if (row.dataset.chat === ui.open) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");
  }
}

function renderChats() {
  const list = $("chat-list");
  keepingFocus(list, () => drawChats(list));
}

// A chat's name: a group's title; a verified business's checked name with
// a tick; anyone else's number (never a name a business gives itself).
function chatName(chat) {
  if (chat.business && chat.business.verified) return "✔ " + chat.business.name;
  return chat.title || chat.key;
}

function drawChats(list) {
  list.replaceChildren();
  $("no-chats").hidden = ui.chats.length > 0;
  for (const chat of ui.chats) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "chat-row";
    button.dataset.chat = chat.key;
    button.dataset.focus = chat.key;
    if (chat.key === ui.open) button.setAttribute("aria-current", "true");
    const title = document.createElement("span");
    title.className = "chat-title";
    title.textContent = chatName(chat);
    const time = document.createElement("span");
    time.className = "chat-time";
    time.textContent = when(chat.last_at_ms);
    const last = document.createElement("span");
    last.className = "chat-last";
    if (chat.last_tick) last.append(tickElement(chat.last_tick), " ");
    last.append(chat.last_deleted ? t("deleted") : chat.last_text);
    button.append(title, time, last);
    if (chat.request) {
      const req = document.createElement("span");
      req.className = "chat-request";
      req.textContent = t("request");
      button.append(req);
    }
    if (chat.unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = numberFormat().format(chat.unread);
      badge.setAttribute("role", "img");
      badge.setAttribute("aria-label", t("unread", { n: numberFormat().format(chat.unread) }));
      button.append(badge);
    }
    button.addEventListener("click", () => openChat(chat.key));
    item.append(button);
    list.append(item);
  }
}

// ---- one chat ----

let shownMessages = [];

// The open chat's messages are drawn as a window of at most WINDOW rows
// (a chat of 10,000 messages costs the page what one of 120 does), with
// spacers above and below standing in for the rest at their average
// height. Scrolling near an edge moves the window by STEP rows; a jump
// into a spacer draws the rows there; at the very top, earlier messages
// are loaded. Whatever row was at the top of the view stays where it was
// on every redraw, unless the view was at the bottom: then it stays there.
const WINDOW = 120;
const STEP = 60;

function renderMessages() {
  const chat = ui.chats.find((c) => c.key === ui.open);
  $("chat-title").textContent = chat ? chatName(chat) : ui.open || "";
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const n = shownMessages.length;
  // A chat just opened starts at its newest message.
  const stick = atBottom || ui.windowFirst === null;
  let first = stick ? -1 : shownMessages.findIndex((m) => m.id === ui.windowFirst);
  if (first < 0) first = n - WINDOW;
  drawWindow(list, chat, first, stick);
  showTimer(chat);
  showBusiness(chat);
  showBlock(chat);
}

// The row at the top of the view, and how far below the view's top it is.
function topRow(list) {
  for (const row of list.querySelectorAll("li.message")) {
    if (row.offsetTop + row.offsetHeight > list.scrollTop) return [row.dataset.id, row.offsetTop - list.scrollTop];
  }
  return [null, 0];
}

function drawWindow(list, chat, first, stickToBottom) {
  const n = shownMessages.length;
  const start = Math.max(0, Math.min(first, n - WINDOW));
  const end = Math.min(n, start + WINDOW);
  const [anchor, offset] = topRow(list);
  keepingFocus(list, () => drawMessages(list, chat, start, end));
  ui.windowFirst = start < n ? shownMessages[start].id : null;
  const rows = list.querySelectorAll("li.message");
  if (rows.length) {
    // The rows' pitch, gaps included (offsets are within the list).
    const last = rows[rows.length - 1];
    if (rows.length > 1) ui.rowHeight = Math.max(16, (last.offsetTop - rows[0].offsetTop) / (rows.length - 1));
    list.querySelector(".spacer-top").style.height = start * ui.rowHeight + "px";
    list.querySelector(".spacer-bottom").style.height = (n - end) * ui.rowHeight + "px";
  }
  const again = anchor && [...rows].find((row) => row.dataset.id === anchor);
  if (stickToBottom) list.scrollTop = list.scrollHeight;
  else if (again) list.scrollTop = again.offsetTop - offset;
  // For measurements and tests: how many messages are loaded and drawn.
  list.dataset.loaded = String(n);
  list.dataset.drawn = String(end - start);
  list.dataset.complete = String(ui.complete);
}

// Scrolling: move the window when the view nears or passes its edges.
function onMessagesScroll() {
  const list = $("messages");
  const n = shownMessages.length;
  const rows = list.querySelectorAll("li.message");
  if (!rows.length) return;
  const start = shownMessages.findIndex((m) => m.id === ui.windowFirst);
  const end = start + rows.length;
  const top = list.scrollTop;
  const bottom = top + list.clientHeight;
  const chat = ui.chats.find((c) => c.key === ui.open);
  const firstTop = rows[0].offsetTop;
  const lastBottom = rows[rows.length - 1].offsetTop + rows[rows.length - 1].offsetHeight;
  if ((start > 0 && bottom < firstTop) || (end < n && top > lastBottom)) {
    // A jump into a spacer (the scrollbar dragged): draw the rows there.
    drawWindow(list, chat, Math.floor(top / ui.rowHeight) - STEP / 2, false);
    list.scrollTop = top;
  } else if (start > 0 && top < firstTop + 300) {
    drawWindow(list, chat, start - STEP, false);
  } else if (end < n && bottom > lastBottom - 300) {
    drawWindow(list, chat, start + STEP, false);
  } else if (start === 0 && top < firstTop + 40) {
    loadEarlier();
  }
}

function drawMessages(list, chat, start, end) {
  list.replaceChildren();
  if (!ui.complete && start === 0) {
    const item = document.createElement("li");
    item.className = "earlier";
    const more = document.createElement("button");
    more.type = "button";
    more.id = "load-earlier";
    more.dataset.focus = "load-earlier";
    more.textContent = t("load_earlier");
    more.addEventListener("click", loadEarlier);
    item.append(more);
    list.append(item);
  }
  const spacer = (name) => {
    const item = document.createElement("li");
    item.className = "spacer " + name;
    item.setAttribute("aria-hidden", "true");
    return item;
  };
  list.append(spacer("spacer-top"));
  for (const m of shownMessages.slice(start, end)) {
    const item = document.createElement("li");
    item.className = m.outgoing ? "message outgoing" : "message incoming";
    item.dataset.id = m.id;
    if (!m.outgoing && chat && chat.is_group) {
      const from = document.createElement("span");
      from.className = "from";
      from.textContent = m.from;
      item.append(from);
    }
    if (m.forwarded) {
      const label = document.createElement("span");
      label.className = "forwarded";
      label.textContent = m.forwarded === "Forwarded" ? t("forwarded") : t("forwarded_many");
      item.append(label);
    }
    if (m.reply_to) {
      const quote = document.createElement("blockquote");
      quote.textContent = m.reply_to;
      item.append(quote);
    }
    if (m.attachment) item.append(attachmentView(m));
    if (m.interactive && m.interactive.header) {
      const header = document.createElement("strong");
      header.className = "interactive-header";
      header.textContent = m.interactive.header;
      item.append(header);
    }
    const text = document.createElement("p");
    text.className = "text";
    if (m.deleted) {
      text.classList.add("deleted");
      text.textContent = t("deleted");
    } else {
      text.textContent = (m.choice ? "☑ " : "") + m.text;
    }
    item.append(text);
    if (m.interactive) item.append(choicesView(m));
    const meta = document.createElement("span");
    meta.className = "meta";
    if (m.edited) meta.append(t("edited") + " ");
    meta.append(when(m.at_ms));
    if (m.tick) meta.append(" ", tickElement(m.tick));
    item.append(meta);
    if (m.reactions.length) {
      const r = document.createElement("span");
      r.className = "reactions";
      r.textContent = m.reactions.map(([, emoji]) => emoji).join(" ");
      item.append(r);
    }
    if (!m.deleted) item.append(messageActions(m));
    list.append(item);
  }
  list.append(spacer("spacer-bottom"));
}

// ---- a business's buttons and lists ----

// Reply buttons, or a list that opens from its button; a tap sends the
// choice (its title, with the button's id) to the chat. Our own messages
// show the choices without letting us choose.
function choicesView(m) {
  const i = m.interactive;
  const box = document.createElement("div");
  box.className = "choices";
  const choice = (id, title, description) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "choice";
    b.textContent = title;
    b.setAttribute("aria-label", t("choose_option", { title }));
    b.dataset.focus = m.id + " choice " + id;
    b.disabled = m.outgoing;
    b.addEventListener("click", () => act(b, { do: "choose", id: m.id, choice: id }));
    if (description) {
      const d = document.createElement("small");
      d.textContent = description;
      b.append(d);
    }
    return b;
  };
  if (i.list) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = i.list.button;
    details.append(summary);
    for (const s of i.list.sections) {
      const group = document.createElement("div");
      group.setAttribute("role", "group");
      if (s.title) {
        const h = document.createElement("span");
        h.className = "section-title";
        h.textContent = s.title;
        group.setAttribute("aria-label", s.title);
        group.append(h);
      }
      for (const r of s.rows) group.append(choice(r.id, r.title, r.description));
      details.append(group);
    }
    box.append(details);
  } else {
    for (const b of i.buttons || []) box.append(choice(b.id, b.title));
  }
  if (i.footer) {
    const footer = document.createElement("small");
    footer.className = "interactive-footer";
    footer.textContent = i.footer;
    box.append(footer);
  }
  return box;
}

// Block (or Unblock) and Report in the header of a 1:1 chat.
function showBlock(chat) {
  const one = Boolean(chat && !chat.is_group);
  $("block").hidden = !one;
  $("report").hidden = !one;
  if (one) {
    $("block").textContent = chat.blocked ? t("unblock") : t("block");
    $("block").setAttribute("aria-pressed", String(chat.blocked));
  }
}

// What the chat's header says of a business: its checked name with a
// tick, or "business account" beside its number; and who reads its messages.
function showBusiness(chat) {
  const b = chat && chat.business;
  const line = $("business-line");
  line.hidden = !b;
  if (!b) return;
  line.textContent = (b.verified ? t("business_verified", { name: b.name }) : t("business_unverified")) +
    " · " + t("business_note");
}

// ---- files ----

// Files opened in this tab: message id -> {url, media_type, file_name}
// (object URLs of the checked bytes; the oldest are let go).
const OPENED_MAX = 40;
const opened = new Map();
const fetching = new Set();

function attachmentView(m) {
  const a = m.attachment;
  const box = document.createElement("div");
  box.className = "attachment";
  const file = opened.get(m.id);
  if (file) {
    const kind = file.media_type.split("/")[0];
    if (kind === "image") {
      const img = document.createElement("img");
      img.src = file.url;
      img.alt = a.file_name || t("photo");
      img.className = "preview";
      box.append(img);
    } else if (kind === "audio" || kind === "video") {
      const player = document.createElement(kind);
      player.src = file.url;
      player.controls = true;
      player.className = "preview";
      player.setAttribute("aria-label", a.voice_note ? t("voice_note") : a.file_name || kind);
      box.append(player);
    }
    const save = document.createElement("a");
    save.href = file.url;
    save.download = a.file_name || (a.voice_note ? "voice-note" : "file");
    save.className = "save";
    save.textContent = t("save_file");
    box.append(" ", save);
  }
  if (!file && a.has_thumbnail) {
    const thumb = thumbs.get(m.id);
    if (thumb) {
      const img = document.createElement("img");
      img.src = thumb;
      img.alt = a.file_name || t("photo");
      img.className = "preview thumbnail";
      box.append(img);
    } else {
      loadThumbnail(m.id);
    }
  }
  const label = document.createElement("span");
  label.className = "file-label";
  if (a.voice_note) {
    const secs = Math.floor(a.duration_ms / 1000);
    label.textContent = "🎤 " + t("voice_note") + " (" + Math.floor(secs / 60) + ":" + String(secs % 60).padStart(2, "0") + ")";
  } else {
    label.textContent = a.label;
  }
  box.prepend(label);
  if (!file) {
    const get = document.createElement("button");
    get.type = "button";
    get.className = "download";
    get.dataset.focus = m.id + " download";
    get.textContent = t("download");
    get.setAttribute("aria-label", t("download_file", { name: a.file_name || t("voice_note") }));
    get.disabled = fetching.has(m.id);
    get.addEventListener("click", () => openFile(m));
    box.append(" ", get);
  }
  return box;
}

// Thumbnails that came with files: message id -> object URL.
const thumbs = new Map();

async function loadThumbnail(id) {
  if (thumbs.has(id)) return;
  thumbs.set(id, "");
  try {
    const got = await ui.client.thumbnail(id);
    thumbs.set(id, URL.createObjectURL(new Blob([got.bytes], { type: "image/jpeg" })));
    while (thumbs.size > OPENED_MAX * 4) {
      const [oldest, url] = thumbs.entries().next().value;
      if (url) URL.revokeObjectURL(url);
      thumbs.delete(oldest);
    }
    renderMessages();
  } catch {
    // No thumbnail then: the file's label and its Download button stay.
  }
}

async function openFile(m) {
  if (fetching.has(m.id)) return;
  fetching.add(m.id);
  showError(null);
  renderMessages();
  try {
    const got = await ui.client.fetchFile(m.id);
    const url = URL.createObjectURL(new Blob([got.bytes], { type: got.media_type || "application/octet-stream" }));
    opened.set(m.id, { url, media_type: got.media_type || "", file_name: got.file_name });
    while (opened.size > OPENED_MAX) {
      const [oldest, f] = opened.entries().next().value;
      URL.revokeObjectURL(f.url);
      opened.delete(oldest);
    }
  } catch (err) {
    showError(err);
  } finally {
    fetching.delete(m.id);
    showTransfer(null);
    renderMessages();
  }
}

function showTransfer(event) {
  const box = $("transfer");
  if (!event || event.done >= event.total) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  const pct = Math.floor((event.done * 100) / Math.max(1, event.total));
  box.textContent = t(event.kind === "upload" ? "uploading" : "downloading", { name: event.name, pct });
  box.hidden = false;
}

const MAX_FILE_BYTES = 100 * 1024 * 1024;

// Sends a picked, dropped or pasted file (or a recorded voice note) to
// the open chat; what is in the message box goes with it as the caption.
async function sendFile(file, voice, durationMs) {
  const chat = ui.open;
  if (!chat || !file) return;
  showError(null);
  if (file.size > MAX_FILE_BYTES) {
    showError({ code: "FILE_TOO_LARGE", message: t("error_FILE_TOO_LARGE") });
    return;
  }
  const box = $("message");
  const caption = voice ? "" : box.value;
  const composing = ui.composing && ui.composing.mode === "reply" ? ui.composing.id : "";
  try {
    const name = voice ? "" : file.name || "";
    const buffer = await file.arrayBuffer();
    const answer = JSON.parse(await ui.client.sendFile(chat, buffer, name, file.type, caption, !!voice, durationMs || 0, composing));
    // The sender has the file already: shown from it, not downloaded.
    if (answer.id) opened.set(answer.id, { url: URL.createObjectURL(file), media_type: file.type || "", file_name: name });
    if (!voice && box.value === caption) box.value = "";
    if (composing) {
      ui.composing = null;
      showComposing();
    }
    if (answer.chat && ui.open === chat) ui.open = answer.chat;
  } catch (err) {
    showError(err);
  } finally {
    showTransfer(null);
    refreshSoon();
  }
}

// A voice note: the microphone through MediaRecorder, until pressed again.
let recorder = null;

async function toggleRecording() {
  const button = $("record");
  if (recorder) {
    recorder.stop();
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError({ code: "NO_MICROPHONE", message: t("error_NO_MICROPHONE") });
    return;
  }
  const chunks = [];
  const started = performance.now();
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => e.data.size && chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    const duration = Math.round(performance.now() - started);
    const type = recorder.mimeType || "audio/webm";
    recorder = null;
    button.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-label", t("record_voice"));
    button.title = t("record_voice");
    sendFile(new Blob(chunks, { type }), true, duration);
  };
  recorder.start();
  button.setAttribute("aria-pressed", "true");
  button.setAttribute("aria-label", t("stop_recording"));
  button.title = t("stop_recording");
}

// For measurements (BENCHMARKS.md): the core's WebAssembly memory.
function noteMemory() {
  ui.client.memory().then((n) => (document.body.dataset.coreMemoryBytes = String(n)), () => {});
}

// Loads twice as many of the chat's messages; the rows on screen stay.
async function loadEarlier() {
  if (ui.loadingEarlier || ui.complete || !ui.open) return;
  ui.loadingEarlier = true;
  const started = performance.now();
  // dak-web's MAX_CHAT_PAGE: a longer chat shows its newest this many.
  ui.limit = Math.min(ui.limit * 2, 102400);
  try {
    // The window keeps its first message, now further down the list.
    await refresh({ list: false });
    // For measurements (BENCHMARKS.md): how long the last page took.
    document.body.dataset.loadEarlierMs = (performance.now() - started).toFixed(1);
    noteMemory();
  } finally {
    ui.loadingEarlier = false;
  }
}

// A message's "⋯" button and, when open, what can be done to it.
function messageActions(m) {
  const box = document.createElement("div");
  box.className = "message-actions";
  const open = ui.actionsFor === m.id;
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "options";
  toggle.textContent = "⋯";
  toggle.setAttribute("aria-label", t("message_options"));
  toggle.title = t("message_options");
  toggle.setAttribute("aria-expanded", String(open));
  toggle.dataset.focus = m.id + " options";
  toggle.addEventListener("click", () => {
    ui.actionsFor = open ? null : m.id;
    ui.armedDelete = null;
    renderMessages();
  });
  box.append(toggle);
  if (!open) return box;
  const bar = document.createElement("div");
  bar.className = "toolbar";
  bar.setAttribute("role", "toolbar");
  bar.setAttribute("aria-label", t("message_actions"));
  const button = (text, label, onClick) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = text;
    if (label) {
      b.setAttribute("aria-label", label);
      b.title = label;
    }
    b.dataset.focus = m.id + " " + (label || text);
    b.addEventListener("click", () => onClick(b));
    bar.append(b);
    return b;
  };
  button(t("reply"), null, () => startComposing("reply", m));
  const mine = m.reactions.find(([phone]) => phone === ui.status.phone);
  for (const emoji of REACTIONS) {
    const chosen = Boolean(mine && mine[1] === emoji);
    const b = button(emoji, t("react_with", { emoji }), (b) =>
      act(b, { do: "react", chat: ui.open, id: m.id, emoji: chosen ? "" : emoji }),
    );
    b.className = "reaction";
    b.setAttribute("aria-pressed", String(chosen));
  }
  if (m.can_edit) button(t("edit"), null, () => startComposing("edit", m));
  if (m.can_delete) {
    const armed = ui.armedDelete === m.id;
    // Two presses: deleting for everyone cannot be undone.
    const del = button(armed ? t("delete_confirm") : t("delete_everyone"), null, (b) => {
      if (ui.armedDelete === m.id) act(b, { do: "delete", id: m.id });
      else {
        ui.armedDelete = m.id;
        renderMessages();
      }
    });
    del.className = "remove";
    del.dataset.focus = m.id + " delete";
  }
  button(t("forward"), null, () => openForward(m));
  box.append(bar);
  return box;
}

// Does an action on a message or a chat, with `control` disabled meanwhile.
function act(control, action) {
  return doing(control, async () => {
    await ui.client.act(action);
    ui.actionsFor = null;
    ui.armedDelete = null;
    refreshSoon();
  });
}

function startComposing(mode, m) {
  ui.composing = { mode, id: m.id, text: m.text };
  ui.actionsFor = null;
  if (mode === "edit") $("message").value = m.text;
  showComposing();
  renderMessages();
  $("message").focus();
}

function showComposing() {
  const c = ui.composing;
  $("composing").hidden = !c;
  $("composing-what").textContent = !c ? "" : c.mode === "edit" ? t("editing") : t("replying_to", { text: c.text.slice(0, 100) });
}

function openForward(m) {
  ui.forwarding = m.id;
  ui.actionsFor = null;
  const list = $("forward-list");
  list.replaceChildren();
  for (const chat of ui.chats) {
    const item = document.createElement("li");
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = chat.key;
    label.append(box, " ", chat.title || chat.key);
    item.append(label);
    list.append(item);
  }
  $("forward-dialog").showModal();
}

// The open chat's disappearing-message timer, in the header's menu.
function showTimer(chat) {
  const select = $("timer");
  const secs = String(chat ? chat.timer_secs : 0);
  if (![...select.options].some((o) => o.value === secs)) {
    // Set elsewhere (the CLI takes any duration): shown in hours.
    const o = document.createElement("option");
    o.value = secs;
    o.textContent = new Intl.NumberFormat(language(), { style: "unit", unit: "hour", maximumFractionDigits: 1 }).format(Number(secs) / 3600);
    select.append(o);
  }
  select.value = secs;
}

// What an invite link is shared as: this page, with the link in the
// fragment (which the browser never sends to the server).
function inviteUrl(link) {
  return location.origin + "/#join=" + encodeURIComponent(link);
}

function inviteFrom(text) {
  const at = text.indexOf("#join=");
  return at >= 0 ? decodeURIComponent(text.slice(at + 6)) : text.trim();
}

async function openChat(key) {
  const started = performance.now();
  ui.open = key;
  shownMessages = [];
  ui.limit = 200;
  ui.complete = true;
  ui.windowFirst = null;
  ui.actionsFor = null;
  ui.armedDelete = null;
  ui.composing = null;
  showComposing();
  $("group-panel").hidden = true;
  $("group-toggle").setAttribute("aria-expanded", "false");
  $("group-toggle").hidden = !key.startsWith("group:");
  $("safety-toggle").hidden = key.startsWith("group:");
  $("safety-panel").hidden = true;
  $("safety-toggle").setAttribute("aria-expanded", "false");
  showSafetyNotice();
  showStatus();
  await refresh({ list: false });
  // Once a session per 1:1 chat: is it a business, and is it verified?
  if (!key.startsWith("group:") && !ui.businessAsked.has(key) && ui.client) {
    ui.businessAsked.add(key);
    ui.client.act({ do: "business", chat: key }).then(() => refreshSoon(), () => {});
  }
  // For measurements (BENCHMARKS.md): from the click to the drawn chat.
  document.body.dataset.openChatMs = (performance.now() - started).toFixed(1);
  noteMemory();
  $("message").focus();
}

// ---- linked devices ----

async function renderDevices() {
  if (!$("devices").open) return;
  let devices;
  try {
    devices = JSON.parse(await ui.client.devices());
  } catch (e) {
    showError(e);
    return;
  }
  const list = $("device-list");
  list.replaceChildren();
  const iAmPrimary = devices.some((d) => d.this_device && d.primary);
  for (const d of devices) {
    const item = document.createElement("li");
    item.dataset.device = String(d.device_id);
    const name = document.createElement("span");
    name.textContent = d.name || "#" + d.device_id;
    item.append(name);
    const tags = [];
    if (d.primary) tags.push(t("primary"));
    if (d.this_device) tags.push(t("this_device"));
    if (tags.length) {
      const tag = document.createElement("span");
      tag.className = "admin";
      tag.textContent = " " + tags.join(", ");
      item.append(tag);
    }
    if (!d.primary && (iAmPrimary || d.this_device)) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = t("remove");
      remove.setAttribute("aria-label", t("remove_device", { name: d.name || "#" + d.device_id }));
      remove.addEventListener("click", () =>
        doing(remove, async () => {
          await ui.client.removeDevice(d.device_id);
          await renderDevices();
        }),
      );
      item.append(" ", remove);
    }
    list.append(item);
  }
}

// ---- safety numbers ----

// How the chat is encrypted: post-quantum, or classic and which devices
// kept it so (the same sentence as `dak safety`'s).
function encryptionLine(safety) {
  if (safety.post_quantum) return t("safety_pq", { suite: safety.suite });
  if (safety.server_chose_classic) return t("safety_classic_server", { suite: safety.suite });
  const devices = safety.classic_because
    .map((d) => t("safety_device", { device: d.device_id, phone: d.phone }))
    .join(", ");
  return t("safety_classic", { suite: safety.suite, devices });
}

// What the key directory showed for the contact (`dak safety`'s "Keys:").
function keyTransparencyLine(safety) {
  const kt = safety.key_transparency || { state: "not_offered" };
  if (kt.state === "verified") return t("safety_kt_verified", { epoch: kt.epoch });
  if (kt.state === "failed") return t("safety_kt_failed", { reason: kt.reason });
  return t("safety_kt_none");
}

function showSafetyNotice() {
  const notice = $("safety-notice");
  const phone = ui.open && ui.changedSafety.get(ui.open);
  notice.hidden = !phone;
  notice.textContent = phone ? t("safety_changed", { phone }) : "";
}

async function showSafetyNumber() {
  const digits = $("safety-digits");
  const chat = ui.open;
  digits.textContent = "…";
  $("safety-suite").textContent = "";
  $("safety-kt").textContent = "";
  try {
    const safety = JSON.parse(await ui.client.safetyNumber(chat));
    ui.changedSafety.delete(chat);
    // The user may have moved on to another chat meanwhile.
    if (ui.open === chat) {
      digits.textContent = safety.number;
      $("safety-suite").textContent = encryptionLine(safety);
      $("safety-kt").textContent = keyTransparencyLine(safety);
    }
    showSafetyNotice();
  } catch (e) {
    if (ui.open === chat) digits.textContent = "";
    showError(e);
  }
}

// ---- a group's members ----

async function renderGroup() {
  if (!ui.open || !ui.open.startsWith("group:") || $("group-panel").hidden) return;
  let info;
  try {
    info = JSON.parse(await ui.client.groupInfo(ui.open));
  } catch (e) {
    showError(e);
    return;
  }
  const list = $("group-members-list");
  list.replaceChildren();
  for (const m of info.members) {
    const item = document.createElement("li");
    item.dataset.phone = m.phone;
    const name = document.createElement("span");
    name.textContent = m.phone === ui.status.phone ? m.phone + " (" + t("you") + ")" : m.phone;
    item.append(name);
    if (m.admin) {
      const badge = document.createElement("span");
      badge.className = "admin";
      badge.textContent = t("admin");
      item.append(" ", badge);
    }
    if (info.you_are_admin && m.phone !== ui.status.phone) {
      const promote = document.createElement("button");
      promote.type = "button";
      promote.className = "promote";
      promote.textContent = m.admin ? t("dismiss_admin") : t("make_admin");
      promote.setAttribute("aria-label", t(m.admin ? "dismiss_admin_label" : "make_admin_label", { phone: m.phone }));
      promote.addEventListener("click", () => act(promote, { do: "set_admin", chat: ui.open, member: m.phone, admin: !m.admin }));
      item.append(" ", promote);
    }
    if (info.you_are_admin && m.phone !== ui.status.phone) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = t("remove");
      remove.setAttribute("aria-label", t("remove_member", { phone: m.phone }));
      remove.addEventListener("click", () =>
        doing(remove, async () => {
          await ui.client.removeMember(ui.open, m.phone);
          await renderGroup();
        }),
      );
      item.append(" ", remove);
    }
    list.append(item);
  }
  $("add-member-form").hidden = !info.you_are_admin;
  $("rename-form").hidden = !(info.you_are_admin || !info.admins_only);
  if (document.activeElement !== $("rename-title")) $("rename-title").value = info.title;
  $("invite").hidden = !info.you_are_admin;
  $("invite-shown").hidden = !info.invite_link;
  $("invite-link").value = info.invite_link ? inviteUrl(info.invite_link) : "";
  $("invite-approval").checked = info.invite_needs_approval;
  const requests = $("join-requests");
  requests.replaceChildren();
  $("join-requests-title").hidden = info.join_requests.length === 0;
  for (const phone of info.join_requests) {
    const item = document.createElement("li");
    const letIn = document.createElement("button");
    letIn.type = "button";
    letIn.textContent = t("let_in");
    letIn.setAttribute("aria-label", t("let_in_label", { phone }));
    letIn.addEventListener("click", () => act(letIn, { do: "approve_join", chat: ui.open, member: phone }));
    item.append(phone, " ", letIn);
    requests.append(item);
  }
}

function phoneList(raw) {
  return raw.split(/[,;\n]/).map((p) => p.trim()).filter(Boolean);
}

// ---- reading from the core ----

// Reads what is shown from the core again and redraws it; `list: false`
// leaves the chat list as it is (opening a chat, scrolling back), which on
// a profile of 1,000 chats is most of the time a redraw takes.
async function refresh({ list = true } = {}) {
  if (!ui.client || !ui.status.registered) return;
  try {
    if (list) ui.chats = JSON.parse(await ui.client.chats());
    if (ui.open) {
      const answer = JSON.parse(await ui.client.messages(ui.open, ui.limit));
      shownMessages = answer.messages;
      ui.complete = answer.complete;
    }
  } catch (e) {
    showError(e);
    return;
  }
  if (list) renderChats();
  else markOpenChat();
  renderMessages();
  renderGroup();
  // For measurements (BENCHMARKS.md): when the chat list was first drawn,
  // in milliseconds since the page started loading.
  if (ui.chats.length && !document.body.dataset.chatsShownMs) {
    document.body.dataset.chatsShownMs = performance.now().toFixed(0);
    noteMemory();
  }
  const open = ui.chats.find((c) => c.key === ui.open);
  // A message request tells its sender nothing until it is accepted.
  if (open && open.unread > 0 && !open.request && document.visibilityState === "visible" && ui.status.state === "online") {
    ui.client.markRead(ui.open).catch(() => {});
  }
}

// Many events in a row (a mailbox of 500 messages) cost one redraw.
function refreshSoon() {
  if (ui.refreshQueued) return;
  ui.refreshQueued = true;
  setTimeout(() => {
    ui.refreshQueued = false;
    refresh();
  }, 50);
}

function onEvent(json) {
  const event = JSON.parse(json);
  switch (event.type) {
    case "status":
      ui.status = event;
      showStatus();
      refreshSoon();
      break;
    case "changed":
      refreshSoon();
      break;
    case "transfer":
      showTransfer(event);
      break;
    case "message":
      if (document.visibilityState !== "visible" && "Notification" in window && Notification.permission === "granted") {
        // A notification's text is plain text, never markup.
        new Notification(t("new_message", { from: event.from }), { body: event.text, tag: event.chat });
      }
      break;
    case "open_failed":
      ui.openFailed = has("error_" + event.code) ? t("error_" + event.code) : event.message;
      showStatus();
      break;
    case "operator_notice":
      ui.notice = event;
      showOperatorNotice();
      break;
    case "notice_refused":
      ui.notice = { refused: event.reason };
      showOperatorNotice();
      break;
    case "key_transparency":
      ui.notice = { kt: event.warning };
      showOperatorNotice();
      break;
    case "security_notice":
      // 1:1 chats only: a group's members change devices all the time, and
      // a group has no single number to compare.
      if (!event.chat.startsWith("group:")) {
        ui.changedSafety.set(event.chat, event.phone);
        showSafetyNotice();
      }
      break;
    case "link_code": {
      const box = $("link-code");
      box.textContent = t("link_code", { code: event.code, minutes: Math.ceil(event.expires_in_secs / 60) });
      box.dataset.code = event.code;
      box.hidden = false;
      drawQr($("link-qr"), event.qr);
      break;
    }
  }
}

// The link code's QR code, drawn as one SVG path (no markup from strings).
function drawQr(holder, qr) {
  holder.replaceChildren();
  if (!qr) {
    holder.hidden = true;
    return;
  }
  const ns = "http://www.w3.org/2000/svg";
  const quiet = 4;
  const size = qr.width + 2 * quiet;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("width", "200");
  svg.setAttribute("height", "200");
  const background = document.createElementNS(ns, "rect");
  background.setAttribute("width", String(size));
  background.setAttribute("height", String(size));
  background.setAttribute("fill", "#fff");
  let d = "";
  for (let y = 0; y < qr.width; y++) {
    for (let x = 0; x < qr.width; x++) {
      if (qr.modules[y * qr.width + x] === "1") d += `M${x + quiet} ${y + quiet}h1v1h-1z`;
    }
  }
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  path.setAttribute("fill", "#000");
  svg.append(background, path);
  holder.append(svg);
  holder.hidden = false;
}

// ---- what the user does ----

function deviceName() {
  const ua = navigator.userAgent;
  const browser = /Firefox\//.test(ua) ? "Firefox" : /Edg\//.test(ua) ? "Edge" : /Chrom/.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : "Browser";
  return "Dak Web (" + browser + ")";
}

function busy(control, on) {
  const all = control.tagName === "FORM" ? control.querySelectorAll("button, input, textarea") : [control];
  for (const el of all) el.disabled = on;
}

// Does what the user asked with `control` (a form or a button) disabled
// meanwhile; an error is shown, and what they typed stays where it is.
async function doing(control, work) {
  busy(control, true);
  showError(null);
  try {
    await work();
  } catch (err) {
    showError(err);
  } finally {
    busy(control, false);
  }
}

function onSubmit(id, work) {
  const form = $(id);
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    doing(form, () => work(form));
  });
}

function wire() {
  $("language").addEventListener("change", (e) => {
    setLanguage(e.target.value);
    localStorage.setItem("dak.language", language());
    translatePage();
  });

  $("operator-notice-dismiss").addEventListener("click", () => {
    ui.notice = null;
    showOperatorNotice();
  });
  for (const id of ["notices-open", "operator-notice-all"]) {
    $(id).addEventListener("click", (e) => doing(e.target, openNotices));
  }

  $("notify").addEventListener("click", async () => {
    await Notification.requestPermission();
    showStatus();
  });

  onSubmit("register-form", async () => {
    const phone = $("phone").value.trim();
    const answer = JSON.parse(await ui.client.requestCode(server, phone));
    ui.pendingPhone = phone;
    $("verify-form").hidden = false;
    $("link-code").hidden = false;
    $("link-code").textContent = t("code_sent", { phone, minutes: Math.ceil(answer.expires_in_secs / 60) });
    $("code").focus();
  });

  onSubmit("verify-form", async () => {
    await ui.client.verify($("code").value.trim(), $("pin").value, deviceName());
    $("code").value = "";
    $("pin").value = "";
    $("link-code").hidden = true;
  });

  $("link").addEventListener("click", (e) =>
    doing(e.target, async () => {
      await ui.client.link(server, deviceName());
      $("link-code").hidden = true;
      $("link-qr").hidden = true;
    }),
  );

  $("new-chat-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const phone = $("new-chat").value.trim();
    if (!phone) return;
    // The core says what the number's chat is called (its normal form).
    try {
      const answer = JSON.parse(await ui.client.messages(phone, 1));
      $("new-chat").value = "";
      showError(null);
      await openChat(answer.chat);
    } catch (err) {
      showError(err);
    }
  });

  onSubmit("new-group-form", async (form) => {
    const group = JSON.parse(await ui.client.createGroup($("group-title").value.trim(), phoneList($("group-members").value)));
    $("group-title").value = "";
    $("group-members").value = "";
    form.closest("details").open = false;
    await openChat(group.key);
  });

  $("devices").addEventListener("toggle", renderDevices);
  onSubmit("approve-form", async () => {
    $("approve-result").hidden = true;
    // Approving also sends the new device this browser's recent chats.
    const linked = JSON.parse(await ui.client.approveLink($("approve-code").value.trim()));
    $("approve-code").value = "";
    $("approve-result").textContent = linked.history
      ? t("approve_done", { messages: numberFormat().format(linked.history.messages), chats: numberFormat().format(linked.history.chats) })
      : t("approve_no_history");
    $("approve-result").hidden = false;
    await renderDevices();
  });

  // Block (or unblock) the open 1:1 chat's number; report it (which blocks too).
  $("block").addEventListener("click", () => {
    const chat = ui.chats.find((c) => c.key === ui.open);
    if (chat) act($("block"), { do: "block", chat: chat.key, blocked: !chat.blocked });
  });
  $("report").addEventListener("click", () => {
    if (ui.open) act($("report"), { do: "report", chat: ui.open });
  });
  $("safety-toggle").addEventListener("click", () => {
    const panel = $("safety-panel");
    panel.hidden = !panel.hidden;
    $("safety-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) showSafetyNumber();
  });

  $("group-toggle").addEventListener("click", () => {
    const panel = $("group-panel");
    panel.hidden = !panel.hidden;
    $("group-toggle").setAttribute("aria-expanded", String(!panel.hidden));
    renderGroup();
  });

  onSubmit("rename-form", async () => {
    await ui.client.act({ do: "rename", chat: ui.open, title: $("rename-title").value.trim() });
    $("rename-title").blur();
    refreshSoon();
  });
  $("invite-create").addEventListener("click", (e) =>
    act(e.target, { do: "invite_link", chat: ui.open, approval: $("invite-approval").checked }),
  );
  $("invite-revoke").addEventListener("click", (e) => act(e.target, { do: "revoke_link", chat: ui.open }));
  $("leave-group").addEventListener("click", (e) =>
    doing(e.target, async () => {
      await ui.client.act({ do: "leave", chat: ui.open });
      ui.open = null;
      showStatus();
      refreshSoon();
    }),
  );
  onSubmit("join-form", async () => {
    $("join-result").hidden = true;
    await ui.client.act({ do: "join", link: inviteFrom($("join-link").value) });
    $("join-link").value = "";
    $("join-result").textContent = t("join_sent");
    $("join-result").hidden = false;
  });
  $("timer").addEventListener("change", (e) =>
    doing(e.target, async () => {
      try {
        await ui.client.act({ do: "set_timer", chat: ui.open, secs: Number(e.target.value) });
      } finally {
        refreshSoon();
      }
    }),
  );
  $("composing-cancel").addEventListener("click", () => {
    if (ui.composing && ui.composing.mode === "edit") $("message").value = "";
    ui.composing = null;
    showComposing();
  });
  $("forward-list").addEventListener("change", () => {
    // WhatsApp's limit: five chats at a time (the core checks it again).
    const boxes = [...$("forward-list").querySelectorAll("input")];
    const full = boxes.filter((b) => b.checked).length >= 5;
    for (const b of boxes) b.disabled = full && !b.checked;
  });
  onSubmit("forward-form", async () => {
    const chats = [...$("forward-list").querySelectorAll("input:checked")].map((b) => b.value);
    if (chats.length === 0) return;
    await ui.client.act({ do: "forward", id: ui.forwarding, chats });
    $("forward-dialog").close();
    refreshSoon();
  });
  $("forward-cancel").addEventListener("click", () => $("forward-dialog").close());

  onSubmit("add-member-form", async () => {
    const input = $("add-member");
    await ui.client.addMembers(ui.open, phoneList(input.value));
    input.value = "";
    await renderGroup();
  });

  $("back").addEventListener("click", () => {
    ui.open = null;
    showStatus();
    renderChats();
  });

  $("attach").addEventListener("click", () => $("file-input").click());
  $("file-input").addEventListener("change", async (e) => {
    const files = [...e.target.files];
    e.target.value = "";
    for (const f of files) await sendFile(f);
  });
  $("record").addEventListener("click", toggleRecording);
  // A file dropped on the chat, or an image pasted into the message box.
  $("messages").addEventListener("dragover", (e) => {
    if (ui.open && e.dataTransfer && [...e.dataTransfer.types].includes("Files")) e.preventDefault();
  });
  $("messages").addEventListener("drop", async (e) => {
    if (!ui.open || !e.dataTransfer || !e.dataTransfer.files.length) return;
    e.preventDefault();
    for (const f of [...e.dataTransfer.files]) await sendFile(f);
  });
  $("message").addEventListener("paste", async (e) => {
    const files = e.clipboardData ? [...e.clipboardData.files] : [];
    if (!files.length) return;
    e.preventDefault();
    for (const f of files) await sendFile(f);
  });

  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });

  // Scrolled to the top of what is shown: show earlier messages.
  $("messages").addEventListener("scroll", onMessagesScroll);

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") refresh();
  });
  window.addEventListener("online", () => ui.client && ui.client.reconnect());
}

let sending = false;

async function send() {
  const box = $("message");
  const text = box.value;
  const chat = ui.open;
  // One send at a time: Enter pressed twice while the server is slow
  // does not send the text twice.
  if (sending || !text.trim() || !chat) return;
  sending = true;
  $("send").disabled = true;
  showError(null);
  const composing = ui.composing;
  try {
    let answer = {};
    if (composing && composing.mode === "edit") await ui.client.act({ do: "edit", id: composing.id, text });
    else answer = JSON.parse(await ui.client.send(chat, text, composing ? composing.id : ""));
    if (ui.composing === composing) {
      ui.composing = null;
      showComposing();
    }
    // The box may have more in it by now; take out only what was sent.
    if (box.value === text) box.value = "";
    // The core's name for the chat (a number's normal form), if the user
    // is still in it.
    if (answer.chat && ui.open === chat) ui.open = answer.chat;
    refreshSoon();
  } catch (err) {
    showError(err);
  } finally {
    sending = false;
    $("send").disabled = false;
  }
}

// ---- start ----

async function start() {
  setLanguage(initialLanguage(localStorage.getItem("dak.language"), navigator.languages || [navigator.language]));
  wire();
  translatePage();
  if (typeof WebAssembly !== "object") {
    showError({ code: "", message: t("no_wasm") });
    return;
  }
  // Ask the browser not to evict the profile under storage pressure (it
  // may say no; the page then says so if the profile ever goes missing).
  if (navigator.storage && navigator.storage.persist) navigator.storage.persist().catch(() => {});
  // ?compact_over=BYTES: a diagnostic (the tests use 0); only a plain number.
  const over = new URLSearchParams(location.search).get("compact_over");
  const worker = "/web/worker.js" + (over !== null && /^\d{1,10}$/.test(over) ? "?compact_over=" + over : "");
  ui.client = new Core(new Worker(worker, { type: "module" }), onEvent);
  try {
    ui.status = JSON.parse(await ui.client.status());
  } catch (e) {
    showError(e);
    document.body.dataset.ready = "failed";
    return;
  }
  showStatus();
  // An invite link opened here (https://HOST/#join=...): offer to join.
  if (location.hash.startsWith("#join=")) {
    $("join-link").value = inviteFrom(location.hash);
    $("join").open = true;
    history.replaceState(null, "", location.pathname + location.search);
  }
  fetch("/web/bundle.json")
    .then((r) => r.json())
    .then((b) => {
      $("bundle").textContent = b.sha256.slice(0, 16);
      $("bundle").title = b.sha256;
    })
    .catch(() => {});
  document.body.dataset.ready = "true";
}

start().catch((e) => showError(e));
