// The sandbox's Slack client: draws /ui/state (polled) and turns every click and keystroke into a /ui/* call,
// which the local Slack delivers to the bot as the signed request Slack would send. Plain JS, no build step.
"use strict";

const POLL_MS = 500;
const LOG_KEEP = 1000; // inspector entries kept in the page

// The emoji shortcodes the bot uses (and a few common ones), as Slack's clients draw them.
const EMOJI = {
  white_check_mark: "✅", heavy_check_mark: "✔️", x: "❌", pencil2: "✏️", pencil: "📝", memo: "📝",
  raised_hand: "✋", hand: "✋", hourglass_flowing_sand: "⏳", hourglass: "⌛", warning: "⚠️", no_entry: "⛔",
  no_entry_sign: "🚫", ballot_box_with_check: "☑️", arrows_counterclockwise: "🔄", small_blue_diamond: "🔹",
  small_orange_diamond: "🔸", alarm_clock: "⏰", stopwatch: "⏱️", robot_face: "🤖", eyes: "👀", rocket: "🚀",
  tada: "🎉", bulb: "💡", information_source: "ℹ️", lock: "🔒", "+1": "👍", thumbsup: "👍", "-1": "👎",
  thumbsdown: "👎", fire: "🔥", rotating_light: "🚨", zap: "⚡", gear: "⚙️", mag: "🔍", link: "🔗", bell: "🔔",
  speech_balloon: "💬", clipboard: "📋", question: "❓", exclamation: "❗", heavy_multiplication_x: "✖️",
  red_circle: "🔴", large_green_circle: "🟢", large_yellow_circle: "🟡", white_circle: "⚪", checkered_flag: "🏁",
  wave: "👋", hammer_and_wrench: "🛠️", wrench: "🔧", package: "📦", chart_with_upwards_trend: "📈",
  arrow_right: "➡️", leftwards_arrow_with_hook: "↩️", repeat: "🔁", skull: "💀", sparkles: "✨", smile: "😄",
};

const ui = {
  user: localStorage.getItem("sandbox.user") || "U0ALICE",
  channel: localStorage.getItem("sandbox.channel") || "",
  thread: null, // ts of the open thread's root message
  tab: "chat",
  state: null,
  lastStateText: "",
  generation: 0, // bumped by every action and navigation: older poll answers are dropped
  autoOpen: null, // ts of a message we sent: its thread opens once the bot answers in it, unless the person chose first
  nav: 0, // bumped whenever the person opens or closes a thread or changes channel: cancels a pending autoOpen
  edits: {}, // message key -> edit count last drawn, to flash a message the bot just edited
  modalKey: null,
  log: [],
  logSeq: 0,
  logOpen: new Set(),
  fetchingLog: false,
};

const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------------------------------------- text

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

// Slack text escapes only these three; decode them before escaping for HTML.
function unslack(s) {
  return String(s ?? "").replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

function userName(id) {
  const u = ui.state?.users?.[id];
  return u ? u.name : id;
}

function displayName(id) {
  if (id === "USLACKBOT") return "Slackbot";
  const u = ui.state?.users?.[id];
  return u ? (u.is_bot ? u.name : u.real_name) : id;
}

function channelName(id) {
  const c = (ui.state?.channels || []).find((c) => c.id === id);
  return c ? c.name : null;
}

function emojiHtml(name) {
  const ch = EMOJI[name];
  return ch ? `<span class="emoji" title=":${esc(name)}:">${ch}</span>` : null;
}

// <@U…|name>, <#C…|name>, <!here>, <url|text>: what Slack's mrkdwn puts between angle brackets.
function angle(inner) {
  const bar = inner.indexOf("|");
  const target = bar < 0 ? inner : inner.slice(0, bar);
  const label = bar < 0 ? "" : inner.slice(bar + 1);
  if (target.startsWith("@")) {
    const id = target.slice(1);
    return `<span class="mention" data-user="${esc(id)}">@${esc(unslack(label) || userName(id))}</span>`;
  }
  if (target.startsWith("#")) {
    const id = target.slice(1);
    return `<span class="channel-link">#${esc(unslack(label) || channelName(id) || id)}</span>`;
  }
  if (target.startsWith("!")) {
    const cmd = target.slice(1).split("^")[0];
    if (["here", "channel", "everyone"].includes(cmd)) return `<span class="mention">@${cmd}</span>`;
    if (cmd.startsWith("subteam")) return `<span class="mention">${esc(unslack(label) || "@group")}</span>`;
    return esc(unslack(label) || inner);
  }
  if (/^(https?:|mailto:)/i.test(target)) {
    return `<a href="${esc(unslack(target))}" target="_blank" rel="noopener noreferrer">${esc(unslack(label || target))}</a>`;
  }
  return esc("<" + unslack(inner) + ">");
}

// Inline mrkdwn (no code spans): links and mentions, emoji, *bold*, _italic_, ~strike~, line breaks.
function inline(text) {
  const held = [];
  const hold = (html) => `\u0001${held.push(html) - 1}\u0002`;
  let s = text.replace(/<([^<>\n]+)>/g, (_, inner) => hold(angle(inner)));
  s = esc(unslack(s));
  s = s.replace(/:([a-z0-9_+\-]+):/g, (m, name) => {
    const html = emojiHtml(name);
    return html ? hold(html) : m;
  });
  s = s.replace(/(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])/g, "<b>$1</b>");
  s = s.replace(/(?<![\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])/g, "<i>$1</i>");
  s = s.replace(/(?<![\w~])~(?=\S)([^~\n]*?\S)~(?![\w~])/g, "<s>$1</s>");
  s = s.replace(/\n/g, "<br>");
  return s.replace(/\u0001(\d+)\u0002/g, (_, i) => held[Number(i)]);
}

