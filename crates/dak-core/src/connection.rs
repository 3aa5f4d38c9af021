//! A connection to the server: sends requests with fresh ids, matches their
//! answers, and queues pushes that arrive while waiting. Written for one
//! task: `call` and `next_push` are both `&mut self`.

use std::collections::VecDeque;
use std::time::Duration;

use dak_proto::v1::{self, ClientFrame, ServerFrame, client_frame::Request, server_frame::Body};
use dak_proto::{AuthPurpose, auth_payload};
use ed25519_dalek::{Signer, SigningKey};
use prost::Message;

use std::sync::Arc;

use crate::ClientError;
use crate::env::{Environment, timeout};
use crate::transport::Transport;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Connection {
    transport: Box<dyn Transport>,
    env: Arc<dyn Environment>,
    next_id: u64,
    nonce: Vec<u8>,
    /// The notice key and log the challenge announced (`notices.rs`).
    notice_key: Vec<u8>,
    notice_log: (u64, Vec<u8>),
    /// The key directory's VRF key the challenge announced (`kt.rs`).
    key_directory_key: Vec<u8>,
    pushes: VecDeque<Body>,
}

impl Connection {
    /// Wraps a fresh transport and reads the server's challenge.
    pub async fn open(
        mut transport: Box<dyn Transport>,
        env: Arc<dyn Environment>,
    ) -> Result<Connection, ClientError> {
        let first = timeout(env.as_ref(), CALL_TIMEOUT, transport.recv())
            .await
            .ok_or_else(|| ClientError::Timeout("no challenge from the server".into()))??
            .ok_or_else(|| ClientError::Closed(" before saying hello".into()))?;
        let frame = dak_proto::decode_server_frame(&first)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let Some(Body::Challenge(challenge)) = frame.body else {
            return Err(ClientError::Protocol(
                "the server did not start with a challenge".into(),
            ));
        };
        Ok(Connection {
            transport,
            env,
            next_id: 1,
            nonce: challenge.nonce,
            notice_key: challenge.notice_key,
            notice_log: (challenge.notice_log_length, challenge.notice_log_head),
            key_directory_key: challenge.key_directory_key,
            pushes: VecDeque::new(),
        })
    }

    /// The operator's notice key and the notice log's length and head, as
    /// this connection's challenge announced them (empty key: a server
    /// from before notices).
    pub fn notice_log(&self) -> (Vec<u8>, u64, Vec<u8>) {
        (
            self.notice_key.clone(),
            self.notice_log.0,
            self.notice_log.1.clone(),
        )
    }

    /// The key directory's VRF key (empty: a server without one).
    pub fn key_directory_key(&self) -> &[u8] {
        &self.key_directory_key
    }

    /// Signs this connection's challenge for `purpose`.
    pub fn sign(&self, key: &SigningKey, purpose: AuthPurpose, claim: &[u8]) -> Vec<u8> {
        key.sign(&auth_payload(purpose, &self.nonce, claim))
            .to_bytes()
            .to_vec()
    }

    pub async fn authenticate(
        &mut self,
        key: &SigningKey,
        device_id: u64,
    ) -> Result<v1::Authenticated, ClientError> {
        let signature = self.sign(key, AuthPurpose::Authenticate, &device_id.to_be_bytes());
        match self
            .call(Request::Authenticate(v1::Authenticate {
                device_id,
                signature,
            }))
            .await?
        {
            Body::Authenticated(a) => Ok(a),
            other => Err(unexpected(other)),
        }
    }

    /// Sends a request without waiting for its answer; returns its id.
    pub async fn send(&mut self, request: Request) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = ClientFrame {
            request_id: id,
            request: Some(request),
        };
        self.transport.send(frame.encode_to_vec()).await?;
        Ok(id)
    }

    /// Sends a request and waits for its answer; pushes that arrive in the
    /// meantime are kept for `next_push`. A server error becomes `Err`.
    pub async fn call(&mut self, request: Request) -> Result<Body, ClientError> {
        let id = self.send(request).await?;
        let env = self.env.clone();
        timeout(env.as_ref(), CALL_TIMEOUT, self.wait_for(id))
            .await
            .ok_or_else(|| ClientError::Timeout("the server did not answer".into()))?
    }

    async fn wait_for(&mut self, id: u64) -> Result<Body, ClientError> {
        loop {
            let frame = self.read().await?;
            if frame.request_id == 0 {
                if let Some(body) = frame.body {
                    self.pushes.push_back(body);
                }
                continue;
            }
            if frame.request_id != id {
                continue; // an answer to a request sent with `send` and not awaited
            }
            return match frame.body {
                Some(Body::Error(e)) => Err(ClientError::Server(e)),
                Some(body) => Ok(body),
                None => Err(ClientError::Protocol("empty answer".into())),
            };
        }
    }

    /// The next push from the server (Deliver, QueueEmpty, Notice, ...).
    pub async fn next_push(&mut self) -> Result<Body, ClientError> {
        if let Some(body) = self.pushes.pop_front() {
            return Ok(body);
        }
        loop {
            let frame = self.read().await?;
            if frame.request_id == 0
                && let Some(body) = frame.body
            {
                return Ok(body);
            }
        }
    }

    /// The next frame of any kind, answers included, for callers that keep
    /// several requests in flight (the load generator). Cancel-safe.
    pub async fn next_frame(&mut self) -> Result<ServerFrame, ClientError> {
        if let Some(body) = self.pushes.pop_front() {
            return Ok(ServerFrame {
                request_id: 0,
                body: Some(body),
            });
        }
        self.read().await
    }

    async fn read(&mut self) -> Result<ServerFrame, ClientError> {
        let bytes = self
            .transport
            .recv()
            .await?
            .ok_or_else(|| ClientError::Closed(String::new()))?;
        dak_proto::decode_server_frame(&bytes).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn close(mut self) {
        self.transport.close().await;
    }
}

pub fn unexpected(body: Body) -> ClientError {
    let name = format!("{body:?}");
    ClientError::Protocol(format!(
        "unexpected answer: {}",
        name.split('(').next().unwrap_or("?")
    ))
}
