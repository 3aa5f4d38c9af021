//! `WebClient`: what the page's JavaScript sees (through wasm-bindgen).
//! Each method sends one `Command` to the engine and returns a Promise of
//! its answer: a JSON string, or a rejection with an `Error` whose
//! `message` is the core's words and whose `code` is stable (a server
//! `ErrorCode` name, `OFFLINE`, `USAGE`, ...) for the page to translate.
//!
//! Events reach the page through the callback given to the constructor,
//! one JSON string per call (see `engine.rs` for their shapes).

use futures_channel::{mpsc, oneshot};
use wasm_bindgen::prelude::*;

use dak_core::journal::{COMPACT_OVER_BYTES, JournaledStore, replay};
use dak_core::memory::MemoryStore;
use dak_core::{Profile, ProfileStore};

use crate::engine::{Command, Engine, Reply};
use crate::env::BrowserEnvironment;
use crate::media::MediaRequest;
use crate::opfs::{OpenError, Opened, OpfsJournal};

#[wasm_bindgen]
pub struct WebClient {
    commands: mpsc::UnboundedSender<Command>,
}

#[wasm_bindgen]
impl WebClient {
    /// Opens this browser's profile and starts its engine; `on_event` is
    /// called with each event's JSON. In a dedicated worker the profile is
    /// the journal in the origin's private file system (it outlives the
    /// tab); elsewhere (no OPFS) it lives in memory, and the status says
    /// `storage.persistent: false`. Rejects with code `ANOTHER_TAB` when
    /// another tab has the profile open, and `STORAGE_DAMAGED` when its
    /// journal cannot be replayed.
    ///
    /// `compact_over` (bytes; absent: `COMPACT_OVER_BYTES`) is how big the
    /// journal may grow before opening compacts it: a diagnostic, which the
    /// tests set to 0 to compact on every open.
    pub async fn open(
        on_event: js_sys::Function,
        compact_over: Option<u32>,
    ) -> Result<WebClient, JsValue> {
        let over = compact_over.map_or(COMPACT_OVER_BYTES, |n| n as usize);
        let (store, storage): (Box<dyn ProfileStore>, serde_json::Value) = match OpfsJournal::open()
            .await
        {
            Ok(opened) => {
                let Opened {
                    journal,
                    bytes,
                    inspected,
                } = opened;
                let memory = MemoryStore::new();
                let replayed = replay(&memory, &bytes).map_err(|e| {
                    failure(
                        "STORAGE_DAMAGED",
                        &format!("this browser's stored profile cannot be read: {e}"),
                    )
                })?;
                drop(bytes);
                if replayed.dropped_bytes > 0 {
                    journal
                        .truncate(replayed.kept_bytes)
                        .map_err(|e| failure("STORAGE_DAMAGED", &e.to_string()))?;
                }
                // Compacted when it has grown to twice its last
                // snapshot (and past 4 MiB): the next open reads less.
                // The engine does the same while the tab stays open.
                let store = JournaledStore::new(memory, Box::new(journal))
                    .resumed(inspected, replayed.kept_bytes);
                // Going on after an unsafe failure could let a stale
                // snapshot win at the next open: stop here instead.
                let compacted_to = store.compact(over).map_err(|e| {
                    failure(
                        "STORAGE_FAILED",
                        &format!("this browser's storage failed while tidying the profile: {e}"),
                    )
                })?;
                let storage = serde_json::json!({
                    "persistent": true,
                    "frames": replayed.frames,
                    "bytes": replayed.kept_bytes,
                    "dropped_bytes": replayed.dropped_bytes,
                    "generation": inspected.generation,
                    "compacted_to_bytes": compacted_to,
                });
                (Box::new(store), storage)
            }
            Err(OpenError::InUse) => {
                return Err(failure(
                    "ANOTHER_TAB",
                    "Dak is open in another tab of this browser",
                ));
            }
            // The profile is there but cannot be read now: never
            // start an empty one in its place.
            Err(OpenError::Failed(why)) => {
                return Err(failure(
                    "STORAGE_FAILED",
                    &format!("this browser's storage cannot be read: {why}"),
                ));
            }
            Err(OpenError::Unsupported(why)) => {
                tracing::warn!(%why, "no persistent storage; the profile lives in memory");
                (
                    Box::new(MemoryStore::new()),
                    serde_json::json!({"persistent": false, "why": why}),
                )
            }
        };
        let (commands, rx) = mpsc::unbounded();
        let emit = Box::new(move |event: serde_json::Value| {
            let _ = on_event.call1(&JsValue::NULL, &JsValue::from_str(&event.to_string()));
        });
        let profile = Profile::new(store, Box::new(BrowserEnvironment));
        wasm_bindgen_futures::spawn_local(Engine::new(rx, emit, storage, over).run(profile));
        Ok(WebClient { commands })
    }

    pub fn status(&self) -> js_sys::Promise {
        self.ask(Command::Status)
    }