function withCode(text) {
  return text
    .split(/`([^`\n]+)`/)
    .map((part, i) => (i % 2 ? `<code>${esc(unslack(part))}</code>` : inline(part)))
    .join("");
}

function mrkdwn(src) {
  const parts = String(src ?? "").split("```");
  return parts
    .map((part, i) => {
      const closed = i % 2 === 1 && i < parts.length - 1;
      if (closed) return `<pre>${esc(unslack(part.replace(/^\n/, "").replace(/\n$/, "")))}</pre>`;
      return withCode(i % 2 === 1 ? "```" + part : part);
    })
    .join("");
}

function plainText(obj) {
  if (!obj) return "";
  let s = esc(obj.text ?? "");
  if (obj.emoji !== false) s = s.replace(/:([a-z0-9_+\-]+):/g, (m, name) => emojiHtml(name) || m);
  return s.replace(/\n/g, "<br>");
}

function textObj(obj) {
  if (!obj) return "";
  return obj.type === "mrkdwn" ? `<span class="mrkdwn">${mrkdwn(obj.text)}</span>` : plainText(obj);
}

// ---------------------------------------------------------------------------------------------- Block Kit

function blocksHtml(blocks, ctx) {
  return `<div class="blocks">${blocks.map((b) => blockHtml(b, ctx)).join("")}</div>`;
}

function blockHtml(b, ctx) {
  switch (b.type) {
    case "header":
      return `<div class="b-header">${plainText(b.text)}</div>`;
    case "section": {
      let h = `<div class="b-section"><div class="b-section-main">`;
      if (b.text) h += `<div class="mrkdwn">${textObj(b.text)}</div>`;
      if (b.fields) h += `<div class="b-fields">${b.fields.map((f) => `<div>${textObj(f)}</div>`).join("")}</div>`;
      h += "</div>";
      if (b.accessory) h += `<div class="b-accessory">${elementHtml(b.accessory, b, ctx)}</div>`;
      return h + "</div>";
    }
    case "context":
      return `<div class="b-context">${(b.elements || [])
        .map((e) => (e.type === "image" ? `<span class="img-alt">[${esc(e.alt_text)}]</span>` : `<span class="mrkdwn">${textObj(e)}</span>`))
        .join("")}</div>`;
    case "divider":
      return `<hr class="b-divider">`;
    case "actions":
      return `<div class="b-actions" data-block-id="${esc(b.block_id)}">${(b.elements || []).map((e) => elementHtml(e, b, ctx)).join("")}</div>`;
    case "image":
      return `<div class="b-image">${b.title ? plainText(b.title) + " " : ""}<span class="img-alt">[image: ${esc(b.alt_text)}]</span></div>`;
    case "rich_text":
      return `<div class="mrkdwn">${richText(b)}</div>`;
    default:
      return `<div class="b-unknown">[${esc(b.type)} block]</div>`;
  }
}

