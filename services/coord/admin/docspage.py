"""The page at /api/v1/docs: the admin API's operations, read from /api/v1/openapi.json, each with a
form that sends it with fetch() and shows the answer. Self-contained (no script or style from
elsewhere): the admin listener is often on a network without access to a CDN, and a page that
loads others' code next to an API key is a risk we do not need."""

from __future__ import annotations

__all__ = ["PAGE"]

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'">
<title>trioscale admin API</title>
<style>
body{font:14px system-ui,sans-serif;margin:0 auto;max-width:60em;padding:1em}
details{border:1px solid #ccc;border-radius:4px;margin:.4em 0;padding:.3em .6em}
summary{cursor:pointer}
.verb{display:inline-block;width:4.5em;font-weight:bold;font-family:monospace}
.get{color:#1565c0}.post{color:#2e7d32}.put{color:#ef6c00}.delete{color:#c62828}
code,pre,textarea,input{font-family:monospace}
pre{background:#f5f5f5;padding:.5em;overflow:auto;max-height:30em}
label{display:block;margin:.2em 0} textarea{width:100%;min-height:5em}
</style></head><body>
<h1>trioscale admin API</h1>
<p>The document: <a href="openapi.yaml">openapi.yaml</a>, <a href="openapi.json">openapi.json</a>.
<label>API key (sent as <code>Authorization: Bearer …</code>; kept in this page only):
<input id="key" type="password" size="60" autocomplete="off"></label></p>
<div id="ops">loading…</div>
<script>
"use strict";
const el = (tag, attrs, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
};
function resolve(doc, s) {
  return s && s.$ref ? s.$ref.split("/").slice(1).reduce((o, p) => o[p], doc) : s;
}
function operation(doc, path, verb, op) {
  const inputs = {};
  const form = el("div");
  for (const p of op.parameters || []) {
    const i = el("input", {size: 40});
    inputs[p.name] = [p, i];
    form.append(el("label", {}, `${p.name} (${p.in}${p.required ? ", required" : ""}): `, i,
                   " " + (p.description || "")));
  }
  let body = null;
  if (op.requestBody) {
    const schema = op.requestBody.content["application/json"].schema;
    body = el("textarea");
    body.value = JSON.stringify(Object.fromEntries(Object.keys(schema.properties || {}).map(k => [k, null])), null, 1);
    form.append(el("label", {}, "JSON body:", body));
  }
  const out = el("pre");
  const send = el("button", {}, "Send");
  send.onclick = async () => {
    let url = path;
    const query = new URLSearchParams();
    for (const [name, [p, i]] of Object.entries(inputs)) {
      if (p.in === "path") url = url.replace(`{${name}}`, encodeURIComponent(i.value));
      else if (i.value !== "") query.append(name, i.value);
    }
    if ([...query].length) url += "?" + query;
    const headers = {};
    const key = document.getElementById("key").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    const init = {method: verb.toUpperCase(), headers};
    if (body) {
      const data = JSON.parse(body.value || "{}");
      for (const k of Object.keys(data)) if (data[k] === null) delete data[k];
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(data);
    }
    out.textContent = "…";
    try {
      const resp = await fetch(url, init);
      const text = await resp.text();
      let shown = text;
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) {}
      out.textContent = `${resp.status} ${resp.statusText}\\n${shown}`;
    } catch (e) {
      out.textContent = String(e);
    }
  };
  const ok = resolve(doc, (op.responses || {})["200"]);
  const schema = ok && ok.content ? Object.values(ok.content)[0].schema : null;
  return el("details", {},
    el("summary", {}, el("span", {class: "verb " + verb}, verb.toUpperCase()), el("code", {}, path), " " + op.summary),
    form, send, out,
    el("p", {}, "Answer (200):"), el("pre", {}, JSON.stringify(schema, null, 1)));
}
fetch("openapi.json").then(r => r.json()).then(doc => {
  const ops = document.getElementById("ops");
  ops.textContent = "";
  for (const [path, verbs] of Object.entries(doc.paths))
    for (const [verb, op] of Object.entries(verbs)) ops.append(operation(doc, path, verb, op));
}, e => { document.getElementById("ops").textContent = "cannot load openapi.json: " + e; });
</script></body></html>
"""
