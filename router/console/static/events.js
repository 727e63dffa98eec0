// The console's live events (templates/events.html): one websocket to
// /console/events/ws (the session's cookie authenticates it; the protocol is
// /v1/events's, docs/events.md), subscribed with the ticked profiles and kinds. Keeps
// the newest N rows; Pause holds new events back (counted) until Resume; the search box
// hides the rows that do not contain its text. Rows are built with textContent only:
// an event's values never become markup.
(function () {
  "use strict";
  var root = document.getElementById("events-filters");
  if (!root) { return; }
  var shown = parseInt(root.getAttribute("data-shown"), 10) || 200;
  var path = root.getAttribute("data-ws");
  var body = document.querySelector("#events tbody");
  var state = document.getElementById("feed-state");
  var search = document.getElementById("search");
  var pauseButton = document.getElementById("pause");
  var socket = null;
  var paused = false;
  var held = [];
  var position = null; // each profile's last event id seen: a reconnect resumes there
  var retry = null;
  var generation = 0;

  function ticked(name) {
    var out = [];
    document.querySelectorAll('input[name="' + name + '"]:checked').forEach(function (box) {
      out.push(box.value);
    });
    return out;
  }

  function say(text) { state.textContent = text; }

  function time(at) {
    if (typeof at !== "number") { return ""; }
    return new Date(at * 1000).toISOString().replace("T", " ").replace("Z", " UTC");
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    row.appendChild(td);
    return td;
  }

  function matches(row) {
    var wanted = search.value.trim().toLowerCase();
    return !wanted || row.textContent.toLowerCase().indexOf(wanted) !== -1;
  }

  function add(event) {
    var kind = event.type === "inbound" ? "inbound" : (event.status || event.type);
    var row = document.createElement("tr");
    row.setAttribute("data-kind", kind);
    cell(row, time(event.at || event.received_at));
    var badge = document.createElement("span");
    badge.className = "state state-" + kind;
    badge.textContent = kind;
    cell(row, "").appendChild(badge);
    cell(row, event.profile);
    var idCell = cell(row, "");
    if (event.id && event.type !== "inbound") {
      var link = document.createElement("a");
      link.href = "/console/messages/" + encodeURIComponent(event.id);
      link.textContent = event.id;
      idCell.appendChild(link);
    } else {
      idCell.textContent = event.id || "";
    }
    cell(row, event.to);
    cell(row, event.from);
    var detail = event.note || event.error || event.url || event.text || event.connector || "";
    cell(row, detail);
    row.hidden = !matches(row);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > shown) { body.deleteRow(body.rows.length - 1); }
  }

  function connect(fresh) {
    generation += 1;
    var mine = generation;
    if (retry) { clearTimeout(retry); retry = null; }
    if (socket) { socket.onclose = null; socket.close(); }
    if (fresh) { position = null; }
    var scheme = location.protocol === "https:" ? "wss:" : "ws:";
    socket = new WebSocket(scheme + "//" + location.host + path);
    say("Connecting…");
    socket.onopen = function () {
      var message = { type: "subscribe", heartbeat: 15 };
      var profiles = ticked("profile");
      var kinds = ticked("status");
      if (profiles.length) { message.profile = profiles; }
      if (kinds.length) { message.status = kinds; }
      if (position) { message.from = position; }
      socket.send(JSON.stringify(message));
    };
    socket.onmessage = function (raw) {
      var event;
      try { event = JSON.parse(raw.data); } catch (e) { return; }
      if (event.type === "subscribed" || event.type === "heartbeat") {
        position = event.position || position;
        if (!paused) { say("Live: connected (" + new Date().toLocaleTimeString() + ")"); }
        return;
      }
      if (event.type === "gap") { return; }
      if (event.profile && event.event_id) {
        position = position || {};
        position[event.profile] = event.event_id;
      }
      if (paused) {
        held.push(event);
        if (held.length > shown) { held.shift(); }
        say("Paused: " + held.length + " new event(s) held");
        return;
      }
      add(event);
    };
    socket.onclose = function (closed) {
      if (mine !== generation) { return; }
      say("Disconnected" + (closed.reason ? ": " + closed.reason : "") + "; reconnecting in 3 s");
      retry = setTimeout(function () { connect(false); }, 3000);
    };
  }

  document.getElementById("filters").addEventListener("change", function (e) {
    if (e.target && e.target.type === "checkbox") { connect(true); }
  });
  document.getElementById("filters").addEventListener("submit", function (e) { e.preventDefault(); });
  search.addEventListener("input", function () {
    Array.prototype.forEach.call(body.rows, function (row) { row.hidden = !matches(row); });
  });
  pauseButton.addEventListener("click", function () {
    paused = !paused;
    pauseButton.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      held.forEach(add);
      held = [];
      say("Live: connected");
    } else {
      say("Paused: 0 new event(s) held");
    }
  });
  document.getElementById("clear").addEventListener("click", function () {
    while (body.rows.length) { body.deleteRow(0); }
  });
  connect(true);
}());