function richText(b) {
  const el = (e) => {
    if (e.type === "text") {
      let s = esc(e.text).replace(/\n/g, "<br>");
      if (e.style?.code) s = `<code>${s}</code>`;
      if (e.style?.bold) s = `<b>${s}</b>`;
      if (e.style?.italic) s = `<i>${s}</i>`;
      if (e.style?.strike) s = `<s>${s}</s>`;
      return s;
    }
    if (e.type === "link") return `<a href="${esc(e.url)}" target="_blank" rel="noopener noreferrer">${esc(e.text || e.url)}</a>`;
    if (e.type === "user") return `<span class="mention">@${esc(userName(e.user_id))}</span>`;
    if (e.type === "channel") return `<span class="channel-link">#${esc(channelName(e.channel_id) || e.channel_id)}</span>`;
    if (e.type === "emoji") return emojiHtml(e.name) || `:${esc(e.name)}:`;
    if (e.elements) return e.elements.map(el).join("");
    return "";
  };
  return (b.elements || [])
    .map((sec) => {
      const inner = (sec.elements || []).map(el).join("");
      if (sec.type === "rich_text_preformatted") return `<pre>${inner}</pre>`;
      if (sec.type === "rich_text_quote") return `<blockquote>${inner}</blockquote>`;
      if (sec.type === "rich_text_list") return `<ul>${(sec.elements || []).map((i) => `<li>${el(i)}</li>`).join("")}</ul>`;
      return `<div>${inner}</div>`;
    })
    .join("");
}

function ticked(el, block, ctx) {
  const fromState = ctx.ticks?.[block.block_id]?.[el.action_id];
  if (fromState) return new Set(fromState);
  return new Set((el.initial_options || []).map((o) => o.value));
}

function elementHtml(el, block, ctx) {
  const ids = `data-block-id="${esc(block.block_id)}" data-action-id="${esc(el.action_id)}"`;
  switch (el.type) {
    case "button": {
      const style = el.style === "primary" ? " primary" : el.style === "danger" ? " danger" : "";
      const act = ctx.interactive ? `data-act="click" ${ids}` : "disabled";
      return `<button type="button" class="btn${style}" ${act} title="${esc(el.value ? "value: " + el.value : "")}">${plainText(el.text)}</button>`;
    }
    case "checkboxes": {
      const chosen = ticked(el, block, ctx);
      const opts = (el.options || []).map((o) => {
        const act = ctx.interactive ? `data-act="tick" ${ids} data-value="${esc(o.value)}"` : "disabled";
        return `<label class="cb"><input type="checkbox" ${act} ${chosen.has(o.value) ? "checked" : ""}>` +
          `<span class="cb-text">${textObj(o.text)}${o.description ? `<span class="cb-desc">${textObj(o.description)}</span>` : ""}</span></label>`;
      });
      return `<div class="b-checkboxes" ${ids}>${opts.join("")}</div>`;
    }
    case "static_select":
    case "overflow":
    case "radio_buttons": {
      // Shown, but the local Slack has no delivery for these in messages; the bot does not use them there.
      const opts = (el.options || []).map((o) => `<option>${esc(o.text?.text)}</option>`).join("");
      return `<select class="b-select" disabled title="not interactive in the sandbox">${opts}</select>`;
    }
    case "image":
      return `<span class="img-alt">[image: ${esc(el.alt_text)}]</span>`;
    default:
      return `<span class="b-unknown">[${esc(el.type)}]</span>`;
  }
}

// ---------------------------------------------------------------------------------------------- messages

function avatarHtml(id) {
  if (id === ui.state.bot_user_id) return `<div class="avatar" style="background:#4a154b">🤖</div>`;
  if (id === "USLACKBOT") return `<div class="avatar" style="background:#2eb67d">💬</div>`;
  const colors = ["#e8912d", "#2bac76", "#1264a3", "#cd2553", "#8b572a", "#3c989f"];
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `<div class="avatar" style="background:${colors[h % colors.length]}">${esc(displayName(id).slice(0, 1).toUpperCase())}</div>`;
}

