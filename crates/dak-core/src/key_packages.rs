//! KeyPackages: keeping the directory stocked with this device's, and
//! fetching (and checking) other devices' to add them to groups.
//!
//! The directory keeps a stock per ciphersuite. A device stocks every suite
//! it offers (`Profile::offered_suites`) that the server keeps; a server
//! from before post-quantum suites keeps the classic one only, and says no
//! stocks in `Authenticated`. The classic suite always goes last: the
//! directory counts a device as ready once it has a classic last-resort
//! package, so a ready device that offers the post-quantum suite has its
//! packages there too. A fetch names the suites the caller can use, most
//! wanted first, and the answer says which one its packages are in.

use crate::ClientError;
use crate::Profile;
use crate::client::Client;
use crate::connection::{Connection, unexpected};
use dak_proto::mls::{CIPHERSUITE, Ciphersuite, suite_code, suite_from_code};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};

/// One-time KeyPackages a device keeps on the server, and when to top up.
pub(crate) const KEY_PACKAGE_TARGET: u32 = 40;

pub(crate) const KEY_PACKAGE_LOW: u32 = 10;

/// What the key directory holds for one account.
pub(crate) struct Fetched {
    /// Its active devices that can be in groups.
    pub active: Vec<u64>,
    /// KeyPackages for those the caller did not name as known, all in
    /// `suite`; a device without one in it is in `active` only.
    pub packages: Vec<(u64, openmls::prelude::KeyPackage)>,
    pub suite: Ciphersuite,
}

/// The stocks a server reported at authentication, per suite this device
/// offers: the classic one from the old fields when the server names none
/// (it predates suites and keeps no other).
pub(crate) fn stocks(
    profile: &Profile,
    auth: &v1::Authenticated,
) -> Result<Vec<(Ciphersuite, v1::KeyPackageCount)>, ClientError> {
    if auth.stocks.is_empty() {
        let classic = v1::KeyPackageCount {
            one_time: auth.key_packages,
            has_last_resort: auth.has_last_resort,
            ciphersuite: 0,
        };
        return Ok(vec![(CIPHERSUITE, classic)]);
    }
    // In the order this device offers them, the classic one last (see
    // `refresh_all`).
    Ok(profile
        .offered_suites()?
        .into_iter()
        .filter_map(|suite| {
            let stock = auth
                .stocks
                .iter()
                .find(|s| suite_from_code(s.ciphersuite) == Some(suite))?;
            Some((suite, *stock))
        })
        .collect())
}

/// Uploads enough one-time KeyPackages of `suite` to reach the target, and
/// a last-resort one if the server has none.
pub(crate) async fn top_up_key_packages(
    profile: &Profile,
    conn: &mut Connection,
    suite: Ciphersuite,
    stock: &v1::KeyPackageCount,
) -> Result<(), ClientError> {
    let (one_time, has_last_resort) = (stock.one_time, stock.has_last_resort);
    if one_time >= KEY_PACKAGE_LOW && has_last_resort {
        return Ok(());
    }
    let want = KEY_PACKAGE_TARGET.saturating_sub(one_time) as usize;
    let (key_packages, last_resort) = profile.transaction(|p| {
        p.mls(|m| {
            let last = if has_last_resort {
                Vec::new()
            } else {
                m.last_resort_key_package(suite)?
            };
            Ok((m.key_packages(suite, want)?, last))
        })
    })?;
    let answer = conn
        .call(Request::UploadKeyPackages(v1::UploadKeyPackages {
            key_packages,
            last_resort,
            ciphersuite: wire_suite(suite),
        }))
        .await?;
    match answer {
        Body::KeyPackageCount(_) => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Tops up every suite this device offers where the server holds few, each
/// after reading its count (an empty upload), the classic suite last: the
/// directory counts a device as ready (to be added to chats) once it has a
/// classic last-resort package, so after a registration or link its
/// post-quantum ones are there by then, and no chat is made classic for
/// want of them. A server from before post-quantum suites (its count does
/// not name the suite asked about) gets classic ones only.
pub(crate) async fn refresh_all(
    profile: &Profile,
    conn: &mut Connection,
) -> Result<(), ClientError> {
    for suite in profile.offered_suites()? {
        let answer = conn
            .call(Request::UploadKeyPackages(v1::UploadKeyPackages {
                ciphersuite: wire_suite(suite),
                ..Default::default()
            }))
            .await?;
        let Body::KeyPackageCount(count) = answer else {
            return Err(unexpected(answer));
        };
        if suite != CIPHERSUITE && count.ciphersuite != suite_code(suite) {
            continue;
        }
        top_up_key_packages(profile, conn, suite, &count).await?;
    }
    Ok(())
}

/// The suite as a request field: the classic suite as 0, which servers
/// from before post-quantum suites read the same.
fn wire_suite(suite: Ciphersuite) -> u32 {
    if suite == CIPHERSUITE {
        0
    } else {
        suite_code(suite)
    }
}

impl Client {
    /// KeyPackages for `phone`'s devices not in `known`, each checked to be
    /// signed by the identity key the server bound to that device, and all
    /// in one of `suites` (the most wanted first; the answer says which).
    pub(crate) async fn fetch_key_packages(
        &mut self,
        phone: &str,
        known: &[u64],
        suites: &[Ciphersuite],
    ) -> Result<Fetched, ClientError> {
        let answer = self
            .conn
            .call(Request::FetchKeyPackages(v1::FetchKeyPackages {
                phone: phone.into(),
                known_devices: known.to_vec(),
                ciphersuites: suites.iter().map(|s| suite_code(*s)).collect(),
            }))
            .await?;
        let Body::KeyPackages(k) = answer else {
            return Err(unexpected(answer));
        };
        let suite = suite_from_code(k.ciphersuite)
            .filter(|s| suites.contains(s))
            .ok_or_else(|| {
                ClientError::Protocol(format!(
                    "the directory answered in ciphersuite {:#06x}, which was not asked for",
                    k.ciphersuite
                ))
            })?;
        if k.phone != phone {
            return Err(ClientError::KeyTransparency(format!(
                "asked for the keys of {phone}, the server answered with those of {}",
                k.phone
            )));
        }
        crate::kt::check_key_packages(&self.profile, &self.conn, &k)?;
        let mut fetched = Fetched {
            active: k.devices.iter().map(|d| d.device_id).collect(),
            packages: Vec::new(),
            suite,
        };
        for d in k.devices.into_iter().filter(|d| !d.key_package.is_empty()) {
            let kp = self.profile.mls(|m| {
                m.fetched_key_package(&d.key_package, &k.phone, d.device_id, &d.identity_key)
            })?;
            if kp.ciphersuite() != suite {
                return Err(ClientError::Protocol(format!(
                    "the directory gave device {} of {} a KeyPackage in another suite than its answer's",
                    d.device_id, k.phone
                )));
            }
            fetched.packages.push((d.device_id, kp));
        }
        Ok(fetched)
    }

    /// Uploads KeyPackages, in every suite this device offers, where the
    /// server holds few (`refresh_all`).
    pub(crate) async fn refresh_key_packages(&mut self) -> Result<(), ClientError> {
        refresh_all(&self.profile, &mut self.conn).await
    }
}
