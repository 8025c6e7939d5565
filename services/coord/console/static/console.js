// The console's one script (no inline script anywhere: the Content-Security-Policy allows none).
// It keeps the page's live part current: the server's event stream names the topics each new
// change touched, and when one is this page's, the live part is fetched again and swapped in.
// It also asks before the forms marked data-confirm are sent.
(function () {
  "use strict";

  // once a form is sent the browser is on its way to the answer's page: a refresh or a
  // navigation from here would race it (and could take the notice that page should show)
  var leaving = false;

  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { ev.preventDefault(); return; }
    leaving = true;
  });

  // the policy editor: put the cursor where the error is
  var editor = document.getElementById("policy-text");
  if (editor && editor.hasAttribute("data-line")) {
    var line = parseInt(editor.getAttribute("data-line"), 10), column = parseInt(editor.getAttribute("data-column"), 10);
    var lines = editor.value.split("\n"), at = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1;
    at = Math.min(at + Math.max(column - 1, 0), editor.value.length);
    editor.focus();
    editor.setSelectionRange(at, at);
  }

  var live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  var topics = (live.getAttribute("data-topics") || "").split(/\s+/).filter(Boolean);
  var busy = false, again = false;

  function editing() {
    // a refresh would throw away what is being typed: wait until the field loses focus
    var el = document.activeElement;
    return el && live.contains(el) && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }

  function refresh() {
    if (leaving) return;
    if (busy || editing()) { again = true; return; }
    busy = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "live");
    fetch(url.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (resp) {
        if (leaving) return null;
        if (resp.status === 403) { window.location.assign("/console/signin"); return null; }
        // the page's subject is gone (a node deleted elsewhere): go to the page whose fragment
        // the server sent instead
        if (resp.redirected) {
          var next = new URL(resp.url);
          next.searchParams.delete("fragment");
          window.location.assign(next.toString());
          return null;
        }
        return resp.ok ? resp.text() : null;
      })
      .then(function (html) {
        if (html === null || html === undefined || leaving) return;
        // typing may have begun while the fetch was out: keep it, swap in on focusout
        if (editing()) { again = true; return; }
        live.innerHTML = html;
        live.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { /* the next change tries again */ })
      .finally(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  document.addEventListener("focusout", function () {
    if (again) window.setTimeout(function () { if (again && !editing()) { again = false; refresh(); } }, 0);
  });

  var source = new EventSource("/console/events");
  source.addEventListener("change", function (ev) {
    var touched = [];
    try { touched = JSON.parse(ev.data); } catch (e) { return; }
    if (touched.some(function (t) { return topics.indexOf(t) >= 0; })) refresh();
  });
  source.addEventListener("open", function () {
    document.body.setAttribute("data-live", "on");
  });
  source.addEventListener("signout", function () {
    source.close();
    window.location.assign("/console/signin");
  });
})();
