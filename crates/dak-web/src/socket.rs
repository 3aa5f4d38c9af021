//! `BrowserSocket`: the core's `Transport` over the browser's `WebSocket`.
//!
//! The browser calls back (`onopen`, `onmessage`, `onerror`, `onclose`);
//! each callback puts what happened on a channel, and `recv` takes it off in
//! order, so the core sees the same "one frame at a time" stream as over
//! tungstenite natively.
//!
//! Invariants:
//! - Frames are binary (`binaryType = "arraybuffer"`); a text frame or one
//!   over `dak_proto::MAX_FRAME_BYTES` is a protocol error, as natively.
//! - The callbacks live exactly as long as the socket: `Drop` unhooks them
//!   and closes the socket, so the browser never calls into a dropped
//!   closure.
//! - The certificate is the browser's business: the page and its socket
//!   come from one origin, and the browser has already judged that origin's
//!   certificate (pinning as the CLI does is not possible from a page).
//!
//! The browser gives a WebSocket no backpressure on receive: frames queue
//! here as fast as the server sends them. The server bounds that (it sends
//! a device its mailbox in pages and waits for acks), not this channel.

use futures_channel::mpsc;
use futures_util::StreamExt;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use dak_core::{ClientError, Transport};

use crate::env::BrowserEnvironment;

/// How long opening a socket may take (DNS, TCP, TLS, the upgrade), as the
/// native client's `CONNECT_TIMEOUT`: a host that is gone must not hold a
/// reconnection for the browser's own, much longer, timeout.
const OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the browser told us about the socket, in order.
enum Happened {
    Open,
    Frame(Vec<u8>),
    /// A text frame, or a binary one over the protocol's limit.
    BadFrame(String),
    Error,
    Closed {
        code: u16,
        reason: String,
    },
}

pub struct BrowserSocket {
    ws: WebSocket,
    rx: mpsc::UnboundedReceiver<Happened>,
    reason: Option<String>,
    _on_open: Closure<dyn FnMut(web_sys::Event)>,
    _on_message: Closure<dyn FnMut(MessageEvent)>,
    _on_error: Closure<dyn FnMut(web_sys::Event)>,
    _on_close: Closure<dyn FnMut(CloseEvent)>,
}

/// `wss://host:port` (what a profile stores) to the socket's address.
pub fn socket_url(server: &str) -> String {
    format!("{}/v1/ws", server.trim_end_matches('/'))
}

impl BrowserSocket {
    /// Opens `server`'s WebSocket and waits until it is open (or failed).
    pub async fn open(server: &str) -> Result<BrowserSocket, ClientError> {
        if !(server.starts_with("wss://") || server.starts_with("ws://")) {
            return Err(ClientError::Usage(format!(
                "server address {server:?} must start with wss:// (or ws:// on this computer)"
            )));
        }
        let ws = WebSocket::new(&socket_url(server))
            .map_err(|e| ClientError::Transport(format!("{server}: {}", js_text(&e))))?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let (tx, rx) = mpsc::unbounded();

        let t = tx.clone();
        let on_open = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            let _ = t.unbounded_send(Happened::Open);
        });
        let t = tx.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let happened = match e.data().dyn_into::<js_sys::ArrayBuffer>() {
                Ok(buf) if buf.byte_length() as usize <= dak_proto::MAX_FRAME_BYTES => {
                    Happened::Frame(js_sys::Uint8Array::new(&buf).to_vec())
                }
                Ok(buf) => Happened::BadFrame(format!(
                    "a frame of {} bytes, over the protocol's limit",
                    buf.byte_length()
                )),
                Err(_) => Happened::BadFrame("a text frame".into()),
            };
            let _ = t.unbounded_send(happened);
        });
        let t = tx.clone();
        let on_error = Closure::<dyn FnMut(web_sys::Event)>::new(move |_| {
            let _ = t.unbounded_send(Happened::Error);
        });
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
            let _ = tx.unbounded_send(Happened::Closed {
                code: e.code(),
                reason: e.reason(),
            });
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let mut socket = BrowserSocket {
            ws,
            rx,
            reason: None,
            _on_open: on_open,
            _on_message: on_message,
            _on_error: on_error,
            _on_close: on_close,
        };
        let opened = dak_core::env::timeout(&BrowserEnvironment, OPEN_TIMEOUT, async {
            loop {
                match socket.rx.next().await {
                    Some(Happened::Open) => return Ok(()),
                    // The browser says no more than "it failed" (on purpose: a
                    // page must not probe the network); the close follows.
                    Some(Happened::Error) => continue,
                    Some(Happened::Closed { code, .. }) => {
                        return Err(ClientError::Transport(format!(
                            "{server}: the connection failed (WebSocket close code {code})"
                        )));
                    }
                    Some(Happened::Frame(_) | Happened::BadFrame(_)) => continue,
                    None => return Err(ClientError::Transport(format!("{server}: no answer"))),
                }
            }
        })
        .await;
        match opened {
            Some(Ok(())) => Ok(socket),
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Transport(format!(
                "{server}: no answer within {OPEN_TIMEOUT:?}"
            ))),
        }
    }
}

#[async_trait::async_trait(?Send)]
impl Transport for BrowserSocket {
    async fn send(&mut self, frame: Vec<u8>) -> Result<(), ClientError> {
        if self.ws.ready_state() != WebSocket::OPEN {
            return Err(ClientError::Closed(String::new()));
        }
        self.ws
            .send_with_u8_array(&frame)
            .map_err(|e| ClientError::Transport(js_text(&e)))
    }

    async fn recv(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            match self.rx.next().await {
                Some(Happened::Frame(frame)) => return Ok(Some(frame)),
                Some(Happened::BadFrame(what)) => {
                    return Err(ClientError::Protocol(format!("the server sent {what}")));
                }
                Some(Happened::Open) => continue,
                Some(Happened::Error) => {
                    return Err(ClientError::Transport("the connection failed".into()));
                }
                Some(Happened::Closed { code, reason }) => {
                    self.reason = Some(if reason.is_empty() {
                        format!("close code {code}")
                    } else {
                        reason
                    });
                    return Ok(None);
                }
                None => return Ok(None),
            }
        }
    }

    async fn close(&mut self) {
        let _ = self.ws.close();
    }

    fn close_reason(&self) -> Option<String> {
        self.reason.clone()
    }
}

impl Drop for BrowserSocket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onerror(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// A JS exception's message, for an error the user reads.
pub fn js_text(v: &JsValue) -> String {
    if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        return String::from(e.message());
    }
    v.as_string().unwrap_or_else(|| format!("{v:?}"))
}
