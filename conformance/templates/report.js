/* bnconform report: sorting, filtering, the cross-framework case picker. No library, no network. */
(function () {
  "use strict";
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };

  /* -- lazy parts: finding bodies, the checks table, the cross-framework cases are gzip'd JSON in the page
     (<script type="application/octet-stream" id="data-NAME">, base64), inserted when first opened. The JSON
     holds each distinct line once ("lines") and every text as indices into them, in the part's shape: one
     text ("text"), a list ("list") or a map ("map") of them (conformance.outputs.report._pack) */
  function texts(data) {
    var lines = data.lines;
    function text(indices) { return indices.map(function (i) { return lines[i]; }).join("\n"); }
    if (data.text) { return text(data.text); }
    if (data.map) {
      var out = {};
      Object.keys(data.map).forEach(function (k) { out[k] = text(data.map[k]); });
      return out;
    }
    return data.list.map(text);
  }
  var packs = {};
  function unpack(name) {
    if (!packs[name]) {
      var el = document.getElementById("data-" + name);
      if (!el) { packs[name] = Promise.resolve(null); }
      else if (typeof DecompressionStream === "undefined") {
        packs[name] = Promise.reject(new Error("this browser cannot decompress the report's data (DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+)"));
      } else {
        var bin = atob(el.textContent.trim()), bytes = new Uint8Array(bin.length);
        for (var i = 0; i < bin.length; i += 1) { bytes[i] = bin.charCodeAt(i); }
        var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
        packs[name] = new Response(stream).text().then(JSON.parse).then(texts);
      }
    }
    return packs[name];
  }
  function fill(el, name, pick) {  /* el gets its HTML from data NAME once; returns a promise */
    if (el.getAttribute("data-filled")) { return Promise.resolve(el); }
    return unpack(name).then(function (data) {
      if (!el.getAttribute("data-filled")) {
        el.innerHTML = data ? pick(data) : "";
        el.setAttribute("data-filled", "1");
        bindCopy(el);
      }
      return el;
    }, function (err) {
      el.innerHTML = "<p class=\"banner warn\"></p>";
      el.firstChild.textContent = String(err.message || err);
    });
  }
  function fillFinding(d) {
    return fill($(".body", d), "findings", function (m) { return m[d.id] || ""; });
  }
  function fillChecks() {
    return fill($("#checks-table tbody"), "checks", function (rows) { return rows.join(""); });
  }
  function fillCase(div) {
    return fill(div, "cross", function (m) { return m[div.getAttribute("data-case")] || ""; });
  }

  /* -- sortable tables: click a header; cells may carry data-sort (numbers sort numerically) */
  function key(cell) {
    if (!cell) { return ""; }
    var s = cell.getAttribute("data-sort");
    if (s === null) { s = cell.textContent.trim(); }
    var n = Number(s);
    return (s !== "" && !isNaN(n)) ? n : s.toLowerCase();
  }
  function compare(a, b) {
    if (typeof a === typeof b) { return a < b ? -1 : (a > b ? 1 : 0); }
    return typeof a === "number" ? -1 : 1;
  }
  $$("table.sortable thead th").forEach(function (th) {
    th.addEventListener("click", function () {
      var table = th.closest("table"), body = table.tBodies[0];
      var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
      var asc = th.getAttribute("data-dir") !== "asc";
      $$("thead th", table).forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (r1, r2) {  /* rows marked data-last (adapters not installed) stay at the end */
        var l1 = r1.hasAttribute("data-last"), l2 = r2.hasAttribute("data-last");
        if (l1 !== l2) { return l1 ? 1 : -1; }
        var c = compare(key(r1.cells[idx]), key(r2.cells[idx]));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });

  /* -- matrix filter */
  var mf = $("#matrix-filter"), mm = $("#matrix-mode"), mp = $("#matrix-problems");
  function filterMatrix() {
    var text = (mf.value || "").toLowerCase(), mode = mm.value, bad = mp.checked;
    $$("#matrix-table tbody tr").forEach(function (tr) {
      var show = tr.getAttribute("data-adapter").toLowerCase().indexOf(text) >= 0
        && (!mode || tr.getAttribute("data-mode") === mode)
        && (!bad || tr.getAttribute("data-bad") === "1");
      tr.hidden = !show;
    });
  }
  if (mf) { [mf, mm, mp].forEach(function (el) { el.addEventListener("input", filterMatrix); el.addEventListener("change", filterMatrix); }); }

  /* -- findings and checks filter */
  var fa = $("#f-adapter"), fq = $("#f-quantity"), fm = $("#f-mode"), ft = $("#f-text"), fc = $("#f-count");
  function filterChecks() {
    var verdicts = {};
    $$("#check-filters input[name=verdict]").forEach(function (cb) { verdicts[cb.value] = cb.checked; });
    var a = fa.value, q = fq.value, m = fm.value, t = (ft.value || "").toLowerCase();
    var shown = 0, total = 0;
    function keep(el) {
      return verdicts[el.getAttribute("data-verdict")]
        && (!a || el.getAttribute("data-adapter") === a)
        && (!q || el.getAttribute("data-quantity") === q)
        && (!m || el.getAttribute("data-mode") === m)
        && (!t || (el.querySelector("summary") || el).textContent.toLowerCase().indexOf(t) >= 0);
    }
    $$("#findings > details.finding").forEach(function (el) { el.hidden = !keep(el); });
    $$("#checks-table tbody tr").forEach(function (tr) {
      var k = keep(tr); tr.hidden = !k; total += 1; if (k) { shown += 1; }
    });
    var findings = $$("#findings > details.finding:not([hidden])").length;
    fc.textContent = findings + " finding(s)" + (total ? " and " + shown + " of " + total + " checks match" : " match");
  }
  $$("#check-filters input, #check-filters select").forEach(function (el) {
    el.addEventListener("input", filterChecks); el.addEventListener("change", filterChecks);
  });
  if (fc) { filterChecks(); }

  /* -- a matrix cell lists its checks */
  $$("#matrix-table td.cell").forEach(function (td) {
    td.addEventListener("click", function () {
      var tr = td.parentNode;
      fa.value = tr.getAttribute("data-adapter");
      fm.value = tr.getAttribute("data-mode");
      fq.value = td.getAttribute("data-q") || "";
      $$("#check-filters input[name=verdict]").forEach(function (cb) { cb.checked = true; });
      $("#all-checks").open = true;
      fillChecks().then(function () { filterChecks(); $("#all-checks").scrollIntoView(); });
    });
  });

  /* -- cross-framework case picker */
  var xs = $("#xcase");
  if (xs) {
    xs.addEventListener("change", function () {
      $$(".xcase").forEach(function (d) {
        d.hidden = d.getAttribute("data-case") !== xs.value;
        if (!d.hidden) { fillCase(d); }
      });
    });
    var first = $(".xcase:not([hidden])");
    if (first && "IntersectionObserver" in window) {  /* the first case when the section comes into view */
      var seen = new IntersectionObserver(function (entries) {
        if (entries.some(function (e) { return e.isIntersecting; })) { seen.disconnect(); fillCase(first); }
      });
      seen.observe($("#cross"));
    } else if (first) { fillCase(first); }
  }

  /* -- the per-step plots when their section comes into view */
  var plots = $("#steps .plots");
  if (plots) {
    var drawPlots = function () { fill(plots, "steps", function (figs) { return figs.join(""); }); };
    if ("IntersectionObserver" in window) {
      var watch = new IntersectionObserver(function (entries) {
        if (entries.some(function (e) { return e.isIntersecting; })) { watch.disconnect(); drawPlots(); }
      });
      watch.observe(plots);
    } else { drawPlots(); }
  }

  /* -- the findings' list is read from the page's data once the page is shown; opening a finding inserts its
     body, opening a skip reason its checks */
  var listed = fill($("#findings"), "finding-list", function (html) { return html; }).then(function () {
    $$("#findings > details.finding").forEach(function (d) {
      d.addEventListener("toggle", function () { if (d.open) { fillFinding(d); } });
    });
    if (fc) { filterChecks(); }
  });
  $$("details.lazy-ids").forEach(function (d) {
    d.addEventListener("toggle", function () {
      var div = $(".ids", d);
      if (d.open) { fill(div, "skips", function (m) { return escapeHtml(m[div.getAttribute("data-key")] || ""); }); }
    });
  });
  function escapeHtml(text) { var p = document.createElement("p"); p.textContent = text; return p.innerHTML; }
  var all = $("#all-checks");
  if (all) { all.addEventListener("toggle", function () { if (all.open) { fillChecks().then(filterChecks); } }); }

  /* -- links to a finding open it */
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var el = id && document.getElementById(id);
    if (el && el.tagName === "DETAILS") {
      el.hidden = false; el.open = true;
      fillFinding(el).then(function () { el.scrollIntoView(); });
      el.scrollIntoView();
    }
  }
  window.addEventListener("hashchange", function () { listed.then(openTarget); });
  listed.then(openTarget);

  /* -- copy a repro snippet (bound as finding bodies are inserted) */
  function bindCopy(root) {
    $$("button.copy", root).forEach(function (b) {
      b.addEventListener("click", function () {
        var text = document.getElementById(b.getAttribute("data-for")).textContent;
        if (navigator.clipboard) { navigator.clipboard.writeText(text).then(function () { b.textContent = "copied"; }); }
      });
    });
  }
})();
