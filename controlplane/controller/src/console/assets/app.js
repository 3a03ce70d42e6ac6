// The dasmesh console: one page over the controller's JSON API (docs/console.md). The view
// comes from /api/events (server-sent events) whenever it changes; forms are drawn when a page
// is opened and keep the version of what they change, so a change made from a view that has
// gone stale is refused by the controller (409) instead of being applied blindly.
"use strict";

let S = null;          // the last view the controller sent
let page = "";         // the page drawn now ("overview", "volume/NAME", ...)
let keepBanner = false; // the next page keeps the banner (a change that moved to it)

// ---- helpers -------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    // Through the CSSOM, which the page's Content-Security-Policy allows (style attributes
    // in markup it does not).
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  return e;
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 2 : 1)) + " " + u[i];
}
function num(n, d = 0) { return Number(n).toLocaleString("en-US", { maximumFractionDigits: d }); }
function ago(ms) {
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}
function pill(state) { return h("span", { class: "pill s-" + state }, state); }
function banner(text, ok) {
  const b = document.getElementById("banner");
  b.textContent = text;
  b.className = ok ? "ok" : "";
  b.hidden = !text;
}
function table(heads, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty || "None.");
  return h("table", {},
    h("thead", {}, h("tr", {}, heads.map(c => h("th", { class: c.endsWith("#") ? "num" : "" }, c.replace(/#$/, ""))))),
    h("tbody", {}, rows.map(r => h("tr", r.attrs || {}, r.cells.map((c, i) =>
      h("td", { class: heads[i].endsWith("#") ? "num" : "" }, c))))));
}

// ---- talking to the controller --------------------------------------------------------------
// A change: POST JSON; the controller's refusal is shown in its own words, and a stale one
// with the volume as it is now.
async function change(url, body, done) {
  let r, j;
  try {
    r = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}), credentials: "same-origin" });
    j = await r.json().catch(() => ({ error: "the controller answered " + r.status + " without a reason" }));
  } catch (e) {
    banner("The controller could not be reached: " + e.message);
    return null;
  }
  if (!r.ok) {
    let text = j.error || ("refused (" + r.status + ")");
    if (r.status === 409 && j.current) {
      const c = j.current;
      text = "Refused (409): " + text + "\nThe volume now: " + c.name + ", " + bytes(c.size) + ", " +
        c.layout + ", " + c.state + ", version " + c.version + ". The form now shows this version.";
      forms.version[c.name] = c.version;
      drawForms(c);
    } else {
      text = "Refused (" + r.status + "): " + text;
    }
    banner(text);
    return null;
  }
  banner(done, true);
  return j;
}

let events = null;

function follow() {
  const live = document.getElementById("live");
  const es = new EventSource("/api/events");
  events = es;
  es.addEventListener("state", ev => {
    S = JSON.parse(ev.data);
    live.textContent = "live"; live.className = "live on";
    draw();
  });
  es.addEventListener("me", ev => {
    const me = JSON.parse(ev.data);
    document.getElementById("me").textContent = "signed in as " + me;
    // Without identities there is nothing to sign out of.
    document.getElementById("signout").hidden = me.startsWith("anyone");
  });
  es.addEventListener("failure", ev => {
    const j = JSON.parse(ev.data);
    banner("The controller refused the view: " + (j.error || ev.data));
  });
  es.onerror = async () => {
    live.textContent = "reconnecting…"; live.className = "live off";
    // EventSource says nothing of why: ask once, to show the controller's words.
    try {
      const r = await fetch("/api/state", { credentials: "same-origin" });
      if (!r.ok) {
        const j = await r.json().catch(() => ({}));
        banner("Refused (" + r.status + "): " + (j.error || r.statusText));
        if (r.status === 401 || r.status === 403) {
          es.close();
          live.textContent = r.status === 401 ? "not signed in" : "refused";
          document.getElementById("signout").hidden = true;
          document.getElementById("forms").replaceChildren();
          document.getElementById("view").replaceChildren(
            h("p", { class: "muted" }, "Nothing to show until the controller lets this page look (see above)."));
        }
      }
    } catch (e) { /* the controller is away: EventSource retries */ }
  };
}

// ---- forms: drawn when a page opens, holding the versions seen then ------------------------
const forms = { version: {} };

