/*! postbell-inbox: a drop-in inbox for postbell (a web component, no framework).
 *
 *   <script src="https://notify.example.org/static/postbell-inbox.js" defer></script>
 *   <postbell-inbox api="https://notify.example.org" recipient="user-1"
 *                   token="<recipient token>"></postbell-inbox>
 *
 * A bell with the unread badge and a panel with the items; mark read, mark all read,
 * archive; live over the inbox stream. Attributes, events, CSS custom properties and
 * parts: docs/inbox.md, "Drop-in widget". The page's origin must be listed in
 * POSTBELL_CORS_ORIGINS when it differs from postbell's.
 */
(() => {
  "use strict";
  if (customElements.get("postbell-inbox")) return;

  // The origin this script came from: the default for the api attribute.
  const SCRIPT_ORIGIN = (() => {
    try {
      return new URL(document.currentScript.src).origin;
    } catch {
      return location.origin;
    }
  })();

  const LABELS = {
    bell: "Notifications",
    unread: (n) => (n === 1 ? "1 unread" : `${n} unread`),
    announceCount: (n) =>
      n === 0 ? "No unread notifications" : n === 1 ? "1 unread notification" : `${n} unread notifications`,
    announceNew: (title) => `New notification: ${title}`,
    heading: "Notifications",
    markAllRead: "Mark all read",
    markRead: "Mark read",
    markUnread: "Mark unread",
    archive: "Archive",
    unreadItem: "Unread",
    empty: "You're all caught up.",
    loadMore: "Show more",
    loading: "Loading…",
    offline: "Reconnecting…",
    failed: "Could not load notifications.",
    retry: "Retry",
  };

  const STYLE = `
    :host {
      --_bg: var(--postbell-panel-bg, #ffffff);
      --_fg: var(--postbell-panel-color, #1f2328);
      --_muted: var(--postbell-muted-color, #59636e);
      --_border: var(--postbell-border-color, #d0d7de);
      --_accent: var(--postbell-accent-color, #0969da);
      --_unread: var(--postbell-unread-bg, #eef4ff);
      --_hover: var(--postbell-hover-bg, #f6f8fa);
      --_radius: var(--postbell-radius, 10px);
      display: inline-block;
      position: relative;
      font: var(--postbell-font, 400 15px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
    }
    [hidden] { display: none !important; }
    button { font: inherit; color: inherit; cursor: pointer; }
    :focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
    .sr { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; border: 0;
          overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
    .bell {
      position: relative; display: inline-grid; place-items: center;
      width: calc(var(--postbell-bell-size, 24px) + 16px); height: calc(var(--postbell-bell-size, 24px) + 16px);
      padding: 0; border: 0; border-radius: 50%;
      background: var(--postbell-bell-bg, transparent); color: var(--postbell-bell-color, currentColor);
    }
    .bell:hover { background: var(--postbell-bell-hover-bg, rgba(127, 127, 127, .15)); }
    .bell svg { width: var(--postbell-bell-size, 24px); height: var(--postbell-bell-size, 24px); }
    .badge {
      position: absolute; top: 2px; right: 0; min-width: 18px; height: 18px; padding: 0 5px;
      box-sizing: border-box; border-radius: 9px; font-size: 11px; font-weight: 700; line-height: 18px;
      text-align: center; background: var(--postbell-badge-bg, #cf222e); color: var(--postbell-badge-color, #ffffff);
      box-shadow: 0 0 0 2px var(--postbell-badge-ring, #ffffff);
    }
    .panel {
      position: absolute; top: calc(100% + 6px); z-index: var(--postbell-z-index, 1000);
      inset-inline-end: 0; width: var(--postbell-panel-width, 380px);
      max-width: calc(100vw - 16px); max-height: var(--postbell-panel-max-height, 480px);
      display: flex; flex-direction: column; box-sizing: border-box;
      background: var(--_bg); color: var(--_fg); border: 1px solid var(--_border);
      border-radius: var(--_radius); overflow: hidden;
      box-shadow: var(--postbell-panel-shadow, 0 8px 24px rgba(0, 0, 0, .16));
      text-align: start;
    }
    :host([align="start"]) .panel { inset-inline-end: auto; inset-inline-start: 0; }
    @media (max-width: 480px) {
      .panel { position: fixed; top: var(--_top, 56px); left: 8px; right: 8px; width: auto;
               max-width: none; max-height: calc(100vh - var(--_top, 56px) - 8px); }
    }
    header { display: flex; align-items: center; gap: 8px; padding: 10px 12px 10px 16px;
             border-bottom: 1px solid var(--_border); }
    h2 { flex: 1; margin: 0; font-size: 16px; font-weight: 600; }
    .link { border: 0; background: none; padding: 4px 6px; border-radius: 6px; color: var(--_accent);
            font-size: 13px; }
    .link:hover { background: var(--_hover); }
    .link:disabled { color: var(--_muted); cursor: default; background: none; }
    .status { padding: 6px 16px; font-size: 13px; color: var(--_muted); border-bottom: 1px solid var(--_border); }
    ul { list-style: none; margin: 0; padding: 0; overflow-y: auto; overscroll-behavior: contain; }
    li { display: flex; gap: 8px; padding: 10px 8px 10px 16px; border-bottom: 1px solid var(--_border); }
    li:last-child { border-bottom: 0; }
    li.unread { background: var(--_unread); }
    li:hover { background: var(--_hover); }
    li.unread:hover { background: color-mix(in srgb, var(--_unread) 80%, var(--_fg) 6%); }
    .main { flex: 1; min-width: 0; overflow-wrap: anywhere; }
    .title { display: block; font-weight: 600; color: inherit; text-decoration: none; }
    a.title:hover { text-decoration: underline; }
    .body { margin: 2px 0 0; color: var(--_fg); }
    .title + .body { color: var(--_muted); }
    time { display: block; margin-top: 4px; font-size: 12px; color: var(--_muted); }
    .dot { display: inline-block; width: 8px; height: 8px; margin-inline-end: 6px; border-radius: 50%;
           background: var(--_accent); vertical-align: 1px; }
    .actions { display: flex; flex-direction: column; gap: 2px; }
    .icon { display: grid; place-items: center; width: 30px; height: 30px; padding: 0; border: 0;
            border-radius: 6px; background: none; color: var(--_muted); }
    .icon:hover { background: rgba(127, 127, 127, .16); color: var(--_fg); }
    .icon svg { width: 16px; height: 16px; }
    .empty { padding: 28px 16px; text-align: center; color: var(--_muted); }
    .more { margin: 6px auto 10px; }
  `;

  const ICONS = {
    bell: '<path d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2Z"/>',
    read: '<path d="M9 16.2 4.8 12l-1.4 1.4L9 19 21 7l-1.4-1.4L9 16.2Z"/>',
    unread: '<circle cx="12" cy="12" r="5"/>',
    archive: '<path d="M20.5 5.2 19.1 3.5A1.6 1.6 0 0 0 18 3H6a1.6 1.6 0 0 0-1.2.5L3.5 5.2A2 2 0 0 0 3 6.5V19a2 2 0 0 0 2 2h14a2 2 0 0 0 2-2V6.5a2 2 0 0 0-.5-1.3ZM12 17.5 6.5 12H10v-2h4v2h3.5L12 17.5ZM5.1 5l.8-1h12l.9 1H5.1Z"/>',
  };
  const svg = (name) =>
    `<svg viewBox="0 0 24 24" fill="currentColor" aria-hidden="true" focusable="false">${ICONS[name]}</svg>`;

  const UNITS = [
    ["year", 31536000], ["month", 2592000], ["week", 604800],
    ["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1],
  ];

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "html") node.innerHTML = value; // only our own constant SVG
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== null && value !== undefined && value !== false) node.setAttribute(key, value === true ? "" : value);
    }
    node.append(...children);
    return node;
  }

  /** Only http(s) links: an action_url is data, never a javascript: URL. */
  function safeUrl(url) {
    if (!url) return null;
    try {
      const parsed = new URL(url, location.href);
      return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
    } catch {
      return null;
    }
  }

  let instances = 0;

  class PostbellInbox extends HTMLElement {
    static get observedAttributes() {
      return ["api", "recipient", "token", "limit", "locale"];
    }

    constructor() {
      super();
      this._uid = `postbell-inbox-${++instances}`;
      this.labels = { ...LABELS };
      this._items = new Map(); // id → item, newest first by id
      this._counts = { unread_count: 0, unseen_count: 0 };
      this._cursor = null;
      this._source = null;
      this._retry = null;
      this._retryDelay = 1000;
      this._wasLive = false;
      this._loadSeq = 0;
      this._state = "idle"; // idle | loading | ready | failed
      this._onDocPointer = (event) => {
        if (this.open && !event.composedPath().includes(this)) this.close({ restoreFocus: false });
      };
      this.attachShadow({ mode: "open" });
    }

    // --- public API -------------------------------------------------------------

    get open() {
      return this._panel ? !this._panel.hidden : false;
    }

    /** Unread and unseen counts as the server last said. */
    get counts() {
      return { ...this._counts };
    }

    /** The items shown, newest first (plain objects as the inbox endpoint answers). */
    get items() {
      return [...this._items.values()];
    }

    /** Refetch the first page and the counts. */
    refresh() {
      return this._load();
    }

    show() {
      if (this.open || !this._panel) return;
      this._panel.hidden = false;
      this._bell.setAttribute("aria-expanded", "true");
      if (matchMedia("(max-width: 480px)").matches) {
        this._panel.style.setProperty("--_top", `${Math.round(this._bell.getBoundingClientRect().bottom + 6)}px`);
      }
      document.addEventListener("pointerdown", this._onDocPointer, true);
      this._renderTimes();
      (this._list.querySelector("a, button") || this._panel).focus();
      if (this._counts.unseen_count > 0) this._post("seen", { all: true });
      this._emit("postbell-open", {});
    }

    close({ restoreFocus = true } = {}) {
      if (!this.open) return;
      this._panel.hidden = true;
      this._bell.setAttribute("aria-expanded", "false");
      document.removeEventListener("pointerdown", this._onDocPointer, true);
      if (restoreFocus) this._bell.focus();
      this._emit("postbell-close", {});
    }

    toggle() {
      this.open ? this.close() : this.show();
    }

    markRead(ids) {
      return this._mark("read", ids);
    }

    markUnread(ids) {
      return this._mark("unread", ids);
    }

    markAllRead() {
      for (const item of this._items.values()) item.read_at = item.read_at || new Date().toISOString();
      this._renderList();
      return this._post("read", { all: true });
    }

    archive(ids) {
      return this._mark("archive", ids);
    }

    // --- lifecycle --------------------------------------------------------------

    connectedCallback() {
      if (!this._bell) this._build();
      this._clock = setInterval(() => this.open && this._renderTimes(), 30000);
      this._start();
    }

    disconnectedCallback() {
      clearInterval(this._clock);
      document.removeEventListener("pointerdown", this._onDocPointer, true);
      this._stop();
    }

    attributeChangedCallback(name, before, after) {
      if (before === after || !this.isConnected || !this._bell) return;
      if (name === "locale") {
        this._renderList();
        return;
      }
      // A new token (the old one expired), another recipient or server: start over.
      this._stop();
      this._start();
    }

    // --- configuration ----------------------------------------------------------

    get _api() {
      return (this.getAttribute("api") || SCRIPT_ORIGIN).replace(/\/+$/, "");
    }

    get _base() {
      return `${this._api}/api/inbox/${encodeURIComponent(this.getAttribute("recipient") || "")}`;
    }

    get _limit() {
      const n = parseInt(this.getAttribute("limit") || "", 10);
      return n >= 1 && n <= 500 ? n : 20;
    }

    get _locale() {
      const own = this.getAttribute("locale") || this.closest("[lang]")?.getAttribute("lang");
      try {
        return Intl.getCanonicalLocales(own || navigator.language)[0];
      } catch {
        return navigator.language;
      }
    }

    get _ready() {
      return Boolean(this.getAttribute("recipient") && this.getAttribute("token"));
    }

    // --- DOM --------------------------------------------------------------------

    _build() {
      const L = this.labels;
      this._badge = el("span", { class: "badge", part: "badge", "aria-hidden": "true", hidden: true });
      this._bell = el(
        "button",
        {
          type: "button", class: "bell", part: "bell", "aria-expanded": "false",
          "aria-controls": `${this._uid}-panel`, "aria-haspopup": "dialog", "aria-label": L.bell,
          html: svg("bell"), onclick: () => this.toggle(),
        },
      );
      this._bell.append(this._badge);
      this._live = el("span", { class: "sr", role: "status", "aria-live": "polite", "aria-atomic": "true" });
      this._allRead = el("button", {
        type: "button", class: "link", part: "mark-all-read", text: L.markAllRead,
        onclick: () => this.markAllRead(),
      });
      this._status = el("div", { class: "status", part: "status", hidden: true });
      this._list = el("ul", { part: "list", "aria-labelledby": `${this._uid}-heading` });
      this._more = el("button", {
        type: "button", class: "link more", part: "more", text: L.loadMore, hidden: true,
        onclick: () => this._load({ more: true }),
      });
      this._panel = el(
        "div",
        {
          id: `${this._uid}-panel`, class: "panel", part: "panel", role: "dialog",
          "aria-labelledby": `${this._uid}-heading`, tabindex: "-1", hidden: true,
          onkeydown: (event) => this._onKey(event),
        },
        el("header", {}, el("h2", { id: `${this._uid}-heading`, text: L.heading }), this._allRead),
        this._status,
        this._list,
        this._more,
      );
      this.shadowRoot.append(el("style", { text: STYLE }), this._bell, this._live, this._panel);
      this._bell.addEventListener("keydown", (event) => {
        if (event.key === "Escape") this.close();
      });
      this._renderList();
    }

    _onKey(event) {
      if (event.key === "Escape") {
        event.stopPropagation();
        this.close();
        return;
      }
      if (event.key !== "ArrowDown" && event.key !== "ArrowUp") return;
      // Up and down move between items (Tab still walks every control).
      const rows = [...this._list.querySelectorAll("li[data-id]")];
      if (!rows.length) return;
      const current = rows.findIndex((row) => row.contains(this.shadowRoot.activeElement));
      const next = current < 0 ? 0 : current + (event.key === "ArrowDown" ? 1 : -1);
      const row = rows[Math.max(0, Math.min(rows.length - 1, next))];
      row.querySelector("a, button").focus();
      event.preventDefault();
    }

    _renderCounts() {
      const n = this._counts.unread_count;
      this._badge.hidden = n === 0;
      this._badge.textContent = n > 99 ? "99+" : String(n);
      this._bell.setAttribute("aria-label", n ? `${this.labels.bell}, ${this.labels.unread(n)}` : this.labels.bell);
      this._allRead.disabled = n === 0;
      this.setAttribute("unread", String(n));
    }

    _announce(text) {
      // Re-set so that the same text is announced again.
      this._live.textContent = "";
      setTimeout(() => { this._live.textContent = text; }, 50);
    }

    _renderList() {
      const L = this.labels;
      const rows = [];
      for (const item of this._items.values()) rows.push(this._row(item));
      if (!rows.length) {
        const text = this._state === "failed" ? L.failed : this._state === "loading" ? L.loading : L.empty;
        const empty = el("li", { class: "empty", part: "empty", text });
        if (this._state === "failed") {
          empty.append(" ", el("button", { type: "button", class: "link", text: L.retry, onclick: () => this._load() }));
        }
        rows.push(empty);
      }
      const focused = this.shadowRoot.activeElement;
      const focusKey = focused && focused.closest("li[data-id]")
        ? [focused.closest("li[data-id]").dataset.id, focused.dataset.role]
        : null;
      this._list.replaceChildren(...rows);
      if (focusKey) {
        const again = this._list.querySelector(`li[data-id="${focusKey[0]}"] [data-role="${focusKey[1]}"]`);
        if (again) again.focus();
      }
      this._more.hidden = !this._cursor;
    }

    _row(item) {
      const L = this.labels;
      const unread = !item.read_at;
      const heading = item.title || item.body || "";
      const href = safeUrl(item.action_url);
      const titleProps = { class: "title", part: "title", "data-role": "open" };
      const title = href
        ? el("a", { ...titleProps, href, onclick: (event) => this._onOpen(event, item) }, heading)
        : el("span", titleProps, heading);
      if (unread) title.prepend(el("span", { class: "dot", "aria-hidden": "true" }), el("span", { class: "sr", text: `${L.unreadItem}: ` }));
      const main = el("div", { class: "main" }, title);
      if (item.title && item.body) main.append(el("p", { class: "body", part: "body", text: item.body }));
      const when = new Date(item.created_at);
      main.append(el("time", { datetime: item.created_at, title: this._fullDate(when), part: "time" }, this._relative(when)));
      const toggle = el("button", {
        type: "button", class: "icon", part: "action", "data-role": "toggle",
        "aria-label": `${unread ? L.markRead : L.markUnread}: ${heading}`, title: unread ? L.markRead : L.markUnread,
        html: svg(unread ? "read" : "unread"),
        onclick: () => (unread ? this.markRead([item.id]) : this.markUnread([item.id])),
      });
      const archive = el("button", {
        type: "button", class: "icon", part: "action", "data-role": "archive",
        "aria-label": `${L.archive}: ${heading}`, title: L.archive, html: svg("archive"),
        onclick: () => this.archive([item.id]),
      });
      return el(
        "li",
        { class: unread ? "item unread" : "item", part: unread ? "item unread" : "item", "data-id": String(item.id) },
        main,
        el("div", { class: "actions" }, toggle, archive),
      );
    }

    _relative(date) {
      if (Number.isNaN(date.getTime())) return "";
      const seconds = (date.getTime() - Date.now()) / 1000;
      const format = new Intl.RelativeTimeFormat(this._locale, { numeric: "auto" });
      for (const [unit, size] of UNITS) {
        if (Math.abs(seconds) >= size || unit === "second") {
          const value = Math.round(seconds / size);
          return unit === "second" && Math.abs(seconds) < 45 ? format.format(0, "second") : format.format(value, unit);
        }
      }
      return "";
    }

    _fullDate(date) {
      if (Number.isNaN(date.getTime())) return "";
      return new Intl.DateTimeFormat(this._locale, { dateStyle: "medium", timeStyle: "short" }).format(date);
    }

    _renderTimes() {
      for (const time of this._list.querySelectorAll("time")) {
        time.textContent = this._relative(new Date(time.getAttribute("datetime")));
      }
    }

    _setStatus(live) {
      this.setAttribute("status", live ? "live" : "connecting");
      this._status.hidden = live || !this._wasLive;
      this._status.textContent = this.labels.offline;
      this._emit("postbell-status", { live });
    }

    // --- data -------------------------------------------------------------------

    _emit(type, detail, cancelable = false) {
      return this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true, cancelable }));
    }

    _headers(json) {
      const headers = { Authorization: `Bearer ${this.getAttribute("token")}` };
      if (json) headers["Content-Type"] = "application/json";
      return headers;
    }

    _failed(status, message) {
      // 401: the token expired; set a fresh one on the token attribute.
      this._emit("postbell-error", { status, message });
    }

    _start() {
      if (!this._ready) return;
      this._wasLive = false;
      this._load();
      this._connect();
    }

    _stop() {
      clearTimeout(this._retry);
      if (this._source) this._source.close();
      this._source = null;
      this._items.clear();
      this._cursor = null;
    }

    async _load({ more = false } = {}) {
      const seq = ++this._loadSeq;
      if (!more) {
        this._state = this._items.size ? this._state : "loading";
        if (!this._items.size) this._renderList();
      }
      const query = new URLSearchParams({ limit: String(this._limit) });
      if (more && this._cursor) query.set("cursor", this._cursor);
      let page;
      try {
        const response = await fetch(`${this._base}?${query}`, { headers: this._headers(false) });
        if (!response.ok) {
          const body = await response.json().catch(() => ({}));
          throw Object.assign(new Error(body.detail || `HTTP ${response.status}`), { status: response.status });
        }
        page = await response.json();
      } catch (error) {
        if (seq !== this._loadSeq) return;
        this._state = "failed";
        this._renderList();
        this._failed(error.status || 0, error.message);
        return;
      }
      if (seq !== this._loadSeq) return; // a newer load answers instead
      if (!more) this._items.clear();
      for (const item of page.items) this._items.set(item.id, item);
      this._sort();
      this._cursor = page.next_cursor;
      this._counts = { unread_count: page.unread_count, unseen_count: page.unseen_count };
      this._state = "ready";
      this._renderCounts();
      this._renderList();
    }

    _sort() {
      this._items = new Map([...this._items.entries()].sort((a, b) => b[0] - a[0]));
    }

    async _mark(action, ids) {
      const now = new Date().toISOString();
      for (const id of ids) {
        const item = this._items.get(id);
        if (!item) continue;
        if (action === "read") item.read_at = item.read_at || now;
        if (action === "unread") item.read_at = null;
        if (action === "archive") this._removeKeepingFocus(id);
      }
      this._renderList();
      return this._post(action, { ids });
    }

    _removeKeepingFocus(id) {
      // Focus goes to the next item (or the previous, or the panel), never to <body>.
      const rows = [...this._list.querySelectorAll("li[data-id]")];
      const at = rows.findIndex((row) => row.dataset.id === String(id));
      const hadFocus = at >= 0 && rows[at].contains(this.shadowRoot.activeElement);
      this._items.delete(id);
      if (hadFocus) {
        const neighbour = rows[at + 1] || rows[at - 1];
        queueMicrotask(() => {
          const again = neighbour && this._list.querySelector(`li[data-id="${neighbour.dataset.id}"] [data-role="archive"]`);
          (again || this._panel).focus();
        });
      }
    }

    async _post(action, body, { keepalive = false } = {}) {
      try {
        const response = await fetch(`${this._base}/${action}`, {
          method: "POST", headers: this._headers(true), body: JSON.stringify(body), keepalive,
        });
        if (!response.ok) {
          const problem = await response.json().catch(() => ({}));
          this._failed(response.status, problem.detail || `HTTP ${response.status}`);
          return this._load();
        }
        const answer = await response.json();
        this._counts = { unread_count: answer.unread_count, unseen_count: answer.unseen_count };
        this._renderCounts();
        this._emit("postbell-action", { action, ...body });
        return answer;
      } catch (error) {
        this._failed(0, error.message);
        return this._load();
      }
    }

    _onOpen(event, item) {
      const allowed = this._emit("postbell-item-click", { item }, true);
      if (!item.read_at) {
        item.read_at = new Date().toISOString();
        // keepalive: the request survives the navigation the click starts.
        this._post("read", { ids: [item.id] }, { keepalive: true });
      }
      if (!allowed) event.preventDefault(); // the host app routes it itself
    }

    _connect() {
      if (this._source) this._source.close();
      // EventSource cannot send an Authorization header: the stream takes ?token=.
      // On its own reconnects the browser sends Last-Event-ID and postbell replays
      // what was missed.
      const url = `${this._base}/stream?token=${encodeURIComponent(this.getAttribute("token"))}`;
      const source = new EventSource(url);
      this._source = source;
      this._setStatus(false);
      source.addEventListener("open", () => {
        const again = this._wasLive;
        this._wasLive = true;
        this._retryDelay = 1000;
        this._setStatus(true);
        // Back after a break: items may have been read or archived elsewhere meanwhile.
        if (again) this._load();
      });
      source.addEventListener("counts", (event) => {
        const counts = JSON.parse(event.data);
        const changed = counts.unread_count !== this._counts.unread_count;
        this._counts = counts;
        this._renderCounts();
        if (changed) this._announce(this.labels.announceCount(counts.unread_count));
        this._emit("postbell-counts", counts);
      });
      source.addEventListener("notification", (event) => {
        const item = JSON.parse(event.data);
        if (item.archived_at || this._items.has(item.id)) return;
        this._items.set(item.id, item);
        this._sort();
        this._renderList();
        this._announce(this.labels.announceNew(item.title || item.body || ""));
        this._emit("postbell-notification", { item });
      });
      source.addEventListener("update", (event) => {
        const { action, ids } = JSON.parse(event.data);
        if (!ids || action === "unarchive") return void this._load();
        const now = new Date().toISOString();
        for (const id of ids) {
          const item = this._items.get(id);
          if (!item) continue;
          if (action === "read") item.read_at = item.read_at || now;
          if (action === "unread") item.read_at = null;
          if (action === "seen") item.seen_at = item.seen_at || now;
          if (action === "archive") this._removeKeepingFocus(id);
        }
        this._renderList();
      });
      source.addEventListener("resync", () => this._load());
      source.addEventListener("error", () => {
        if (source !== this._source) return;
        this._setStatus(false);
        if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
        // The browser gave up (the server refused the stream, or was away too long):
        // find out why, then try again with a growing delay.
        source.close();
        this._source = null;
        this._load();
        this._retry = setTimeout(() => this._connect(), this._retryDelay);
        this._retryDelay = Math.min(this._retryDelay * 2, 30000);
      });
    }
  }

  customElements.define("postbell-inbox", PostbellInbox);
})();
