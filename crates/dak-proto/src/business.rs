//! Business profiles: the public sign of a business's or public service's
//! account (docs/BOTS.md), set by its device and shown by every client on
//! its chats, with the operator's verified name when there is one.
//!
//! The rules matter for trust more than for size: a display name with a
//! bidi override or a line break could make "Railways" out of something
//! else on screen, and a website that is not https:// would be a link a
//! client must not open. The server refuses a profile past these rules
//! (`validate_request`); clients check again what they are given.

use crate::interactive::is_hidden;
use crate::v1;
use crate::{FrameError, MAX_SHORT_TEXT};

pub const MAX_DISPLAY_NAME_CHARS: usize = 64;
pub const MAX_BUSINESS_DESCRIPTION_CHARS: usize = 512;
pub const MAX_ADDRESS_CHARS: usize = 256;
pub const MAX_WEBSITE_BYTES: usize = 256;
pub const MAX_CATEGORY_CHARS: usize = 64;
pub const MAX_LOGO_BYTES: usize = 48 * 1024;

fn bad(what: impl Into<String>) -> FrameError {
    FrameError::invalid(v1::ErrorCode::BadRequest, what)
}

fn text(name: &str, v: &str, max: usize, one_line: bool) -> Result<(), FrameError> {
    if v.len() > max * 4 || v.chars().count() > max {
        return Err(bad(format!("{name} is longer than {max} characters")));
    }
    let hidden = |c: char| {
        if one_line {
            is_hidden(c)
        } else {
            is_hidden(c) && c != '\n'
        }
    };
    if v.chars().any(hidden) {
        return Err(bad(format!("{name} holds a control character")));
    }
    Ok(())
}

/// A profile's rules, on the server when it is set and on each client
/// that shows it.
pub fn validate_business_profile(p: &v1::BusinessProfile) -> Result<(), FrameError> {
    text(
        "display_name",
        &p.display_name,
        MAX_DISPLAY_NAME_CHARS,
        true,
    )?;
    if p.display_name.trim().is_empty() {
        return Err(bad("a business needs a display name"));
    }
    text(
        "description",
        &p.description,
        MAX_BUSINESS_DESCRIPTION_CHARS,
        false,
    )?;
    text("address", &p.address, MAX_ADDRESS_CHARS, false)?;
    text("category", &p.category, MAX_CATEGORY_CHARS, true)?;
    if p.website.len() > MAX_WEBSITE_BYTES
        || !(p.website.is_empty()
            || (p.website.starts_with("https://")
                && p.website.len() > "https://".len()
                && p.website.bytes().all(|b| b.is_ascii_graphic())))
    {
        return Err(bad(format!(
            "website must be an https:// address of at most {MAX_WEBSITE_BYTES} characters"
        )));
    }
    if p.logo.len() > MAX_LOGO_BYTES {
        return Err(bad(format!("logo is larger than {MAX_LOGO_BYTES} bytes")));
    }
    if !p.logo.is_empty() && !is_image(&p.logo) {
        return Err(bad("logo must be a PNG, JPEG or WebP image"));
    }
    Ok(())
}

fn is_image(b: &[u8]) -> bool {
    b.starts_with(b"\x89PNG\r\n\x1a\n")
        || b.starts_with(&[0xFF, 0xD8, 0xFF])
        || (b.len() >= 12 && &b[..4] == b"RIFF" && &b[8..12] == b"WEBP")
}

/// The business requests' sizes (`validate_client`).
pub(crate) fn validate_request(r: &v1::client_frame::Request) -> Result<(), FrameError> {
    use v1::client_frame::Request;
    match r {
        Request::SetBusinessProfile(s) => match &s.profile {
            Some(p) => validate_business_profile(p),
            None => Err(bad("give the profile")),
        },
        Request::GetBusinessProfile(g) => {
            if g.phone.len() > MAX_SHORT_TEXT {
                return Err(bad("phone is too long"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn railways() -> v1::BusinessProfile {
        v1::BusinessProfile {
            display_name: "Dak Rail".into(),
            description: "Suburban tickets.\nOpen 4am to 1am.".into(),
            website: "https://rail.example".into(),
            category: "Railways".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_profile_within_the_rules_passes_and_each_rule_is_named() {
        validate_business_profile(&railways()).unwrap();
        let err = |f: fn(&mut v1::BusinessProfile)| {
            let mut p = railways();
            f(&mut p);
            validate_business_profile(&p).unwrap_err().to_string()
        };
        assert!(err(|p| p.display_name = " ".into()).contains("display name"));
        assert!(err(|p| p.display_name = "Rail\u{202E}syawliaR".into()).contains("control"));
        assert!(err(|p| p.display_name = "Dak\nRail".into()).contains("control"));
        assert!(err(|p| p.website = "javascript:alert(1)".into()).contains("https://"));
        assert!(err(|p| p.website = "https://".into()).contains("https://"));
        assert!(err(|p| p.logo = vec![0; 10]).contains("PNG"));
        assert!(err(|p| p.logo = vec![0; MAX_LOGO_BYTES + 1]).contains("larger"));
        assert!(err(|p| p.description = "x".repeat(513)).contains("512"));
    }
}