// `fresh`: a volume as a change just answered it (newer than the view until the next update).
function drawForms(fresh) {
  const f = document.getElementById("forms");
  f.replaceChildren();
  const [kind, arg] = page.split("/");
  if (kind === "volumes") f.append(createForm());
  if (kind === "volume" && S) {
    const v = fresh && fresh.name === arg ? fresh : S.volumes.find(v => v.name === arg);
    if (v) f.append(...volumeForms(v));
  }
}

function createForm() {
  const fm = h("form", { class: "inline", id: "create-form" },
    h("label", {}, "name", h("input", { name: "name", required: true, placeholder: "db-1", pattern: "[A-Za-z0-9._\\-]{1,128}" })),
    h("label", {}, "size", h("input", { name: "size", required: true, value: "1G", size: 6 })),
    h("label", {}, "layout", h("input", { name: "layout", value: "single", list: "layouts", size: 12 })),
    h("datalist", { id: "layouts" }, ["single", "concat", "stripe:2:64k", "stripe:3:64k", "mirror:2", "mirror:3"].map(l => h("option", { value: l }))),
    h("label", {}, "promised IOPS", h("input", { name: "min_iops", type: "number", min: 0, value: 0, size: 6 })),
    h("label", {}, "IOPS cap", h("input", { name: "max_iops", type: "number", min: 0, value: 0, size: 6 })),
    h("label", {}, "price / GiB-hour", h("input", { name: "price_per_gib_hour", type: "number", min: 0, step: "any", value: 0, size: 6 })),
    h("button", { type: "submit" }, "Create volume"));
  fm.addEventListener("submit", async e => {
    e.preventDefault();
    const d = new FormData(fm);
    const body = { name: d.get("name").trim(), size: d.get("size").trim(), layout: d.get("layout").trim(),
      min_iops: +d.get("min_iops"), max_iops: +d.get("max_iops"), price_per_gib_hour: +d.get("price_per_gib_hour") };
    if (await change("/api/volumes", body, "Volume " + body.name + " created.")) fm.reset();
  });
  return fm;
}

function volumeForms(v) {
  if (!(v.name in forms.version)) forms.version[v.name] = v.version;
  const seen = () => forms.version[v.name];
  const name = encodeURIComponent(v.name);
  const out = [];
  const rs = h("form", { class: "inline", id: "resize-form" },
    h("label", {}, "new size", h("input", { name: "size", required: true, value: bytes(v.size).replace(/ ([KMGTP])iB/, "$1").replace(" B", ""), size: 8 })),
    h("button", { type: "submit" }, "Resize"),
    h("span", { class: "muted", id: "form-version" }, "changes made from version " + seen()));
  rs.addEventListener("submit", async e => {
    e.preventDefault();
    const size = new FormData(rs).get("size").trim();
    const r = await change("/api/volumes/" + name + "/resize", { size, version: seen() }, "Volume " + v.name + " resized to " + size + ".");
    if (r) { forms.version[v.name] = r.version; drawForms(r); }
  });
  out.push(rs);
  if (v.layout.startsWith("mirror")) {
    const copies = +v.layout.split(":")[1];
    const rc = h("form", { class: "inline", id: "replace-form" },
      h("label", {}, "copy", h("select", { name: "copy" }, [...Array(copies).keys()].map(c => h("option", { value: c }, "copy " + c)))),
      h("label", {}, "onto node", h("select", { name: "node" }, h("option", { value: 0 }, "wherever fits"),
        (S.nodes || []).filter(n => n.state === "up").map(n => h("option", { value: n.id }, "node " + n.id + " " + n.address)))),
      h("button", { type: "submit", class: "plain" }, "Rebuild copy elsewhere"));
    rc.addEventListener("submit", async e => {
      e.preventDefault();
      const d = new FormData(rc);
      const r = await change("/api/volumes/" + name + "/replace-copy", { copy: +d.get("copy"), node: +d.get("node"), version: seen() },
        "Copy " + d.get("copy") + " of " + v.name + " is being rebuilt on new extents.");
      if (r) { forms.version[v.name] = r.version; drawForms(r); }
    });
    out.push(rc);
  }
  const del = h("form", { class: "inline", id: "delete-form" },
    h("button", { type: "submit", class: "danger" }, "Delete volume " + v.name));
  del.addEventListener("submit", async e => {
    e.preventDefault();
    if (!confirm("Delete volume " + v.name + "? Its data is discarded on the nodes.")) return;
    if (await change("/api/volumes/" + name + "/delete", { version: seen() }, "Volume " + v.name + " deleted.")) {
      delete forms.version[v.name];
      keepBanner = true;
      location.hash = "#/volumes";
    }
  });
  out.push(del);
  return out;
}