function timeOf(ts) {
  const d = new Date(parseFloat(ts) * 1000);
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// One message as HTML; `where` is "channel", "root" or "reply".
function messageHtml(m, where) {
  const isBot = m.user === ui.state.bot_user_id || !!m.bot_id;
  const classes = ["msg"];
  if (m.ephemeral) classes.push("ephemeral");
  if (where === "channel" && !m.ephemeral) classes.push("clickable");
  if (where === "root") classes.push("root");
  const ctx = { ticks: m.ticks, interactive: true };
  const body = m.blocks && m.blocks.length ? blocksHtml(m.blocks, ctx) : `<div class="mrkdwn">${mrkdwn(m.text)}</div>`;
  const n = m.reply_count || 0;
  const replies = where === "channel" && n ? `<button type="button" class="replies" data-open-thread="${esc(m.ts)}">${n} ${n === 1 ? "reply" : "replies"}</button>` : "";
  const hover = where === "channel" && !m.ephemeral ? `<div class="msg-actions"><button type="button" data-open-thread="${esc(m.ts)}">💬 Reply in thread</button></div>` : "";
  return (
    `<div class="${classes.join(" ")}" data-ts="${esc(m.ts)}" data-channel="${esc(m.channel)}" data-user="${esc(m.user)}"${m.ephemeral ? ` data-source="${esc(m.source)}"` : ""}>` +
    avatarHtml(m.user) +
    `<div class="msg-main">` +
    (m.ephemeral ? `<div class="only-you">👁 Only visible to you</div>` : "") +
    `<div class="msg-head"><span class="name">${esc(displayName(m.user))}</span>${isBot ? '<span class="app-badge">APP</span>' : ""}` +
    `<span class="time">${timeOf(m.ts)}</span>${m.edited ? '<span class="edited">(edited)</span>' : ""}</div>` +
    `<div class="msg-body">${body}</div>${replies}</div>${hover}</div>`
  );
}

// Keyed update of a list: unchanged messages keep their DOM nodes (and focus, scroll, animations).
function reconcile(container, items) {
  const existing = new Map();
  for (const node of [...container.children]) {
    if (node.dataset.key) existing.set(node.dataset.key, node);
    else node.remove();
  }
  let prev = null;
  const keep = new Set();
  for (const { key, html, flash } of items) {
    let node = existing.get(key);
    if (!node || node._html !== html) {
      const tmp = document.createElement("div");
      tmp.innerHTML = html;
      const fresh = tmp.firstElementChild;
      fresh.dataset.key = key;
      fresh._html = html;
      if (node) node.replaceWith(fresh);
      node = fresh;
      if (flash) {
        node.classList.add("flash");
        setTimeout(() => node.classList.remove("flash"), 1700);
      }
    }
    keep.add(key);
    const want = prev ? prev.nextSibling : container.firstChild;
    if (want !== node) container.insertBefore(node, want);
    prev = node;
  }
  for (const [key, node] of existing) if (!keep.has(key)) node.remove();
}

function messageItems(list, where) {
  return list.map((m) => {
    const key = `${where === "root" ? "root" : "m"}:${m.ts}`;
    const seen = ui.edits[key];
    ui.edits[key] = m.edited || 0;
    return { key, html: messageHtml(m, where), flash: seen !== undefined && (m.edited || 0) > seen };
  });
}

function byTs(a, b) {
  return parseFloat(a.ts) - parseFloat(b.ts);
}

function stickToBottom(container, update) {
  const atBottom = container.scrollHeight - container.scrollTop - container.clientHeight < 120;
  update();
  if (atBottom) container.scrollTop = container.scrollHeight;
}

// ---------------------------------------------------------------------------------------------- drawing

function render() {
  const st = ui.state;
  $("#model").textContent = "Model: " + st.model;
  $("#log-count").textContent = String(st.log_seq);
  renderPeople(st);
  renderSidebar(st);
  renderChannel(st);
  renderThread(st);
  renderModal(st);
  if (ui.tab === "inspector" && st.log_seq > ui.logSeq) fetchLog();
}

function renderPeople(st) {
  const select = $("#acting-user");
  const html = st.personas.map((p) => `<option value="${esc(p.user_id)}">${esc(p.name)} (${esc(p.role)})</option>`).join("");
  if (select._html !== html) {
    select.innerHTML = html;
    select._html = html;
  }
  select.value = ui.user;
}

function renderSidebar(st) {
  const link = (c) => {
    const label = c.kind === "dm" ? `🤖 ${esc(c.name)}<span class="badge">APP</span>` : `# ${esc(c.name)}`;
    return `<li><a href="#" data-channel="${esc(c.id)}" class="${c.id === st.channel ? "active" : ""}">${label}</a></li>`;
  };
  const channels = st.channels.filter((c) => c.kind === "channel").map(link).join("");
  const dms = st.channels.filter((c) => c.kind === "dm").map(link).join("");
  if ($("#channel-list")._html !== channels) $("#channel-list").innerHTML = $("#channel-list")._html = channels;
  if ($("#dm-list")._html !== dms) $("#dm-list").innerHTML = $("#dm-list")._html = dms;
  const notes = st.notes.map((n) => `<p>${esc(n)}</p>`).join("") + "<p>Everything you do here reaches the bot as the signed request Slack would send; see the Inspector.</p>";
  if ($("#notes")._html !== notes) $("#notes").innerHTML = $("#notes")._html = notes;
}

const EXAMPLES = [
  "@chatops run the disk-usage runbook and post a summary to #ops",
  "@chatops check memory and load",
  "/chatops help",
];

function renderChannel(st) {
  const current = st.channels.find((c) => c.id === st.channel);
  const isDm = current?.kind === "dm";
  $("#channel-name").textContent = isDm ? `🤖 ${current.name}` : `# ${current?.name ?? ""}`;
  $("#composer-input").placeholder = isDm ? `Message ${current.name}` : `Message #${current?.name ?? ""}`;
  const status = $("#bot-status");
  status.textContent = st.bot_connected ? "bot connected" : "the bot is starting…";
  status.classList.toggle("down", !st.bot_connected);
  ui.channel = st.channel;
  const list = [...st.messages, ...st.ephemerals.filter((e) => !e.thread_ts)].sort(byTs);
  const items = messageItems(list, "channel");
  if (!list.length) {
    const examples = (isDm ? EXAMPLES.map((e) => e.replace(/^@chatops /, "")) : EXAMPLES)
      .map((e) => `<button type="button" class="example" data-example="${esc(e)}">${esc(e)}</button>`)
      .join("");
    const title = isDm ? `This is your conversation with ${esc(current?.name)}` : `This is the very beginning of #${esc(current?.name)}`;
    items.push({ key: "empty:" + st.channel, html: `<div class="empty"><h3>${title}</h3>Ask the bot something; try:<div class="examples">${examples}</div></div>` });
  }
  const container = $("#messages");
  stickToBottom(container, () => reconcile(container, items));
  if (ui.autoOpen && !ui.thread) {
    const sent = st.messages.find((m) => m.ts === ui.autoOpen);
    if (sent && sent.reply_count) {
      ui.autoOpen = null;
      showThread(sent.ts);
    }
  }
}

function renderThread(st) {
  const pane = $("#thread");
  // Only the thread the page asked for: an answer about another (or none) never shows the pane.
  if (!ui.thread || !st.thread || st.thread.root.ts !== ui.thread || ui.tab !== "chat") {
    pane.hidden = true;
    if (ui.thread && !st.thread && ui.state && ui.lastThreadMissing++ > 3) ui.thread = null; // root deleted
    return;
  }
  ui.lastThreadMissing = 0;
  pane.hidden = false;
  const here = st.channels.find((c) => c.id === st.channel);
  $("#thread-channel").textContent = here?.kind === "dm" ? `with ${here.name}` : `#${here?.name ?? ""}`;
  const replies = [...st.thread.replies, ...st.ephemerals.filter((e) => e.thread_ts === ui.thread)].sort(byTs);
  const items = [...messageItems([st.thread.root], "root")];
  items.push({ key: "divider", html: `<div class="reply-divider">${replies.length} ${replies.length === 1 ? "reply" : "replies"}</div>` });
  items.push(...messageItems(replies, "reply"));
  const container = $("#thread-messages");
  stickToBottom(container, () => reconcile(container, items));
}

// ---------------------------------------------------------------------------------------------- modal

function controlHtml(el, bid) {
  const aid = esc(el.action_id);
  const common = `id="f-${esc(bid)}" data-action-id="${aid}"`;
  const ph = el.placeholder ? ` placeholder="${esc(el.placeholder.text)}"` : "";
  switch (el.type) {
    case "plain_text_input":
      if (el.multiline) return `<textarea ${common} data-input="text"${ph}>${esc(el.initial_value ?? "")}</textarea>`;
      return `<input type="text" ${common} data-input="text"${ph} value="${esc(el.initial_value ?? "")}">`;
    case "number_input":
      return `<input type="number" ${common} data-input="text" step="${el.is_decimal_allowed ? "any" : "1"}"${ph} value="${esc(el.initial_value ?? "")}">`;
    case "static_select": {
      const chosen = el.initial_option?.value;
      const opts = (el.options || []).map((o) => `<option value="${esc(o.value)}"${o.value === chosen ? " selected" : ""}>${esc(o.text?.text)}</option>`).join("");
      return `<select ${common} data-input="select"><option value=""${chosen === undefined ? " selected" : ""}>${esc(el.placeholder?.text || "Select an option")}</option>${opts}</select>`;
    }
    case "checkboxes":
    case "radio_buttons": {
      const kind = el.type === "checkboxes" ? "checkbox" : "radio";
      const initial = new Set(el.type === "checkboxes" ? (el.initial_options || []).map((o) => o.value) : [el.initial_option?.value]);
      const opts = (el.options || []).map((o) =>
        `<label class="cb"><input type="${kind}" name="f-${esc(bid)}" value="${esc(o.value)}"${initial.has(o.value) ? " checked" : ""}>` +
        `<span class="cb-text">${textObj(o.text)}${o.description ? `<span class="cb-desc">${textObj(o.description)}</span>` : ""}</span></label>`);
      return `<div class="b-checkboxes" ${common} data-input="${kind === "checkbox" ? "checkboxes" : "radio"}">${opts.join("")}</div>`;
    }
    default:
      return `<input type="text" ${common} data-input="text" value="${esc(el.initial_value ?? "")}">`;
  }
}

function modalHtml(view) {
  const body = (view.blocks || [])
    .map((b) => {
      if (b.type !== "input") return blockHtml(b, { interactive: false });
      const optional = b.optional ? ' <span class="optional">(optional)</span>' : "";
      return `<div class="field" data-block-id="${esc(b.block_id)}">` +
        `<label class="field-label" for="f-${esc(b.block_id)}">${plainText(b.label)}${optional}</label>` +
        controlHtml(b.element, b.block_id) +
        (b.hint ? `<div class="hint">${plainText(b.hint)}</div>` : "") +
        `<div class="field-error" role="alert"></div></div>`;
    })
    .join("");
  const close = esc(view.close?.text || (view.submit ? "Cancel" : "Close"));
  const submit = view.submit ? `<button type="submit" class="btn primary" id="modal-submit">${esc(view.submit.text)}</button>` : "";
  return `<div class="overlay"><form class="modal" id="modal" role="dialog" aria-modal="true" data-view-id="${esc(view.id)}" novalidate>` +
    `<div class="modal-head"><span class="title">${plainText(view.title)}</span><button type="button" class="close-x" data-modal-close aria-label="Close">×</button></div>` +
    `<div class="modal-body"><div class="modal-error" role="alert" hidden></div>${body}</div>` +
    `<div class="modal-foot"><button type="button" class="btn" data-modal-close>${close}</button>${submit}</div></form></div>`;
}

function renderModal(st) {
  const root = $("#modal-root");
  const v = st.view;
  if (!v) {
    if (ui.modalKey) root.innerHTML = "";
    ui.modalKey = null;
    return;
  }
  // Redraw only for another view (or views.update): what the person typed must survive the polls.
  const key = `${v.view.id}|${v.view.hash}`;
  if (key !== ui.modalKey) {
    root.innerHTML = modalHtml(v.view);
    ui.modalKey = key;
  }
  const errors = v.errors || {};
  const shown = new Set();
  for (const field of root.querySelectorAll(".field")) {
    const message = errors[field.dataset.blockId];
    field.classList.toggle("has-error", !!message);
    field.querySelector(".field-error").textContent = message || "";
    if (message) shown.add(field.dataset.blockId);
  }
  const rest = Object.entries(errors).filter(([bid]) => !shown.has(bid)).map(([, m]) => m);
  const general = root.querySelector(".modal-error");
  general.hidden = !rest.length;
  general.textContent = rest.join(" ");
}

function modalValues(form) {
  const values = {};
  for (const field of form.querySelectorAll(".field")) {
    const control = field.querySelector("[data-input]");
    if (!control) continue;
    let value;
    if (control.dataset.input === "checkboxes") value = [...control.querySelectorAll("input:checked")].map((i) => i.value);
    else if (control.dataset.input === "radio") value = control.querySelector("input:checked")?.value ?? null;
    else if (control.dataset.input === "select") value = control.value || null;
    else value = control.value; // "" stays "": a cleared field is submitted empty, as in Slack
    values[field.dataset.blockId] = { [control.dataset.actionId]: value };
  }
  return values;
}

// ---------------------------------------------------------------------------------------------- actions

function toast(message, kind = "") {
  const node = document.createElement("div");
  node.className = `toast ${kind}`;
  node.textContent = message;
  $("#toasts").appendChild(node);
  setTimeout(() => node.remove(), 6000);
}

async function post(path, data) {
  ui.generation++;
  try {
    const resp = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user: ui.user, ...data }) });
    const answer = await resp.json().catch(() => ({ ok: false, error: `HTTP ${resp.status}` }));
    if (!answer.ok) toast(`Not sent: ${answer.error}`, "error");
    for (const d of answer.deliveries || []) {
      if (d.status !== 200 || d.error) toast(`The bot answered ${d.status || "nothing"} to ${d.kind}${d.error ? ": " + d.error : ""}`, "error");
    }
    return answer;
  } catch (err) {
    toast(`The sandbox is not answering (${err.message}); is python -m sandbox still running?`, "error");
    return { ok: false };
  } finally {
    refresh();
  }
}

