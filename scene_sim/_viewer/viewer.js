// scene-sim transcript viewer. Offline, no dependencies. Every text from the
// data goes into the page through textContent / createTextNode, never as
// markup, so chat content cannot inject anything.
(function () {
  "use strict";

  var D = JSON.parse(document.getElementById("scene-data").textContent);
  var S = D.strings || [];
  var EPS = D.episodes || [];
  var OBJ = D.objects || [];
  var KIND = ["message", "react", "no-op"];
  var ROW_H = 46;
  var OVERSCAN = 8;

  // -- tiny DOM helper ---------------------------------------------------------
  function el(tag, attrs) {
    var node = document.createElement(tag);
    if (attrs) {
      for (var k in attrs) {
        if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] == null) continue;
        if (k === "class") node.className = attrs[k];
        else node.setAttribute(k, String(attrs[k]));
      }
    }
    for (var i = 2; i < arguments.length; i++) add(node, arguments[i]);
    return node;
  }
  function add(node, child) {
    if (child == null || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(node, c); }); return; }
    node.appendChild(typeof child === "object" ? child : document.createTextNode(String(child)));
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function $(id) { return document.getElementById(id); }
  function fmt(x, digits) {
    if (x == null || typeof x !== "number" || !isFinite(x)) return "—";
    return x.toFixed(digits == null ? 2 : digits);
  }
  function fmtCI(obj, key) {
    if (!obj || obj[key] == null) return "—";
    var s = fmt(obj[key]);
    if (Array.isArray(obj.ci) && obj.ci.length === 2 && obj.ci[0] != null) s += " [" + fmt(obj.ci[0]) + ", " + fmt(obj.ci[1]) + "]";
    return s;
  }
  function labelBadge(label) {
    if (!label || label === "NONE") return null;
    var known = ["DEMONSTRATION", "BREACH", "SANCTION", "FACE_SAVE_REPAIR"].indexOf(label) >= 0;
    return el("span", { class: "badge " + (known ? "lab-" + label : "lab-other"), "data-label": label }, label);
  }

  // -- header and summary ----------------------------------------------------------
  var run = D.run || {};
  $("title").textContent = "scene-sim · " + (run.name || "run");
  var info = [];
  if (run.command) info.push("command: " + run.command);
  if (run.created) info.push("created " + run.created);
  if (run.version) info.push("scene-sim " + run.version);
  info.push(EPS.length + " episodes");
  $("run-info").textContent = info.join(" · ");

  function renderSummary() {
    var body = $("summary-body");
    clear(body);
    var metrics = D.metrics;
    var models = metrics || D.summary || {};
    var names = Object.keys(models).sort();
    if (!metrics) body.appendChild(el("p", { class: "muted" }, "No metrics.json in this run (run 'scene-sim analyze RUN_DIR'); counts below come from the episode files."));
    if (!names.length) { body.appendChild(el("p", { class: "muted" }, "No episodes.")); return; }
    var head = el("tr", null,
      el("th", null, "subject model"), el("th", { class: "num" }, "episodes"), el("th", { class: "num" }, "valid"),
      el("th", { class: "num" }, "partial"), el("th", { class: "num" }, "invalid"));
    if (metrics) {
      add(head, [el("th", { class: "num" }, "repair rate [95% CI]"), el("th", { class: "num" }, "n sanctioned"),
        el("th", { class: "num" }, "rho [95% CI]"), el("th", { class: "num" }, "n")]);
    }
    var table = el("table", { id: "metrics-table" }, el("thead", null, head));
    var tbody = el("tbody");
    names.forEach(function (name) {
      var m = models[name] || {};
      var tr = el("tr", { "data-model": name }, el("td", null, name),
        el("td", { class: "num" }, m.episodes == null ? "—" : m.episodes), el("td", { class: "num" }, m.valid == null ? "—" : m.valid),
        el("td", { class: "num" }, m.partial == null ? "—" : m.partial), el("td", { class: "num" }, m.invalid == null ? "—" : m.invalid));
      if (metrics) {
        add(tr, [el("td", { class: "num repair" }, fmtCI(m.repair, "rate")), el("td", { class: "num" }, m.repair && m.repair.n != null ? m.repair.n : "—"),
          el("td", { class: "num rho" }, fmtCI(m.rho, "value")), el("td", { class: "num" }, m.rho && m.rho.n != null ? m.rho.n : "—")]);
      }
      tbody.appendChild(tr);
    });
    table.appendChild(tbody);
    body.appendChild(table);
    if (!metrics) return;
    var more = el("details", { class: "more" }, el("summary", null, "repair by sanction, compliance per norm pole, fidelity"));
    names.forEach(function (name) {
      var m = models[name] || {};
      more.appendChild(el("h3", null, name));
      var rbs = m.repair_by_sanction || {};
      var keys = Object.keys(rbs).sort();
      if (keys.length) {
        var t = el("table", null, el("tr", null, el("th", null, "sanction"), el("th", { class: "num" }, "repair rate [95% CI]"), el("th", { class: "num" }, "n")));
        keys.forEach(function (k) { t.appendChild(el("tr", null, el("td", null, k), el("td", { class: "num" }, fmtCI(rbs[k], "rate")), el("td", { class: "num" }, rbs[k] && rbs[k].n != null ? rbs[k].n : "—"))); });
        more.appendChild(t);
      }
      var pairs = m.pairs || {};
      var pk = Object.keys(pairs).sort();
      if (pk.length) {
        var t2 = el("table", null, el("tr", null, el("th", null, "norm pole"), el("th", { class: "num" }, "compliance"), el("th", { class: "num" }, "n")));
        pk.forEach(function (k) { t2.appendChild(el("tr", null, el("td", null, k), el("td", { class: "num" }, fmt(pairs[k] && pairs[k].compliance)), el("td", { class: "num" }, pairs[k] && pairs[k].n != null ? pairs[k].n : "—"))); });
        more.appendChild(t2);
      }
      var fid = m.fidelity || {};
      var fk = Object.keys(fid);
      if (fk.length) more.appendChild(el("div", { class: "chips" }, fk.map(function (k) { return el("span", { class: "chip" }, k + ": " + fmt(fid[k])); })));
    });
    body.appendChild(more);
  }
  renderSummary();

  if (D.warnings && D.warnings.length) {
    var w = $("warnings");
    w.hidden = false;
    w.appendChild(el("b", null, "Warnings while reading the run:"));
    w.appendChild(el("ul", null, D.warnings.map(function (x) { return el("li", null, x); })));
  }

  // -- filters ---------------------------------------------------------------------
  var DIMS = [
    { key: "model", label: "subject model", get: function (e) { return e.m; } },
    { key: "norm", label: "norm", get: function (e) { return e.t[1] || "?"; } },
    { key: "sanction", label: "sanction", get: function (e) { return e.t[3] || "?"; } },
    { key: "precedent", label: "precedent", get: function (e) { return e.t[4] == null ? "?" : String(e.t[4]); } },
    { key: "validity", label: "validity", get: function (e) { return e.v; } },
    { key: "breach", label: "subject breach", get: function (e) { return e.b == null ? "unknown" : (e.b ? "yes" : "no"); } },
    { key: "end", label: "end reason", get: function (e) { return e.end; } }
  ];
  var ND = DIMS.length;
  var VALS = EPS.map(function (e) { return DIMS.map(function (d) { return d.get(e); }); });
  var HAY = EPS.map(function (e) { return (e.id + " " + e.sc).toLowerCase(); });
  var sel = DIMS.map(function () { return ""; });
  var query = "";
  var filtered = [];
  var selects = [];
  var current = -1;

  var box = $("filter-selects");
  DIMS.forEach(function (d, i) {
    var s = el("select", { id: "f-" + d.key, name: d.key, "data-dim": d.key });
    s.addEventListener("change", function () { sel[i] = s.value; update(); });
    selects.push(s);
    box.appendChild(el("label", { for: "f-" + d.key }, d.label));
    box.appendChild(s);
  });
  $("search").addEventListener("input", function () { query = this.value.trim().toLowerCase(); update(); });
  $("reset").addEventListener("click", function () {
    sel = DIMS.map(function () { return ""; });
    query = "";
    $("search").value = "";
    update();
  });

  function update() {
    var facet = DIMS.map(function () { return Object.create(null); });
    var facetAll = DIMS.map(function () { return 0; });
    filtered = [];
    for (var i = 0; i < EPS.length; i++) {
      if (query && HAY[i].indexOf(query) < 0) continue;
      var v = VALS[i], miss = -1, nmiss = 0;
      for (var d = 0; d < ND; d++) {
        if (sel[d] !== "" && v[d] !== sel[d]) { nmiss++; miss = d; if (nmiss > 1) break; }
      }
      if (nmiss === 0) {
        filtered.push(i);
        for (var d2 = 0; d2 < ND; d2++) { facet[d2][v[d2]] = (facet[d2][v[d2]] || 0) + 1; facetAll[d2]++; }
      } else if (nmiss === 1) {
        facet[miss][v[miss]] = (facet[miss][v[miss]] || 0) + 1;
        facetAll[miss]++;
      }
    }
    // every value that occurs anywhere stays listed (with 0 when the other filters exclude it)
    DIMS.forEach(function (dim, d) {
      var s = selects[d];
      var values = dim.all || (dim.all = Array.from(new Set(VALS.map(function (v) { return v[d]; }))).sort());
      clear(s);
      s.appendChild(el("option", { value: "" }, "all (" + facetAll[d] + ")"));
      values.forEach(function (value) {
        var n = facet[d][value] || 0;
        var o = el("option", { value: value, "data-count": n }, value + " (" + n + ")");
        s.appendChild(o);
      });
      s.value = sel[d];
    });
    var count = $("count");
    count.textContent = "Showing " + filtered.length + " of " + EPS.length + " episodes";
    count.setAttribute("data-shown", String(filtered.length));
    count.setAttribute("data-total", String(EPS.length));
    var tally = { VALID: 0, PARTIAL: 0, INVALID: 0, other: 0 }, breach = 0;
    filtered.forEach(function (i) {
      var e = EPS[i];
      if (tally[e.v] != null) tally[e.v]++; else tally.other++;
      if (e.b === 1) breach++;
    });
    $("facts").textContent = tally.VALID + " valid · " + tally.PARTIAL + " partial · " + tally.INVALID + " invalid" +
      (tally.other ? " · " + tally.other + " unlabelled" : "") + " · " + breach + " with a subject breach";
    var list = $("list");
    $("list-spacer").style.height = (filtered.length * ROW_H) + "px";
    if (list.scrollTop > filtered.length * ROW_H) list.scrollTop = 0;
    renderRows();
  }

  // -- virtual list ------------------------------------------------------------------
  var list = $("list");
  var rowsLayer = [];
  var pending = false;
  list.addEventListener("scroll", function () {
    if (pending) return;
    pending = true;
    window.requestAnimationFrame(function () { pending = false; renderRows(); });
  });
  window.addEventListener("resize", function () { renderRows(); });

  function renderRows() {
    rowsLayer.forEach(function (r) { list.removeChild(r); });
    rowsLayer = [];
    var old = list.querySelector(".empty");
    if (old) list.removeChild(old);
    if (!filtered.length) {
      list.appendChild(el("div", { class: "empty" }, EPS.length ? "No episode matches these filters." : "This run has no episodes."));
      return;
    }
    var h = list.clientHeight || 600;
    var first = Math.max(0, Math.floor(list.scrollTop / ROW_H) - OVERSCAN);
    var last = Math.min(filtered.length, Math.ceil((list.scrollTop + h) / ROW_H) + OVERSCAN);
    var frag = document.createDocumentFragment();
    for (var k = first; k < last; k++) {
      var idx = filtered[k];
      var e = EPS[idx];
      var meta = [e.v, e.b === 1 ? "breach" : e.b === 0 ? "no breach" : "breach ?", "p" + (e.t[4] == null ? "?" : e.t[4]), e.t[1], e.t[3], e.m, e.end].join(" · ");
      var row = el("div", {
        class: "row" + (idx === current ? " selected" : ""), role: "option", tabindex: "-1",
        "data-index": idx, "data-id": e.id, title: e.id, "aria-selected": idx === current ? "true" : "false"
      }, el("div", { class: "rid" }, e.id), el("div", { class: "rmeta" }, meta));
      row.style.top = (k * ROW_H) + "px";
      row.addEventListener("click", onRowClick);
      frag.appendChild(row);
      rowsLayer.push(row);
    }
    list.appendChild(frag);
  }
  function onRowClick(ev) { openIndex(Number(ev.currentTarget.getAttribute("data-index"))); }

  function openIndex(idx) {
    if (idx < 0 || idx >= EPS.length) return;
    var target = "#episode=" + encodeURIComponent(EPS[idx].id);
    if (window.location.hash !== target) window.location.hash = target;
    else showEpisode(idx);
  }
  function fromHash() {
    var m = /^#episode=(.*)$/.exec(window.location.hash);
    if (!m) return;
    var id;
    try { id = decodeURIComponent(m[1]); } catch (err) { return; }
    for (var i = 0; i < EPS.length; i++) if (EPS[i].id === id) { showEpisode(i); return; }
  }
  window.addEventListener("hashchange", fromHash);

  document.addEventListener("keydown", function (ev) {
    var tag = (ev.target && ev.target.tagName) || "";
    if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA" || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    var step = (ev.key === "ArrowDown" || ev.key === "j") ? 1 : (ev.key === "ArrowUp" || ev.key === "k") ? -1 : 0;
    if (!step || !filtered.length) return;
    ev.preventDefault();
    var pos = filtered.indexOf(current);
    pos = pos < 0 ? 0 : Math.min(filtered.length - 1, Math.max(0, pos + step));
    var top = pos * ROW_H;
    if (top < list.scrollTop) list.scrollTop = top;
    else if (top + ROW_H > list.scrollTop + list.clientHeight) list.scrollTop = top + ROW_H - list.clientHeight;
    openIndex(filtered[pos]);
  });

  // -- one episode, built on demand --------------------------------------------------------------
  function showEpisode(idx) {
    current = idx;
    renderRows();
    var detail = $("detail");
    clear(detail);
    detail.appendChild(buildEpisode(EPS[idx]));
    detail.scrollTop = 0;
  }

  function buildEpisode(e) {
    var art = el("article", { class: "episode", "data-episode-id": e.id });
    art.appendChild(el("h2", null, e.id));
    var models = OBJ[e.mo] || {};
    art.appendChild(el("div", { class: "chips" },
      el("span", { class: "chip" }, el("b", null, "subject "), e.m),
      models.personas ? el("span", { class: "chip" }, "personas " + models.personas) : null,
      models.orchestrator ? el("span", { class: "chip" }, "orchestrator " + models.orchestrator) : null,
      models.judge ? el("span", { class: "chip" }, "judge " + models.judge) : null,
      e.seed != null ? el("span", { class: "chip" }, "seed " + e.seed) : null,
      e.rep != null ? el("span", { class: "chip" }, "rep " + e.rep) : null));
    art.appendChild(el("div", { class: "chips tuple" },
      el("span", { class: "chip" }, "event " + e.t[0]), el("span", { class: "chip" }, "norm " + e.t[1]),
      el("span", { class: "chip" }, "elicitor " + e.t[2]), el("span", { class: "chip" }, "sanction " + e.t[3]),
      el("span", { class: "chip" }, "precedent " + (e.t[4] == null ? "?" : e.t[4])),
      el("span", { class: "chip" }, "scenario " + e.sc)));

    // One label per chat turn (the last one given wins, as in the chat below), counted over the
    // turns of this chat only, so a label count can never exceed the chat turns shown beside it.
    var labels = Object.create(null), labelCount = Object.create(null), inChat = Object.create(null);
    (e.a || []).forEach(function (a) { if (a[4] != null) inChat[a[4]] = true; });
    (e.l || []).forEach(function (p) { labels[p[0]] = S[p[1]]; });
    Object.keys(labels).forEach(function (tid) {
      var name = labels[tid];
      if (inChat[tid] && name !== "NONE") labelCount[name] = (labelCount[name] || 0) + 1;
    });
    var chatTurns = e.n[0] + e.n[1];
    var outcome = el("div", { class: "chips outcome" },
      el("span", { class: "chip end-reason" }, "end: " + e.end),
      el("span", { class: "chip validity v-" + e.v, title: e.fj || "" }, e.v),
      el("span", { class: "chip counts", "data-messages": e.n[0], "data-reactions": e.n[1], "data-noops": e.n[2],
        title: "chat turns: messages and reactions posted (no-ops: prompts answered with silence)" },
        chatTurns + " chat turns (" + e.n[0] + " messages · " + e.n[1] + " reactions) · " + e.n[2] + " no-ops"));
    Object.keys(labelCount).sort().forEach(function (k) {
      outcome.appendChild(el("span", { class: "chip label-count", "data-label": k, "data-count": labelCount[k],
        title: "chat turns the judge labelled " + k }, labelBadge(k), " ×" + labelCount[k] + " turns"));
    });
    art.appendChild(outcome);
    if (e.fj) art.appendChild(el("div", { class: "muted fidelity" }, "fidelity: " + e.fj));
    var em = e.em == null ? null : OBJ[e.em];
    if (em && typeof em === "object") {
      art.appendChild(el("div", { class: "chips episode-metrics" }, Object.keys(em).map(function (k) {
        return el("span", { class: "chip" }, k + ": " + JSON.stringify(em[k]));
      })));
    }
    art.appendChild(buildHidden(e));
    art.appendChild(buildChat(e, labels));
    var end = el("div", { class: "end", "data-reason": e.end }, "Episode ended: " + e.end + " (after tick " + e.ticks + ")");
    if (e.err) end.appendChild(el("div", { class: "err" }, e.err));
    art.appendChild(end);
    return art;
  }

  function buildHidden(e) {
    var det = el("details", { class: "hidden-norm" }, el("summary", null, "Reveal the hidden norm and persona outlines"));
    var body = el("div", { class: "hidden-body" });
    var norm = (D.norms || {})[e.t[1]] || {};
    body.appendChild(el("p", null, el("b", null, "Norm "), e.t[1] + (norm.kind ? " (" + norm.kind + ")" : "") + ": ",
      el("span", { class: "norm-text" }, norm.text || "(norm text not found in the taxonomy)")));
    if (norm.partner) body.appendChild(el("p", { class: "muted" }, "Opposite pole " + norm.partner + ": " + (norm.partner_text || "")));
    var sanc = (D.sanctions || {})[e.t[3]];
    body.appendChild(el("p", null, el("b", null, "Sanction "), e.t[3] + (sanc ? ": " + sanc : "")));
    var sc = (D.scenarios || {})[e.sc];
    if (sc) {
      if (sc.channel) body.appendChild(el("p", { class: "muted" }, "Channel: " + sc.channel));
      body.appendChild(el("b", null, "Persona outlines"));
      body.appendChild(el("ul", { class: "outline-list" }, sc.personas.map(function (p) {
        return el("li", null, el("span", { class: "actor" }, p[0]), p[0] === sc.demonstrator ? " (precedent demonstrator)" : "", ": " + p[1]);
      })));
    } else {
      body.appendChild(el("p", { class: "muted" }, "Scenario '" + e.sc + "' was not found in the run's scenario source or the shipped bank; persona outlines are unavailable."));
    }
    det.appendChild(body);
    return det;
  }

  function buildChat(e, labels) {
    var chat = el("div", { class: "chat" });
    var colours = Object.create(null), ncol = 0;
    function colourOf(actor) {
      if (actor === e.subj) return "asubj";
      if (!(actor in colours)) colours[actor] = "a" + (ncol++ % 6);
      return colours[actor];
    }
    var byTurn = Object.create(null);
    var tick = -1;
    (e.a || []).forEach(function (a) {
      var t = a[0], actor = S[a[1]], kind = KIND[a[2]] || "no-op", content = S[a[3]], tid = a[4], target = a[5];
      var isSubject = actor === e.subj;
      var shown = isSubject ? actor + "*" : actor;
      if (t !== tick) {
        tick = t;
        chat.appendChild(el("div", { class: "tick", "data-tick": t }, t === 0 ? "before the first tick" : "tick " + t));
      }
      if (kind === "message") {
        var reacts = el("div", { class: "reactions" });
        var msg = el("div", { class: "msg" + (isSubject ? " subject" : ""), "data-turn-id": tid, "data-actor": actor },
          el("div", { class: "head" }, el("span", { class: "tid" }, "t" + tid), el("span", { class: "actor " + colourOf(actor) }, shown),
            a[7] >= 0 ? el("span", { class: "script" }, "(" + S[a[7]] + ")") : null, labelBadge(labels[tid])),
          el("div", { class: "text" }, content), reacts);
        byTurn[tid] = reacts;
        chat.appendChild(msg);
      } else if (kind === "react") {
        var chip = el("span", { class: "reaction", "data-turn-id": tid, "data-actor": actor, "data-target": target, title: "t" + tid + ", tick " + t },
          content + " ", el("span", { class: "actor " + colourOf(actor) }, shown), " ", el("span", { class: "tid" }, "t" + tid),
          a[7] >= 0 ? el("span", { class: "script" }, "(" + S[a[7]] + ")") : null, labelBadge(labels[tid]));
        if (byTurn[target]) byTurn[target].appendChild(chip);
        else chat.appendChild(el("div", { class: "msg orphan" }, shown + " reacted to t" + target + ": ", chip));
      } else {
        chat.appendChild(el("div", { class: "noop", "data-actor": actor },
          shown + (isSubject ? " stayed silent (no-op)" : " (no-op)"), a[6] ? el("span", { class: "pf" }, "parse failure") : null));
      }
    });
    if (!e.a || !e.a.length) chat.appendChild(el("p", { class: "muted" }, "(no actions)"));
    return chat;
  }

  update();
  fromHash();
  document.documentElement.setAttribute("data-ready", "1");
})();
