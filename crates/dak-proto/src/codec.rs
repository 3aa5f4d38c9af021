//! The frame codec. Decoding checks the length before anything else, then
//! lets prost parse (it never trusts an inner length either), then checks
//! the fields a handler would otherwise have to distrust. Every failure is a
//! `FrameError` that maps to a wire `ErrorCode` with a readable message.

use prost::Message;

use crate::v1::{self, ErrorCode, client_frame::Request};
use crate::{
    IDENTITY_KEY_BYTES, MAX_ACKS_PER_FRAME, MAX_BODY_BYTES, MAX_COMMIT_DEVICES, MAX_FRAME_BYTES,
    MAX_GROUP_ID_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD, MAX_KNOWN_DEVICES, MAX_SHORT_TEXT,
    MESSAGE_ID_BYTES, SESSION_BYTES, SIGNATURE_BYTES,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame is not a valid protobuf message: {0}")]
    Malformed(String),
    /// Parsed, but a field is out of bounds. `request_id` is the frame's,
    /// so the refusal can answer that request.
    #[error("{message}")]
    Invalid {
        code: ErrorCode,
        message: String,
        request_id: u64,
    },
}

impl FrameError {
    pub(crate) fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError::Invalid {
            code,
            message: message.into(),
            request_id: 0,
        }
    }

    /// The request this error answers (0 when the frame did not parse).
    pub fn request_id(&self) -> u64 {
        match self {
            FrameError::Invalid { request_id, .. } => *request_id,
            _ => 0,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::Malformed(_) => ErrorCode::MalformedFrame,
            FrameError::Invalid { code, .. } => *code,
        }
    }

    /// Whether the connection should be closed after reporting this: a peer
    /// that sends unparseable or oversized frames is not speaking Dak.
    pub fn is_fatal(&self) -> bool {
        matches!(self, FrameError::TooLarge { .. } | FrameError::Malformed(_))
    }

    pub fn to_wire(&self) -> v1::Error {
        v1::Error::new(self.code(), self.to_string())
    }
}

fn check_len(bytes: &[u8]) -> Result<(), FrameError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(())
}