async function send(text, threadTs) {
  // Open the new message's thread for the person only if no thread is open and they have not opened or closed one
  // (or changed channel) while the message was on its way: what they chose themselves wins, and a closed thread stays
  // closed. (An armed autoOpen that outlived a click on the message used to reopen its thread when it was closed.)
  const nav = ui.nav;
  const idle = !ui.thread && !threadTs;
  const answer = await post("/ui/send", { channel: ui.channel, text, thread_ts: threadTs || null });
  if (answer.ok && answer.ts && idle && nav === ui.nav && !ui.thread) ui.autoOpen = answer.ts;
  return answer;
}

function showThread(ts) {
  ui.thread = ts;
  ui.lastThreadMissing = 0;
  refresh();
}

// The person opens a thread, or closes it (ts null): their choice overrides a pending auto-open.
function openThread(ts) {
  ui.nav++;
  ui.autoOpen = null;
  if (!ts) $("#thread").hidden = true; // at once, not a poll later
  showThread(ts);
}

function setTab(tab) {
  ui.tab = tab;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === tab);
  $("#chat").hidden = tab !== "chat";
  $("#inspector").hidden = tab !== "inspector";
  if (tab === "inspector") fetchLog();
  if (ui.state) render();
}

function wireComposer(form, input, threadTs) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    const answer = await send(text, threadTs());
    if (!answer.ok) input.value = text;
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
}