function revokeButton(l) {
  return h("button", { class: "danger", "data-lease": l.id, onclick: async () => {
    if (!confirm("Revoke lease " + l.id + " of " + l.host + " on " + l.volume + "? Its tokens stop working at once.")) return;
    await change("/api/leases/" + l.id + "/revoke", {}, "Lease " + l.id + " revoked: its holder is fenced off.");
  } }, "Revoke");
}

// ---- pages: drawn from the view, again at every update ---------------------------------------
function overview() {
  const up = S.nodes.filter(n => n.state === "up").length;
  const by = {};
  for (const v of S.volumes) by[v.state] = (by[v.state] || 0) + 1;
  const used = S.pool.lendable - S.pool.free;
  return [
    h("h1", {}, "Overview"),
    h("div", { class: "cards" },
      h("div", { class: "card", id: "card-nodes" }, h("div", { class: "muted" }, "nodes up / down"),
        h("div", { class: "big" }, up + " / " + (S.nodes.length - up))),
      h("div", { class: "card", id: "card-volumes" }, h("div", { class: "muted" }, "volumes"),
        h("div", { class: "big" }, S.volumes.length),
        h("div", {}, Object.entries(by).map(([k, n]) => [pill(k), " " + n + "  "]))),
      h("div", { class: "card" }, h("div", { class: "muted" }, "leases"), h("div", { class: "big" }, S.leases.length)),
      h("div", { class: "card" }, h("div", { class: "muted" }, "pool used"),
        h("div", { class: "big" }, S.pool.lendable ? Math.round(used * 100 / S.pool.lendable) + "%" : "–"),
        h("div", { class: "muted" }, bytes(used) + " of " + bytes(S.pool.lendable)))),
    h("h2", {}, "Pool capacity"),
    poolPicture(),
    h("h2", {}, "Alerts"),
    S.alerts.length ? h("ul", { class: "alerts", id: "alerts" }, S.alerts.map(a => h("li", {}, a)))
      : h("p", { class: "muted", id: "alerts" }, "Nothing needs attention."),
  ];
}

function poolPicture() {
  const devs = S.nodes.flatMap(n => n.devices.map(d => ({ n, d })));
  const total = devs.reduce((t, x) => t + x.d.size, 0) || 1;
  return h("div", {},
    h("div", { class: "bar", title: "every device of every node, to scale" },
      devs.map(({ n, d }) => {
        const w = d.size * 100 / total;
        const used = d.lendable - d.free;
        return h("span", { style: "width:" + w + "%;display:flex;border-right:2px solid #fff",
          title: "node " + n.id + " " + d.path + ": " + bytes(used) + " used, " + bytes(d.free) + " free, " + bytes(d.size - d.lendable) + " kept for the owner" },
          h("span", { class: "used", style: "width:" + (used * 100 / d.size) + "%" }),
          h("span", { style: "width:" + (d.free * 100 / d.size) + "%" }),
          h("span", { class: "reserved", style: "width:" + ((d.size - d.lendable) * 100 / d.size) + "%" }));
      })),
    h("div", { class: "legend muted" }, h("span", { class: "used" }), "lent", h("span", { style: "background:var(--free)" }), "free",
      h("span", { class: "reserved" }), "owner's, never lent"));
}

function nodes() {
  return [h("h1", {}, "Nodes"), table(["node", "address", "state", "domain", "heartbeat", "devices"],
    S.nodes.map(n => ({ cells: [n.id, n.address, pill(n.state), n.failure_domain || "–", ago(n.last_heartbeat_ms),
      h("div", {}, n.devices.map(d => h("div", {},
        h("div", {}, d.path + " · " + bytes(d.size) + " · " + bytes(d.free) + " free" +
          (d.read_iops ? " · " + num(d.read_iops) + " read IOPS" : "") +
          (d.promised_iops ? " · " + num(d.promised_iops) + " IOPS promised" : "")),
        h("div", { class: "bar", style: "width:320px" },
          h("span", { class: "used", style: "width:" + ((d.lendable - d.free) * 100 / d.size) + "%" }),
          h("span", { style: "width:" + (d.free * 100 / d.size) + "%" }),
          h("span", { class: "reserved", style: "width:" + ((d.size - d.lendable) * 100 / d.size) + "%" })))))] })),
    "No node has registered yet.")];
}

