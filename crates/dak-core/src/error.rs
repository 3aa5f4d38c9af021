use dak_proto::v1;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request; its message says why.
    #[error("{}", .0.message)]
    Server(v1::Error),
    #[error("cannot reach the server: {0}")]
    Transport(String),
    #[error("the server closed the connection{0}")]
    Closed(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("local store ({path}): {message}")]
    Store { path: String, message: String },
    #[error(
        "this profile is not registered yet: run `dak register` and `dak verify`, or `dak link`"
    )]
    NotRegistered,
    #[error("{0}")]
    Usage(String),
    #[error("timed out: {0}")]
    Timeout(String),
    /// Something this device built is too big to send (a commit and its
    /// Welcome in one frame); a smaller change may fit.
    #[error("too large: {0}")]
    TooLarge(String),
    /// MLS refused something (a bad message, a broken group state).
    #[error("encryption: {0}")]
    Crypto(String),
    /// This device has no state for a conversation it is in, e.g. its
    /// profile was restored from an old copy.
    #[error(
        "this device has lost the encryption state of conversation {0}; it will start a new one on the next message, or link this device again (`dak link`) to recover"
    )]
    GroupMissing(String),
    /// The server's keys for a number did not match its key directory's
    /// proofs (or the directory went back): nothing from that answer was
    /// used (`kt.rs`).
    #[error("key transparency: {0}")]
    KeyTransparency(String),
}

impl ClientError {
    pub fn code(&self) -> Option<v1::ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// Whether the server says this device is gone for good (removed,
    /// revoked, its number registered elsewhere, or never known): no retry
    /// helps, only registering or linking again.
    pub fn is_device_gone(&self) -> bool {
        use v1::ErrorCode;
        match self {
            ClientError::NotRegistered => true,
            ClientError::Server(s) => matches!(
                s.kind(),
                ErrorCode::AuthFailed
                    | ErrorCode::UnknownDevice
                    | ErrorCode::DeviceRevoked
                    | ErrorCode::UnknownAccount
            ),
            _ => false,
        }
    }

    /// Whether the connection itself failed (not the server's answer): the
    /// client is offline until it reconnects.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Transport(_) | ClientError::Closed(_) | ClientError::Timeout(_)
        )
    }

    /// Whether trying again later (or on another node) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server(e) => e.retryable,
            e => e.is_connection_lost(),
        }
    }
}