    /// Asks `server` to text a registration code to `phone`.
    #[wasm_bindgen(js_name = requestCode)]
    pub fn request_code(&self, server: String, phone: String) -> js_sys::Promise {
        self.ask(|reply| Command::RequestCode {
            server,
            phone,
            reply,
        })
    }

    /// Completes the registration with the texted code (and the number's
    /// registration-lock PIN, if it has one; else empty).
    pub fn verify(&self, code: String, pin: String, device_name: String) -> js_sys::Promise {
        self.ask(|reply| Command::Verify {
            code,
            pin,
            device_name,
            reply,
        })
    }

    /// Links this tab to an existing account: a `link_code` event shows the
    /// code; the Promise resolves once the primary device approved it.
    pub fn link(&self, server: String, device_name: String) -> js_sys::Promise {
        self.ask(|reply| Command::Link {
            server,
            device_name,
            reply,
        })
    }

    pub fn chats(&self) -> js_sys::Promise {
        self.ask(Command::Chats)
    }

    /// The server operator's notices this browser accepted, oldest first
    /// (each checked against the key pinned at registration and the log).
    pub fn notices(&self) -> js_sys::Promise {
        self.ask(Command::Notices)
    }

    /// The newest `limit` messages of `chat`, oldest first, and whether
    /// that is all of them (`complete`).
    pub fn messages(&self, chat: String, limit: u32) -> js_sys::Promise {
        self.ask(|reply| Command::Messages {
            chat,
            limit: limit as usize,
            reply,
        })
    }

    /// Sends a text to `chat` (a number or a group key), quoting the
    /// message `reply_to` (an id; empty: none). Resolves once the server
    /// holds it (✓), or once it is queued (🕓) while offline.
    pub fn send(&self, chat: String, text: String, reply_to: String) -> js_sys::Promise {
        self.ask(|reply| Command::Send {
            chat,
            text,
            reply_to: Some(reply_to),
            reply,
        })
    }

    /// Reacts, edits, deletes, forwards, sets a timer or changes a group:
    /// one JSON object, `{"do": "react", "chat", "id", "emoji"}` and the
    /// others in `actions.rs`. Needs the server.
    pub fn act(&self, action: String) -> js_sys::Promise {
        self.ask(|reply| Command::Act { action, reply })
    }

    /// The chat is on screen and the tab visible: its messages are read.
    #[wasm_bindgen(js_name = markRead)]
    pub fn mark_read(&self, chat: String) -> js_sys::Promise {
        self.ask(|reply| Command::MarkRead { chat, reply })
    }

    /// The account's devices, this one marked `this_device`.
    pub fn devices(&self) -> js_sys::Promise {
        self.ask(Command::Devices)
    }

    /// Removes a linked device: this one, or any from the primary device.
    #[wasm_bindgen(js_name = removeDevice)]
    /// (`device_id` a JS number: ids are far below 2^53.)
    pub fn remove_device(&self, device_id: f64) -> js_sys::Promise {
        self.ask(|reply| Command::RemoveDevice {
            device_id: device_id as u64,
            reply,
        })
    }

    /// Approves the link code a new device shows.
    #[wasm_bindgen(js_name = approveLink)]
    pub fn approve_link(&self, code: String) -> js_sys::Promise {
        self.ask(|reply| Command::ApproveLink { code, reply })
    }

    /// A 1:1 chat's safety number and encryption, as JSON: `number` (60
    /// digits in groups of 5, the same on both sides while no one is in
    /// between), `post_quantum`, `suite` (the MLS ciphersuite's name) and
    /// `classic_because` (the devices, `{phone, device_id}`, that keep a
    /// classic chat from being post-quantum).
    #[wasm_bindgen(js_name = safetyNumber)]
    pub fn safety_number(&self, chat: String) -> js_sys::Promise {
        self.ask(|reply| Command::SafetyNumber { chat, reply })
    }

    /// A group's members, admins and settings.
    #[wasm_bindgen(js_name = groupInfo)]
    pub fn group_info(&self, chat: String) -> js_sys::Promise {
        self.ask(|reply| Command::GroupInfo { chat, reply })
    }

    /// Creates a group with these numbers (this device's account is its admin).
    #[wasm_bindgen(js_name = createGroup)]
    pub fn create_group(&self, title: String, members: Vec<String>) -> js_sys::Promise {
        self.ask(|reply| Command::CreateGroup {
            title,
            members,
            reply,
        })
    }

    #[wasm_bindgen(js_name = addMembers)]
    pub fn add_members(&self, chat: String, members: Vec<String>) -> js_sys::Promise {
        self.ask(|reply| Command::AddMembers {
            chat,
            members,
            reply,
        })
    }

    #[wasm_bindgen(js_name = removeMember)]
    pub fn remove_member(&self, chat: String, member: String) -> js_sys::Promise {
        self.ask(|reply| Command::RemoveMember {
            chat,
            member,
            reply,
        })
    }