function volumes() {
  return [h("h1", {}, "Volumes"), table(["name", "state", "size#", "layout", "leases#", "IOPS promised / cap", "version"],
    S.volumes.map(v => ({ attrs: { "data-volume": v.name }, cells: [h("a", { href: "#/volume/" + encodeURIComponent(v.name) }, v.name),
      pill(v.state), bytes(v.size), v.layout, v.leases,
      (v.terms.min_iops || "–") + " / " + (v.terms.max_iops || "–"), v.version] })), "No volumes yet: create one above.")];
}

function volume(name) {
  const v = S.volumes.find(v => v.name === name);
  if (!v) return [h("h1", {}, "Volume " + name), h("p", { id: "gone" }, "There is no volume " + name + " (any more).")];
  const byNode = new Map();
  for (const e of v.extents) {
    const k = e.node + "/" + e.device;
    if (!byNode.has(k)) byNode.set(k, []);
    byNode.get(k).push(e);
  }
  const leases = S.leases.filter(l => l.volume === name);
  return [
    h("h1", {}, "Volume " + v.name + " ", pill(v.state)),
    h("p", { id: "volume-facts" }, bytes(v.size) + " · " + v.layout + " · epoch " + v.epoch + " · version " + v.version +
      (v.terms.min_iops ? " · " + num(v.terms.min_iops) + " IOPS promised" : "") +
      (v.terms.max_iops ? " · capped at " + num(v.terms.max_iops) + " IOPS" : "") +
      (v.terms.price ? " · " + v.terms.price + " per GiB-hour" : "")),
    v.note ? h("p", { class: "alerts" }, v.note) : null,
    forms.version[v.name] && forms.version[v.name] !== v.version
      ? h("p", { class: "muted", id: "changed" }, "It has changed since the forms above were opened (version " +
        forms.version[v.name] + "): a change made from them is refused until you look again.") : null,
    h("h2", {}, "Where its extents are"),
    h("div", { id: "layout" }, [...byNode.entries()].map(([k, es]) => {
      const [nid, did] = k.split("/").map(Number);
      const n = S.nodes.find(n => n.id === nid);
      const d = n && n.devices.find(d => d.id === did);
      const span = d ? d.size : Math.max(...es.map(e => e.offset + e.length));
      return h("div", { class: "nodebox" },
        h("div", {}, h("b", {}, "node " + nid), " " + (n ? n.address + " " : ""), n ? pill(n.state) : "", " · " + (d ? d.path : "device " + did)),
        h("div", { class: "dev" }, es.map(e => h("div", {
          class: "ext c" + (e.copy % 4) + (e.stale ? " stale" : "") + (e.rebuilding ? " rebuilding" : ""),
          style: "left:" + (e.offset * 100 / span) + "%;width:" + (e.length * 100 / span) + "%",
          title: "copy " + e.copy + ", extent " + e.index + ": " + bytes(e.length) + " at " + bytes(e.offset) +
            (e.stale ? " (stale)" : "") + (e.rebuilding ? " (rebuilding, " + bytes(e.rebuilt) + " copied)" : "") },
          (v.layout.startsWith("mirror") ? "copy " + e.copy + " " : "") + "#" + e.index))));
    })),
    table(["copy", "extent", "node", "device", "offset#", "length#", "health"], v.extents.map(e => ({ cells: [
      e.copy, e.index, e.node, e.device, bytes(e.offset), bytes(e.length),
      e.rebuilding ? "rebuilding: " + bytes(e.rebuilt) + " copied" : e.stale ? "stale" : "ok"] }))),
    h("h2", {}, "Leases"),
    table(["lease", "host", "access", "started", "expires", ""], leases.map(l => ({ cells: [
      l.id, l.host, l.rw ? "read-write" : "read-only", ago(l.started_ms), "in " + Math.max(0, Math.round((l.expires_at_ms - Date.now()) / 1000)) + " s",
      revokeButton(l)] })), "Not leased."),
  ];
}