function wire() {
  wireComposer($("#composer"), $("#composer-input"), () => null);
  wireComposer($("#thread-composer"), $("#thread-input"), () => ui.thread);
  $("#thread-close").addEventListener("click", () => openThread(null));
  $("#acting-user").addEventListener("change", (e) => {
    ui.user = e.target.value;
    localStorage.setItem("sandbox.user", ui.user);
    ui.modalKey = null;
    $("#modal-root").innerHTML = "";
    refresh();
  });
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => setTab(b.dataset.tab));
  $("#log-kind").addEventListener("change", renderLog);
  $("#log-filter").addEventListener("input", renderLog);

  document.addEventListener("click", async (e) => {
    const t = e.target;
    const channelLink = t.closest("[data-channel]");
    if (channelLink && channelLink.tagName === "A") {
      e.preventDefault();
      ui.channel = channelLink.dataset.channel;
      localStorage.setItem("sandbox.channel", ui.channel);
      openThread(null);
      return;
    }
    // A permalink to this local Slack (e.g. /chatops pending's "open the card") opens the thread here.
    const link = t.closest("a[href]");
    const permalink = link && new URL(link.href, location.href);
    const archive = permalink && permalink.origin === location.origin && permalink.pathname.match(/^\/archives\/([A-Z0-9]+)\/p(\d{10})(\d{6})$/);
    if (archive) {
      e.preventDefault();
      ui.channel = archive[1];
      ui.tab === "chat" || setTab("chat");
      openThread(permalink.searchParams.get("thread_ts") || `${archive[2]}.${archive[3]}`);
      return;
    }
    const example = t.closest("[data-example]");
    if (example) {
      $("#composer-input").value = example.dataset.example;
      $("#composer-input").focus();
      return;
    }
    const button = t.closest('button[data-act="click"]');
    if (button) {
      const msg = button.closest(".msg");
      button.disabled = true;
      button.classList.add("busy");
      await post("/ui/click", { channel: msg.dataset.channel, ts: msg.dataset.ts, action_id: button.dataset.actionId, block_id: button.dataset.blockId });
      // The same node stays when the bot leaves the message as it was (e.g. a refused click): make it usable again.
      button.disabled = false;
      button.classList.remove("busy");
      return;
    }
    if (t.closest("[data-modal-close]")) {
      const form = $("#modal");
      if (form) await post("/ui/close", { view_id: form.dataset.viewId });
      return;
    }
    const opener = t.closest("[data-open-thread]");
    if (opener) {
      openThread(opener.dataset.openThread);
      return;
    }
    const entry = t.closest(".log-entry > .log-row");
    if (entry) {
      const seq = Number(entry.parentElement.dataset.seq);
      if (ui.logOpen.has(seq)) ui.logOpen.delete(seq);
      else ui.logOpen.add(seq);
      renderLog();
      return;
    }
    // A click anywhere else on a channel message opens its thread, unless it was on a control or a selection.
    const msg = t.closest("#messages .msg.clickable");
    if (msg && !t.closest("button, input, select, a, label, textarea") && !String(window.getSelection())) openThread(msg.dataset.ts);
  });

  document.addEventListener("change", (e) => {
    const box = e.target.closest('input[data-act="tick"]');
    if (!box) return;
    const msg = box.closest(".msg");
    post("/ui/tick", { channel: msg.dataset.channel, ts: msg.dataset.ts, block_id: box.dataset.blockId, action_id: box.dataset.actionId, value: box.dataset.value, checked: box.checked });
  });

  document.addEventListener("submit", async (e) => {
    if (e.target.id !== "modal") return;
    e.preventDefault();
    const form = e.target;
    const submit = $("#modal-submit");
    if (submit) submit.disabled = true;
    await post("/ui/submit", { view_id: form.dataset.viewId, values: modalValues(form) });
    if (submit) submit.disabled = false;
  });

  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && $("#modal")) $("#modal [data-modal-close]").click();
  });
}