/// Decodes and validates a frame from a client.
pub fn decode_client_frame(bytes: &[u8]) -> Result<v1::ClientFrame, FrameError> {
    check_len(bytes)?;
    let frame = v1::ClientFrame::decode(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    validate_client(&frame).map_err(|e| match e {
        FrameError::Invalid { code, message, .. } => FrameError::Invalid {
            code,
            message,
            request_id: frame.request_id,
        },
        other => other,
    })?;
    Ok(frame)
}

/// Decodes a frame from the server. Clients apply the same size limit.
pub fn decode_server_frame(bytes: &[u8]) -> Result<v1::ServerFrame, FrameError> {
    check_len(bytes)?;
    v1::ServerFrame::decode(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Decodes a message body's plaintext content on the client.
pub fn decode_content(bytes: &[u8]) -> Result<v1::Content, FrameError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(FrameError::TooLarge {
            len: bytes.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let content = v1::Content::decode(bytes).map_err(|e| FrameError::Malformed(e.to_string()))?;
    crate::content::validate_content(&content)?;
    Ok(content)
}

pub fn encode<M: Message>(msg: &M) -> Vec<u8> {
    msg.encode_to_vec()
}

fn field_len(name: &str, got: usize, want: usize) -> Result<(), FrameError> {
    if got != want {
        return Err(FrameError::invalid(
            ErrorCode::BadRequest,
            format!("{name} must be {want} bytes, got {got}"),
        ));
    }
    Ok(())
}

fn short_text(name: &str, value: &str) -> Result<(), FrameError> {
    if value.len() > MAX_SHORT_TEXT {
        return Err(FrameError::invalid(
            ErrorCode::BadRequest,
            format!("{name} is longer than {MAX_SHORT_TEXT} bytes"),
        ));
    }
    Ok(())
}

/// The checks that do not need server state: presence, sizes and lengths.
pub fn validate_client(frame: &v1::ClientFrame) -> Result<(), FrameError> {
    if frame.request_id == 0 {
        return Err(FrameError::invalid(
            ErrorCode::BadRequest,
            "request_id must be non-zero",
        ));
    }
    let Some(request) = &frame.request else {
        return Err(FrameError::invalid(
            ErrorCode::BadRequest,
            "frame carries no request (an unknown request type from a newer client?)",
        ));
    };
    match request {
        Request::RequestCode(r) => short_text("phone", &r.phone),
        Request::VerifyCode(r) => {
            short_text("phone", &r.phone)?;
            short_text("code", &r.code)?;
            short_text("pin", &r.pin)?;
            short_text("device_name", &r.device_name)?;
            field_len("identity_key", r.identity_key.len(), IDENTITY_KEY_BYTES)?;
            field_len("signature", r.signature.len(), SIGNATURE_BYTES)?;
            field_len("session", r.session.len(), SESSION_BYTES)
        }
        Request::Authenticate(r) => field_len("signature", r.signature.len(), SIGNATURE_BYTES),
        Request::SendMessage(r) => {
            field_len("message_id", r.message_id.len(), MESSAGE_ID_BYTES)?;
            if r.body.len() > MAX_BODY_BYTES {
                return Err(FrameError::invalid(
                    ErrorCode::BodyTooLarge,
                    format!(
                        "message body of {} bytes is larger than the limit of {MAX_BODY_BYTES} bytes",
                        r.body.len()
                    ),
                ));
            }
            Ok(())
        }
        Request::AckDeliveries(r) => {
            if r.seqs.len() > MAX_ACKS_PER_FRAME {
                return Err(FrameError::invalid(
                    ErrorCode::BadRequest,
                    format!("at most {MAX_ACKS_PER_FRAME} acks per frame"),
                ));
            }
            Ok(())
        }
        Request::SetPin(r) => short_text("pin", &r.pin),
        Request::LinkStart(r) => {
            field_len("identity_key", r.identity_key.len(), IDENTITY_KEY_BYTES)?;
            field_len("signature", r.signature.len(), SIGNATURE_BYTES)?;
            short_text("device_name", &r.device_name)
        }
        Request::ApproveLink(r) => short_text("code", &r.code),
        Request::ListDevices(_)
        | Request::RemoveDevice(_)
        | Request::GetNotices(_)
        | Request::GetKeyHistory(_)
        | Request::GetKeyAudit(_) => Ok(()),
        Request::BlockAccount(r) => short_text("phone", &r.phone),
        Request::LookupKeys(r) => short_text("phone", &r.phone),
        Request::ReportAccount(r) => short_text("phone", &r.phone),
        Request::UploadKeyPackages(r) => {
            if r.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
                return Err(FrameError::invalid(
                    ErrorCode::BadRequest,
                    format!("at most {MAX_KEY_PACKAGES_PER_UPLOAD} KeyPackages per upload"),
                ));
            }
            Ok(())
        }
        Request::FetchKeyPackages(r) => {
            short_text("phone", &r.phone)?;
            if r.known_devices.len() > MAX_KNOWN_DEVICES {
                return Err(FrameError::invalid(
                    ErrorCode::BadRequest,
                    format!("at most {MAX_KNOWN_DEVICES} known devices"),
                ));
            }
            Ok(())
        }
        Request::SendCommit(r) => {
            field_len("message_id", r.message_id.len(), MESSAGE_ID_BYTES)?;
            if r.commit.is_empty() {
                return Err(FrameError::invalid(
                    ErrorCode::BadRequest,
                    "commit is empty",
                ));
            }
            if r.added_devices.len() > MAX_COMMIT_DEVICES
                || r.removed_devices.len() > MAX_COMMIT_DEVICES
            {
                return Err(FrameError::invalid(
                    ErrorCode::BadRequest,
                    format!("a commit adds or removes at most {MAX_COMMIT_DEVICES} devices"),
                ));
            }
            Ok(())
        }
        Request::CreateBlob(_)
        | Request::ShareBlob(_)
        | Request::BlobFetched(_)
        | Request::DeleteBlob(_) => crate::blob::validate_request(request),
        Request::SetBusinessProfile(_) | Request::GetBusinessProfile(_) => {
            crate::business::validate_request(request)
        }
        Request::GetGroupEpoch(r) => {
            if r.group_id.is_empty() || r.group_id.len() > MAX_GROUP_ID_BYTES {
                return Err(FrameError::invalid(
                    ErrorCode::BadRequest,
                    format!("group_id must be 1 to {MAX_GROUP_ID_BYTES} bytes"),
                ));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn send(id: u64, msg_id: Vec<u8>, body: Vec<u8>) -> v1::ClientFrame {
        v1::ClientFrame {
            request_id: id,
            request: Some(Request::SendMessage(v1::SendMessage {
                message_id: msg_id,
                body,
                ..Default::default()
            })),
        }
    }

    proptest! {
        #[test]
        fn send_round_trips(id in 1u64.., msg_id in proptest::collection::vec(any::<u8>(), 16),
                            body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let frame = send(id, msg_id, body);
            let decoded = decode_client_frame(&encode(&frame)).unwrap();
            prop_assert_eq!(decoded, frame);
        }

        #[test]
        fn deliver_round_trips(seqs in proptest::collection::vec(any::<u64>(), 0..20),
                               body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = v1::ServerFrame {
                request_id: 0,
                body: Some(v1::server_frame::Body::Deliver(v1::Deliver {
                    envelopes: seqs.iter().map(|&seq| v1::Envelope {
                        seq,
                        message_id: vec![7; 16],
                        sender_phone: "+919800000001".into(),
                        sender_device: seq ^ 1,
                        server_time_ms: seq as i64,
                        body: body.clone(),
                    }).collect(),
                })),
            };
            prop_assert_eq!(decode_server_frame(&encode(&frame)).unwrap(), frame);
        }

        #[test]
        fn content_round_trips(text in ".{0,200}", at in any::<i64>()) {
            let c = v1::Content { kind: Some(v1::content::Kind::Text(v1::Text { body: text, sent_at_ms: at, ..Default::default() })) };
            prop_assert_eq!(decode_content(&encode(&c)).unwrap(), c);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode_client_frame(&bytes);
            let _ = decode_server_frame(&bytes);
            let _ = decode_content(&bytes);
        }
    }

    /// Writes one encoded `Content` of each kind to fuzz/seeds/content, so
    /// the fuzzer starts from every branch. Run with `--ignored` after a
    /// change to `Content`, and commit the files.
    #[test]
    #[ignore]
    fn write_content_seeds() {
        use v1::content::Kind;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/content");
        std::fs::create_dir_all(&dir).unwrap();
        let id = vec![1u8; 16];
        let kinds = [
            (
                "text",
                Kind::Text(v1::Text {
                    body: "hi".into(),
                    sent_at_ms: 1,
                    reply_to: Some(v1::Quote {
                        message_id: id.clone(),
                        sender_phone: "+919800000001".into(),
                        snippet: "hello".into(),
                    }),
                    forwarded: 5,
                    expire_secs: 3600,
                    attachment: None,
                    interactive: None,
                    choice: None,
                }),
            ),
            (
                "buttons",
                Kind::Text(v1::Text {
                    body: "Confirm your ticket?".into(),
                    interactive: Some(Box::new(v1::Interactive {
                        header: "Dak Rail".into(),
                        footer: "Fare ₹15".into(),
                        buttons: vec![
                            v1::Button {
                                id: "yes".into(),
                                title: "Confirm".into(),
                            },
                            v1::Button {
                                id: "no".into(),
                                title: "Cancel".into(),
                            },
                        ],
                        list: None,
                    })),
                    ..Default::default()
                }),
            ),
            (
                "list",
                Kind::Text(v1::Text {
                    body: "From which station?".into(),
                    interactive: Some(Box::new(v1::Interactive {
                        list: Some(v1::ChoiceList {
                            button: "Stations".into(),
                            sections: vec![v1::ListSection {
                                title: "Western".into(),
                                rows: vec![v1::ListRow {
                                    id: "ccg".into(),
                                    title: "Churchgate".into(),
                                    description: "Mumbai".into(),
                                }],
                            }],
                        }),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
            ),
            (
                "choice",
                Kind::Text(v1::Text {
                    body: "Confirm".into(),
                    choice: Some(Box::new(v1::Choice {
                        message_id: id.clone(),
                        id: "yes".into(),
                    })),
                    ..Default::default()
                }),
            ),
            (
                "receipt",
                Kind::Receipt(v1::Receipt {
                    r#type: v1::ReceiptType::Read as i32,
                    message_ids: vec![id.clone()],
                    ..Default::default()
                }),
            ),
            (
                "reaction",
                Kind::Reaction(v1::Reaction {
                    message_id: id.clone(),
                    emoji: "👍".into(),
                }),
            ),
            (
                "group_state",
                Kind::GroupState(v1::GroupState {
                    title: "Family".into(),
                    description: "d".into(),
                    avatar: vec![0x89, b'P', b'N', b'G'],
                    admins: vec!["+919800000001".into()],
                    admins_only: true,
                    expire_secs: 60,
                    invite_secret: vec![2; 16],
                    invite_owner: "+919800000001".into(),
                    invite_needs_approval: true,
                }),
            ),
            (
                "edit",
                Kind::Edit(v1::Edit {
                    message_id: id.clone(),
                    body: "edited".into(),
                }),
            ),
            (
                "delete",
                Kind::Delete(v1::Delete {
                    message_id: id.clone(),
                }),
            ),
            ("leave", Kind::Leave(v1::Leave {})),
            (
                "set_timer",
                Kind::SetTimer(v1::SetTimer { expire_secs: 86400 }),
            ),
            (
                "join_request",
                Kind::JoinRequest(v1::JoinRequest {
                    group_id: vec![3; 32],
                    invite_secret: vec![2; 16],
                }),
            ),
        ];
        for (name, kind) in kinds {
            let c = v1::Content { kind: Some(kind) };
            std::fs::write(dir.join(name), encode(&c)).unwrap();
        }
    }

    #[test]
    fn oversized_frame_is_refused_before_parsing() {
        let err = decode_client_frame(&vec![0u8; MAX_FRAME_BYTES + 1]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert!(err.is_fatal());
    }

    #[test]
    fn oversized_body_has_its_own_code() {
        let frame = send(1, vec![0; 16], vec![0; MAX_BODY_BYTES + 1]);
        let err = decode_client_frame(&encode(&frame)).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BodyTooLarge);
        assert_eq!(err.request_id(), 1, "the refusal answers that request");
        assert!(!err.is_fatal());
    }

    #[test]
    fn garbage_is_malformed() {
        let err = decode_client_frame(&[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn wrong_id_length_and_zero_request_id_are_bad_requests() {
        let err = decode_client_frame(&encode(&send(1, vec![0; 3], vec![]))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
        let err = decode_client_frame(&encode(&send(0, vec![0; 16], vec![]))).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadRequest);
    }
}
