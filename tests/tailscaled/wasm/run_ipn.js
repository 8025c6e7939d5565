// Runs Tailscale's WebAssembly client (tailscale.com/cmd/tsconnect/wasm, built by `make clients`)
// under Node.js: it reaches the control server only through TS2021 over WebSocket and DERP only
// over WebSocket, as it does in a browser. Prints one line per event ("STATE Running", "NETMAP
// <self address>", "FETCH <status> <body>") for the test to wait on.
//
//   node run_ipn.js WASM WASM_EXEC_JS WS_MODULE_DIR CONTROL_URL AUTHKEY HOSTNAME FETCH_URL
"use strict";

const [wasmPath, wasmExec, wsDir, controlURL, authKey, hostname, fetchURL] = process.argv.slice(2);
globalThis.WebSocket = require(require("path").join(wsDir, "ws"));  // a browser's WebSocket
// Go's net/http on js/wasm uses the Fetch API, as in a browser, unless process.argv0 starts with
// "node" (then it uses a fake in-memory network meant for Go's own tests): the test starts this
// script with another argv0 (`exec -a`).
if (process.argv0.startsWith("node")) {
  console.log("LOADERR start me with an argv0 other than node (exec -a browser node ...)");
  process.exit(2);
}
require(wasmExec);  // defines globalThis.Go

const fs = require("fs");
const go = new Go();

WebAssembly.instantiate(fs.readFileSync(wasmPath), go.importObject).then(({ instance }) => {
  go.run(instance);
  const ipn = newIPN({ controlURL, authKey, hostname });
  let fetched = false;
  let loggingIn = false;
  ipn.run({
    notifyState(state) {
      console.log(`STATE ${state}`);
      if (state === "NeedsLogin" && !loggingIn) {
        loggingIn = true;  // with an auth key, as `tailscale up --authkey` does after Start
        ipn.login();
      }
    },
    notifyNetMap(json) {
      const nm = JSON.parse(json);
      console.log(`NETMAP ${(nm.self && nm.self.addresses || []).join(",")} peers=${(nm.peers || []).length}`);
      if (!fetched && fetchURL && (nm.peers || []).length > 0) {
        fetched = true;
        const attempt = (left) => ipn.fetch(fetchURL)
          .then((res) => res.text().then((body) => console.log(`FETCH ${res.status} ${body.trim()}`)))
          .catch((err) => {
            if (left > 0) setTimeout(() => attempt(left - 1), 1000);
            else console.log(`FETCHERR ${err}`);
          });
        attempt(30);
      }
    },
    notifyBrowseToURL(url) {
      console.log(`URL ${url}`);
    },
    notifyPanicRecover(err) {
      console.log(`PANIC ${err}`);
    },
  });
}).catch((err) => {
  console.log(`LOADERR ${err}`);
  process.exit(2);
});