// ---------------------------------------------------------------------------------------------- polling

async function poll() {
  const generation = ui.generation;
  const query = new URLSearchParams({ user: ui.user });
  if (ui.channel) query.set("channel", ui.channel);
  if (ui.thread) query.set("thread", ui.thread);
  let text;
  try {
    const resp = await fetch("/ui/state?" + query, { cache: "no-store" });
    text = await resp.text();
  } catch (err) {
    $("#bot-status").textContent = "the sandbox is not answering";
    $("#bot-status").classList.add("down");
    return;
  }
  // Something happened since this poll started: its answer may be older than what the page shows.
  if (generation !== ui.generation || text === ui.lastStateText) return;
  const state = JSON.parse(text);
  if (!state.ok) {
    if (state.error === "user_not_found") ui.user = "U0ALICE";
    return;
  }
  ui.lastStateText = text;
  ui.state = state;
  render();
}

function refresh() {
  ui.generation++;
  ui.lastStateText = "";
  return poll();
}

function loop() {
  poll().finally(() => setTimeout(loop, POLL_MS));
}

// ---------------------------------------------------------------------------------------------- inspector

async function fetchLog() {
  if (ui.fetchingLog) return;
  ui.fetchingLog = true;
  try {
    const resp = await fetch(`/ui/calls?since=${ui.logSeq}`, { cache: "no-store" });
    const answer = await resp.json();
    if (answer.entries?.length) {
      ui.log = [...answer.entries, ...ui.log].slice(0, LOG_KEEP);
      ui.logSeq = Math.max(ui.logSeq, ...answer.entries.map((e) => e.seq));
      renderLog();
    }
  } finally {
    ui.fetchingLog = false;
  }
}

