// The engine's home: a dedicated worker, because the profile's journal is
// written through a synchronous OPFS access handle, which only a worker may
// hold. It loads the client core (dak_web.js + dak_web_bg.wasm), opens the
// profile, and answers the page: {id, method, args} in, {id, value} or
// {id, error: {code, message}} out; events go out as {event: json}.

import init, { WebClient } from "./dak_web.js";

// What the page may call: WebClient's methods, nothing else.
const METHODS = new Set(["status", "act", "memory", "requestCode", "verify", "link", "chats", "messages", "send", "markRead", "reconnect", "groupInfo", "createGroup", "addMembers", "removeMember", "safetyNumber", "devices", "removeDevice", "approveLink"]);

let wasm = null;

const ready = (async () => {
  wasm = await init({ module_or_path: "/web/dak_web_bg.wasm" });
  // ?compact_over=BYTES (a diagnostic; the tests use 0): compact the
  // profile's journal on opening once it is that big.
  const over = new URL(self.location.href).searchParams.get("compact_over");
  const bytes = over !== null && /^\d{1,10}$/.test(over) ? Math.min(Number(over), 0xffffffff) : undefined;
  return WebClient.open((json) => postMessage({ event: json }), bytes);
})();
ready.catch((e) => postMessage({ event: JSON.stringify({ type: "open_failed", code: e.code || "", message: String(e.message || e) }) }));

onmessage = async (e) => {
  const { id, method, args } = e.data;
  try {
    if (!METHODS.has(method)) throw new Error("no such method: " + method);
    const client = await ready;
    // How much WebAssembly memory the core holds (for measurements).
    const value = method === "memory" ? wasm.memory.buffer.byteLength : await client[method](...args);
    postMessage({ id, value });
  } catch (err) {
    postMessage({ id, error: { code: err.code || "", message: String(err.message || err) } });
  }
};
