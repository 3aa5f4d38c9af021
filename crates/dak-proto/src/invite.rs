//! Group invite links: `dak-invite:+919800000001/<group id>/<secret>`, the
//! member whose devices answer join requests, the group (a named group's
//! 32-byte id, in hex) and the link's secret (16 bytes, in hex). A link
//! comes from anyone (a chat, a web page, a QR code), so it is parsed like
//! any other untrusted input: length first, then each part.

use crate::normalize_phone;

/// A named group's id length (a 1:1 chat's is 16).
pub const NAMED_GROUP_ID_BYTES: usize = 32;
pub const INVITE_SECRET_BYTES: usize = 16;
const PREFIX: &str = "dak-invite:";
/// Longer than any valid link: the prefix, a number, 64 and 32 hex digits.
pub const MAX_INVITE_LINK_CHARS: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteLink {
    pub owner: String,
    pub group_id: Vec<u8>,
    pub secret: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Dak invite link (dak-invite:+NUMBER/GROUP/SECRET): {0}")]
pub struct InviteLinkError(&'static str);

impl InviteLink {
    pub fn parse(link: &str) -> Result<InviteLink, InviteLinkError> {
        let link = link.trim();
        if link.len() > MAX_INVITE_LINK_CHARS {
            return Err(InviteLinkError("too long"));
        }
        let rest = link
            .strip_prefix(PREFIX)
            .ok_or(InviteLinkError("it does not start with dak-invite:"))?;
        let mut parts = rest.split('/');
        let (Some(owner), Some(group), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InviteLinkError("it does not have three parts"));
        };
        let owner = normalize_phone(owner).map_err(|_| InviteLinkError("bad number"))?;
        let group_id = hex::decode(group).map_err(|_| InviteLinkError("bad group id"))?;
        let secret = hex::decode(secret).map_err(|_| InviteLinkError("bad secret"))?;
        if group_id.len() != NAMED_GROUP_ID_BYTES {
            return Err(InviteLinkError("bad group id length"));
        }
        if secret.len() != INVITE_SECRET_BYTES {
            return Err(InviteLinkError("bad secret length"));
        }
        Ok(InviteLink {
            owner,
            group_id,
            secret,
        })
    }
}

impl std::fmt::Display for InviteLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}{}/{}/{}",
            self.owner,
            hex::encode(&self.group_id),
            hex::encode(&self.secret)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_link_round_trips_and_junk_is_refused() {
        let link = InviteLink {
            owner: "+919800000001".into(),
            group_id: vec![7; NAMED_GROUP_ID_BYTES],
            secret: vec![1; INVITE_SECRET_BYTES],
        };
        assert_eq!(InviteLink::parse(&link.to_string()).unwrap(), link);
        for junk in [
            "",
            "dak-invite:",
            "dak-invite:+91/zz/00",
            "https://x/y",
            "dak-invite:+919800000001/07/01",
        ] {
            assert!(InviteLink::parse(junk).is_err(), "{junk}");
        }
        assert!(InviteLink::parse(&format!("{link}/extra")).is_err());
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_without_panicking(s in ".{0,300}") {
            if let Ok(l) = InviteLink::parse(&s) {
                prop_assert_eq!(InviteLink::parse(&l.to_string()).unwrap(), l);
            }
        }
    }
}
