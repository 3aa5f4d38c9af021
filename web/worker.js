// The engine's home: a dedicated worker, because the profile's journal is
// written through a synchronous OPFS access handle, which only a worker may
// hold. It loads the client core (dak_web.js + dak_web_bg.wasm), opens the
// profile, and answers the page: {id, method, args} in, {id, value} or
// {id, error: {code, message}} out; events go out as {event: json}.

import init, { WebClient } from "./dak_web.js";

// What the page may call: WebClient's methods, and the two file
// transfers below, nothing else.
const FILES = { sendFile, fetchFile, thumbnail };
const METHODS = new Set(["status", "act", "memory", "requestCode", "verify", "link", "chats", "messages", "send", "markRead", "reconnect", "groupInfo", "createGroup", "addMembers", "removeMember", "safetyNumber", "devices", "removeDevice", "approveLink", "notices"]);

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
    const file = Object.hasOwn(FILES, method) ? FILES[method] : null;
    if (!METHODS.has(method) && !file) throw new Error("no such method: " + method);
    const client = await ready;
    // How much WebAssembly memory the core holds (for measurements).
    if (file) {
      const value = await file(client, ...args);
      // The file's bytes move to the page, not copied.
      postMessage({ id, value }, value && value.bytes ? [value.bytes.buffer] : []);
      return;
    }
    const value = method === "memory" ? wasm.memory.buffer.byteLength : await client[method](...args);
    postMessage({ id, value });
  } catch (err) {
    postMessage({ id, error: { code: err.code || "", message: String(err.message || err) } });
  }
};

// ---- files (docs/PROTOCOL.md §15) ----
//
// The core seals a file and takes its upload slot (prepareFile); the bytes
// move here with fetch, so a long transfer holds up nothing else: tus
// PATCHes of SLICE bytes each, and after a failure a HEAD asks the server
// where the upload stands and the next PATCH starts there. A download is
// one GET, resumed with Range after a cut. Progress goes to the page as
// {"type": "transfer", "kind", "name", "done", "total"} events.

const SLICE = 4 * 1024 * 1024;
const TRIES = 6;

function blobUrl(id) {
  return new URL("/v1/blobs/" + id, self.location.origin).href;
}

function progress(kind, name, done, total) {
  postMessage({ event: JSON.stringify({ type: "transfer", kind, name, done, total }) });
}

function failed(code, message) {
  const e = new Error(message);
  e.code = code;
  return e;
}

// An answer that trying again will not change.
function refusal(r) {
  if (r.status === 404) return failed("BLOB_NOT_FOUND", "the file is no longer on the server");
  if (r.status === 413) return failed("FILE_TOO_LARGE", "the file is too large for this server");
  if (r.status === 460) return failed("ERROR", "the server refused the upload: its bytes did not match");
  if (r.status >= 400 && r.status < 500 && r.status !== 409 && r.status !== 429) return failed("ERROR", "the server refused the transfer: " + r.status);
  return null;
}

async function pause(attempt) {
  await new Promise((done) => setTimeout(done, 500 * 2 ** Math.min(attempt, 4)));
}

async function upload(id, token, bytes, name) {
  const auth = { Authorization: "Bearer " + token, "Tus-Resumable": "1.0.0" };
  let offset = 0;
  let attempt = 0;
  while (offset < bytes.length) {
    try {
      const end = Math.min(bytes.length, offset + SLICE);
      const r = await fetch(blobUrl(id), {
        method: "PATCH",
        headers: { ...auth, "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" },
        body: bytes.subarray(offset, end),
      });
      if (r.status === 204) {
        offset = Number(r.headers.get("Upload-Offset"));
        progress("upload", name, offset, bytes.length);
        attempt = 0;
        continue;
      }
      const no = refusal(r);
      if (no) throw no;
    } catch (e) {
      if (e.code) throw e; // a refusal, not a network failure
    }
    if (++attempt > TRIES) throw failed("OFFLINE", "the upload stopped; try again");
    await pause(attempt);
    try {
      const head = await fetch(blobUrl(id), { method: "HEAD", headers: auth });
      if (head.ok) offset = Number(head.headers.get("Upload-Offset"));
    } catch {
      // Still offline: the next PATCH tries from the same place.
    }
  }
}