    /// The network is back: reconnect now rather than at the next backoff.
    pub fn reconnect(&self) {
        let _ = self.commands.unbounded_send(Command::Reconnect);
    }

    /// Seals a picked file and takes its upload slot. `meta` is JSON:
    /// `{"name", "media_type", "voice_note", "duration_ms", "width",
    /// "height"}`; `thumbnail` a small JPEG (maybe empty). Resolves to
    /// `{info, bytes}`: `info` a JSON string `{blob_id, token}`, `bytes`
    /// the ciphertext for the worker to upload.
    #[wasm_bindgen(js_name = prepareFile)]
    pub fn prepare_file(
        &self,
        bytes: Vec<u8>,
        thumbnail: Vec<u8>,
        meta: String,
    ) -> js_sys::Promise {
        #[derive(serde::Deserialize)]
        struct Meta {
            #[serde(default)]
            name: String,
            #[serde(default)]
            media_type: String,
            #[serde(default)]
            voice_note: bool,
            #[serde(default)]
            duration_ms: u32,
            #[serde(default)]
            width: u32,
            #[serde(default)]
            height: u32,
        }
        let meta: Meta = match serde_json::from_str(&meta) {
            Ok(m) => m,
            Err(e) => {
                return js_sys::Promise::reject(&failure("USAGE", &format!("file details: {e}")));
            }
        };
        self.media(MediaRequest::Prepare {
            bytes,
            name: meta.name,
            media_type: meta.media_type,
            voice_note: meta.voice_note,
            duration_ms: meta.duration_ms,
            thumbnail,
            width: meta.width,
            height: meta.height,
        })
    }

    /// Sends the message of a prepared and uploaded file to `chat`, with
    /// `caption`, quoting `reply_to` (an id; empty: none).
    #[wasm_bindgen(js_name = sendPrepared)]
    pub fn send_prepared(
        &self,
        blob_id: String,
        chat: String,
        caption: String,
        reply_to: String,
    ) -> js_sys::Promise {
        self.media(MediaRequest::Send {
            blob_id,
            chat,
            caption,
            reply_to: Some(reply_to).filter(|r| !r.is_empty()),
        })
    }

    /// Where message `id`'s file is: `{blob_id, capability, length,
    /// media_type, file_name}` (a JSON string in `info`), and its
    /// thumbnail's bytes (maybe none).
    #[wasm_bindgen(js_name = fileInfo)]
    pub fn file_info(&self, id: String) -> js_sys::Promise {
        self.media(MediaRequest::Info { id })
    }

    /// Checks and opens message `id`'s downloaded ciphertext: `{info,
    /// bytes}` with the file's bytes; rejects if any check fails.
    #[wasm_bindgen(js_name = openFile)]
    pub fn open_file(&self, id: String, ciphertext: Vec<u8>) -> js_sys::Promise {
        self.media(MediaRequest::Open { id, ciphertext })
    }
}

impl WebClient {
    fn media(&self, request: MediaRequest) -> js_sys::Promise {
        let (reply, answer) = oneshot::channel();
        let sent = self
            .commands
            .unbounded_send(Command::Media { request, reply })
            .is_ok();
        wasm_bindgen_futures::future_to_promise(async move {
            if !sent {
                return Err(failure("STOPPED", "the client stopped; reload the page"));
            }
            match answer.await {
                Ok(Ok((info, bytes))) => {
                    let out = js_sys::Object::new();
                    let _ = js_sys::Reflect::set(&out, &"info".into(), &info.to_string().into());
                    let _ = js_sys::Reflect::set(
                        &out,
                        &"bytes".into(),
                        &js_sys::Uint8Array::from(&bytes[..]).into(),
                    );
                    Ok(out.into())
                }
                Ok(Err(f)) => Err(failure(&f.code, &f.message)),
                Err(_) => Err(failure("STOPPED", "the client stopped; reload the page")),
            }
        })
    }

    fn ask(&self, command: impl FnOnce(Reply) -> Command) -> js_sys::Promise {
        let (reply, answer) = oneshot::channel();
        let sent = self.commands.unbounded_send(command(reply)).is_ok();
        wasm_bindgen_futures::future_to_promise(async move {
            if !sent {
                return Err(failure("STOPPED", "the client stopped; reload the page"));
            }
            match answer.await {
                Ok(Ok(value)) => Ok(JsValue::from_str(&value.to_string())),
                Ok(Err(f)) => Err(failure(&f.code, &f.message)),
                Err(_) => Err(failure("STOPPED", "the client stopped; reload the page")),
            }
        })
    }
}

/// A JS `Error` with a `code` property.
fn failure(code: &str, message: &str) -> JsValue {
    let error = js_sys::Error::new(message);
    let _ = js_sys::Reflect::set(&error, &JsValue::from_str("code"), &JsValue::from_str(code));
    error.into()
}