function leases() {
  return [h("h1", {}, "Leases"), table(["lease", "volume", "host", "access", "epoch#", "started", "expires", ""],
    S.leases.map(l => ({ attrs: { "data-lease-row": l.id }, cells: [l.id, h("a", { href: "#/volume/" + encodeURIComponent(l.volume) }, l.volume),
      l.host, l.rw ? "read-write" : "read-only", l.epoch, ago(l.started_ms),
      "in " + Math.max(0, Math.round((l.expires_at_ms - Date.now()) / 1000)) + " s", revokeButton(l)] })), "No leases.")];
}

function chart(points, key, label, fmt) {
  const W = 900, H = 160, P = 36;
  const svg = s("svg", { class: "chart", width: W, height: H, viewBox: "0 0 " + W + " " + H });
  svg.append(s("text", { x: 8, y: 14 }, label));
  if (points.length < 2) {
    svg.append(s("text", { x: W / 2 - 80, y: H / 2 }, "collecting samples (one every 5 s)…"));
    return svg;
  }
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const max = Math.max(...points.map(p => p[key]), 1e-9);
  const x = t => P + (W - 2 * P) * (t - t0) / Math.max(1, t1 - t0);
  const y = v => H - 20 - (H - 40) * v / max;
  svg.append(s("line", { x1: P, y1: H - 20, x2: W - P, y2: H - 20, stroke: "#dde1e8" }));
  svg.append(s("polyline", { fill: "none", stroke: "#3564d4", "stroke-width": 2,
    points: points.map(p => x(p.t).toFixed(1) + "," + y(p[key]).toFixed(1)).join(" ") }));
  svg.append(s("text", { x: W - P - 100, y: 14 }, "max " + fmt(max)));
  svg.append(s("text", { x: P, y: H - 4 }, new Date(t0).toLocaleTimeString()));
  svg.append(s("text", { x: W - P - 60, y: H - 4 }, new Date(t1).toLocaleTimeString()));
  return svg;
}

function usage() {
  return [h("h1", {}, "Usage and charges"),
    h("p", {}, "Total charged so far: ", h("b", { id: "total-charge" }, num(S.total_charge, 4))),
    chart(S.history, "iops", "IOPS of the active leases", v => num(v)),
    chart(S.history, "charge", "charges so far", v => num(v, 4)),
    h("h2", {}, "Per lease"),
    table(["lease", "host", "volume", "state", "IOPS lately#", "read#", "written#", "GiB-hours#", "charge#"],
      S.usage.map(u => ({ cells: [u.lease, u.host, u.volume, u.active ? "active" : "ended", num(u.iops),
        bytes(u.read_bytes), bytes(u.write_bytes), num(u.gib_hours, 6), num(u.charge, 4)] })), "No usage recorded yet.")];
}

function controllers() {
  return [h("h1", {}, "Controllers"), h("p", { class: "muted" }, "State kept in " + S.store),
    table(["url", "role", "last seen", "answering this page"], S.controllers.map(c => ({ cells: [
      c.url, pill(c.role), c.answering ? "now" : ago(c.seen_ms), c.answering ? "yes" : ""] })))];
}

function draw() {
  const [kind, ...rest] = page.split("/");
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("here", kind.startsWith(a.dataset.page.replace(/s$/, "")));
  if (!S) return;
  const arg = decodeURIComponent(rest.join("/"));
  const pages = { overview, nodes, volumes, leases, usage, controllers, volume: () => volume(arg) };
  // A page's first element is its title, drawn above its forms.
  const [title, ...body] = (pages[kind] || overview)().filter(x => x);
  document.getElementById("title").replaceChildren(title);
  document.getElementById("view").replaceChildren(...body);
  if (kind === "volume" && !document.getElementById("resize-form")) drawForms();
}

function route() {
  page = (location.hash.replace(/^#\/?/, "") || "overview");
  forms.version = {};
  if (!keepBanner) banner("");
  keepBanner = false;
  draw();
  drawForms();
}

document.getElementById("signout").addEventListener("click", async () => {
  await fetch("/logout", { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}", credentials: "same-origin" });
  if (events) events.close();
  const live = document.getElementById("live");
  live.textContent = "signed out"; live.className = "live off";
  banner("Signed out. Run `dasmesh console` for a new login link.", true);
});
window.addEventListener("hashchange", route);
route();
follow();