// (chat, file bytes, name, media type, caption, voice note?, duration ms, reply-to id)
// A picture's thumbnail, drawn here (JPEG, 128 px at most, 16 KiB at
// most) so that the chat shows something before the file is fetched.
const THUMB_PX = 128;
const THUMB_BYTES = 16 * 1024;

async function drawThumbnail(bytes, type) {
  if (!type.startsWith("image/") || typeof OffscreenCanvas === "undefined") return null;
  try {
    const bitmap = await createImageBitmap(new Blob([bytes], { type }));
    const scale = Math.min(1, THUMB_PX / Math.max(bitmap.width, bitmap.height));
    const w = Math.max(1, Math.round(bitmap.width * scale));
    const h = Math.max(1, Math.round(bitmap.height * scale));
    const canvas = new OffscreenCanvas(w, h);
    canvas.getContext("2d").drawImage(bitmap, 0, 0, w, h);
    for (const quality of [0.7, 0.5, 0.3]) {
      const blob = await canvas.convertToBlob({ type: "image/jpeg", quality });
      if (blob.size <= THUMB_BYTES) {
        return { bytes: new Uint8Array(await blob.arrayBuffer()), width: bitmap.width, height: bitmap.height };
      }
    }
  } catch {
    // Not a picture this browser can draw: no thumbnail.
  }
  return null;
}

// (message id) -> {bytes}: the thumbnail that came with its file.
async function thumbnail(client, id) {
  const info = await client.fileInfo(id);
  return { bytes: info.bytes };
}

async function sendFile(client, chat, bytes, name, type, caption, voice, durationMs, replyTo) {
  type = type || "application/octet-stream";
  const thumb = voice ? null : await drawThumbnail(bytes, type);
  const meta = {
    name, media_type: type, voice_note: !!voice, duration_ms: durationMs >>> 0,
    width: thumb ? thumb.width : 0, height: thumb ? thumb.height : 0,
  };
  const prepared = await client.prepareFile(new Uint8Array(bytes), thumb ? thumb.bytes : new Uint8Array(), JSON.stringify(meta));
  const slot = JSON.parse(prepared.info);
  progress("upload", name, 0, prepared.bytes.length);
  await upload(slot.blob_id, slot.token, prepared.bytes, name);
  const sent = await client.sendPrepared(slot.blob_id, chat, caption || "", replyTo || "");
  return sent.info;
}

async function download(info, name) {
  const parts = [];
  let have = 0;
  let attempt = 0;
  while (have < info.length) {
    try {
      const headers = { Authorization: "Bearer " + info.capability };
      if (have > 0) headers.Range = "bytes=" + have + "-";
      const r = await fetch(blobUrl(info.blob_id), { headers });
      const no = refusal(r);
      if (no) throw no;
      if (r.ok && (have === 0 || r.status === 206)) {
        const before = have;
        const reader = r.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (have + value.length > info.length) throw failed("ERROR", "the server sent more than the file");
          parts.push(value);
          have += value.length;
          progress("download", name, have, info.length);
        }
        // A body that ended early is resumed at once if it brought
        // something; one that brought nothing counts as a failed try.
        if (have > before) {
          attempt = 0;
          continue;
        }
      }
    } catch (e) {
      if (e.code) throw e;
    }
    if (++attempt > TRIES) throw failed("OFFLINE", "the download stopped; try again");
    await pause(attempt);
  }
  const all = new Uint8Array(info.length);
  let at = 0;
  for (const p of parts) {
    all.set(p, at);
    at += p.length;
  }
  return all;
}

// (message id) -> {bytes, media_type, file_name}: checked and opened.
async function fetchFile(client, id) {
  const info = JSON.parse((await client.fileInfo(id)).info);
  const name = info.file_name || info.media_type;
  const ciphertext = await download(info, name);
  const opened = await client.openFile(id, ciphertext);
  return { bytes: opened.bytes, media_type: info.media_type, file_name: info.file_name };
}