function pretty(value) {
  if (typeof value === "string") {
    try {
      return JSON.stringify(JSON.parse(value), null, 2);
    } catch {
      return value;
    }
  }
  return JSON.stringify(value, null, 2);
}

function resultOf(e) {
  if (e.error) return { text: e.error, bad: true };
  if (e.kind === "api" || e.kind === "response_url") {
    const r = e.response || {};
    return r.ok ? { text: "ok" } : { text: r.error || "error", bad: true };
  }
  const body = e.response?.body || "";
  return { text: body ? body.slice(0, 160) : "(empty body: acknowledged)", bad: e.status !== 200 };
}

function logEntryHtml(e) {
  const res = resultOf(e);
  const time = new Date(e.time * 1000);
  const clock = time.toLocaleTimeString([], { hour12: false }) + "." + String(time.getMilliseconds()).padStart(3, "0");
  const open = ui.logOpen.has(e.seq);
  let detail = "";
  if (open) {
    const request = e.kind === "api" ? { http_method: e.http_method, params: e.params } : e.kind === "response_url" ? e.params : e.request;
    const responseText = e.kind === "delivery"
      ? `HTTP ${e.status || "(no answer)"}\n${pretty(e.response?.headers || {})}\n\n${e.response?.body ? pretty(e.response.body) : "(empty body)"}`
      : pretty(e.response);
    detail = `<div class="log-detail"><div><h4>Request</h4><pre>${esc(pretty(request))}</pre></div>` +
      `<div><h4>Response</h4><pre>${esc(responseText)}</pre></div></div>`;
  }
  return `<div class="log-entry${open ? " open" : ""}" data-seq="${e.seq}"><div class="log-row">` +
    `<span class="seq">#${e.seq}</span><span class="time">${clock}</span><span class="kind kind-${esc(e.kind)}">${esc(e.kind)}</span>` +
    `<span class="method" title="${esc(e.method)}">${esc(e.method)}</span><span class="status${e.status !== 200 ? " bad" : ""}">${e.status}</span>` +
    `<span class="latency">${Number(e.latency_ms ?? 0).toFixed(1)} ms</span><span class="result${res.bad ? " bad" : ""}">${esc(res.text)}</span></div>${detail}</div>`;
}

function renderLog() {
  const kind = $("#log-kind").value;
  const filter = $("#log-filter").value.trim().toLowerCase();
  const shown = ui.log.filter((e) => (!kind || e.kind === kind) && (!filter || String(e.method).toLowerCase().includes(filter)));
  reconcile($("#log-list"), shown.map((e) => ({ key: "log:" + e.seq, html: logEntryHtml(e) })));
}

wire();
loop();
