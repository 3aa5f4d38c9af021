//! Business accounts as a client shows them (docs/BOTS.md): a verified
//! business by the name the server's operator checked, any other business
//! by its number and "business account", so that a bot calling itself
//! "Railways" cannot pass for the real one. A business is an end of the
//! encryption like any device, and its chat says that its messages are
//! read by the business's systems.
//!
//! A lookup's answer is cached in the profile (`business:<phone>`) for a
//! day; a profile that breaks the rules (`dak_proto::business`) is shown
//! as an unverified business with no name rather than drawn.

use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use prost::Message;

use crate::client::Client;
use crate::connection::unexpected;
use crate::error::ClientError;
use crate::profile::Profile;

/// A cached answer is asked again after this long.
pub const BUSINESS_CACHE_MS: i64 = 24 * 3600 * 1000;

/// What a chat with a business shows about it, in words a front end
/// translates: `E2E_NOTE` is the English.
pub const E2E_NOTE: &str = "Messages to this business are read by the business's systems.";

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusinessView {
    pub phone: String,
    pub display_name: String,
    pub description: String,
    pub address: String,
    pub website: String,
    pub category: String,
    #[serde(skip)]
    pub logo: Vec<u8>,
    /// The operator checked the business owns `display_name`.
    pub verified: bool,
}

impl BusinessView {
    fn from_info(phone: &str, info: v1::BusinessInfo) -> Option<BusinessView> {
        if !info.business {
            return None;
        }
        let p = info.profile.unwrap_or_default();
        if dak_proto::business::validate_business_profile(&p).is_err() {
            return Some(BusinessView {
                phone: phone.into(),
                ..Default::default()
            });
        }
        let verified = !info.verified_name.is_empty() && info.verified_name == p.display_name;
        Some(BusinessView {
            phone: phone.into(),
            display_name: p.display_name,
            description: p.description,
            address: p.address,
            website: p.website,
            category: p.category,
            logo: p.logo,
            verified,
        })
    }

    /// How the sender is named on its messages: the checked name with a
    /// tick, or the number (never the name it gives itself).
    pub fn label(&self) -> String {
        if self.verified {
            format!("✔ {}", self.display_name)
        } else {
            format!("{} · business account", self.phone)
        }
    }
}

fn key(phone: &str) -> String {
    format!("business:{phone}")
}

/// The cached answer for `phone`: None if never asked or asked more than
/// `BUSINESS_CACHE_MS` ago; Some(None) for a number that is no business.
pub fn cached_business(
    profile: &Profile,
    phone: &str,
) -> Result<Option<Option<BusinessView>>, ClientError> {
    let Some(bytes) = profile.get(&key(phone))? else {
        return Ok(None);
    };
    let Some((at, info)) = bytes.split_first_chunk::<8>() else {
        return Ok(None);
    };
    if profile.now_ms() - i64::from_be_bytes(*at) > BUSINESS_CACHE_MS {
        return Ok(None);
    }
    let Ok(info) = v1::BusinessInfo::decode(info) else {
        return Ok(None);
    };
    Ok(Some(BusinessView::from_info(phone, info)))
}

impl Client {
    /// Marks this account a business with `profile` (its display name then
    /// waits for the operator's verification again if it changed).
    pub async fn set_business_profile(
        &mut self,
        profile: v1::BusinessProfile,
    ) -> Result<(), ClientError> {
        dak_proto::business::validate_business_profile(&profile)
            .map_err(|e| ClientError::Usage(e.to_string()))?;
        let answer = self
            .conn
            .call(Request::SetBusinessProfile(v1::SetBusinessProfile {
                profile: Some(profile),
            }))
            .await?;
        let Body::Ok(_) = answer else {
            return Err(unexpected(answer));
        };
        let me = self.phone().to_string();
        self.profile.delete(&key(&me))
    }

    /// Asks the server whether `phone` is a business, and caches the answer.
    pub async fn fetch_business(
        &mut self,
        phone: &str,
    ) -> Result<Option<BusinessView>, ClientError> {
        let phone = crate::ids::phone(phone)?;
        let answer = self
            .conn
            .call(Request::GetBusinessProfile(v1::GetBusinessProfile {
                phone: phone.clone(),
            }))
            .await?;
        let Body::BusinessInfo(info) = answer else {
            return Err(unexpected(answer));
        };
        let mut value = self.profile.now_ms().to_be_bytes().to_vec();
        value.extend(info.encode_to_vec());
        self.profile.set(&key(&phone), &value)?;
        Ok(BusinessView::from_info(&phone, info))
    }

    /// `phone` as a business, from the cache when it is fresh.
    pub async fn business(&mut self, phone: &str) -> Result<Option<BusinessView>, ClientError> {
        if let Some(cached) = cached_business(&self.profile, phone)? {
            return Ok(cached);
        }
        self.fetch_business(phone).await
    }
}
