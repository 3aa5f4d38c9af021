//! KeyPackages: keeping the directory stocked with this device's, and
//! fetching (and checking) other devices' to add them to groups.

use crate::ClientError;
use crate::Profile;
use crate::client::Client;
use crate::connection::{Connection, unexpected};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};

/// One-time KeyPackages a device keeps on the server, and when to top up.
pub(crate) const KEY_PACKAGE_TARGET: u32 = 40;

pub(crate) const KEY_PACKAGE_LOW: u32 = 10;

/// What the key directory holds for one account.
pub(crate) struct Fetched {
    /// Its active devices that can be in groups.
    pub active: Vec<u64>,
    /// KeyPackages for those the caller did not name as known.
    pub packages: Vec<(u64, openmls::prelude::KeyPackage)>,
}

/// Uploads enough one-time KeyPackages to reach the target, and a
/// last-resort one if the server has none.
pub(crate) async fn top_up_key_packages(
    profile: &Profile,
    conn: &mut Connection,
    one_time: u32,
    has_last_resort: bool,
) -> Result<(), ClientError> {
    if one_time >= KEY_PACKAGE_LOW && has_last_resort {
        return Ok(());
    }
    let want = KEY_PACKAGE_TARGET.saturating_sub(one_time) as usize;
    let (key_packages, last_resort) = profile.transaction(|p| {
        p.mls(|m| {
            let last = if has_last_resort {
                Vec::new()
            } else {
                m.last_resort_key_package()?
            };
            Ok((m.key_packages(want)?, last))
        })
    })?;
    let answer = conn
        .call(Request::UploadKeyPackages(v1::UploadKeyPackages {
            key_packages,
            last_resort,
        }))
        .await?;
    match answer {
        Body::KeyPackageCount(_) => Ok(()),
        other => Err(unexpected(other)),
    }
}

impl Client {
    /// KeyPackages for `phone`'s devices not in `known`, each checked to be
    /// signed by the identity key the server bound to that device.
    pub(crate) async fn fetch_key_packages(
        &mut self,
        phone: &str,
        known: &[u64],
    ) -> Result<Fetched, ClientError> {
        let answer = self
            .conn
            .call(Request::FetchKeyPackages(v1::FetchKeyPackages {
                phone: phone.into(),
                known_devices: known.to_vec(),
            }))
            .await?;
        let Body::KeyPackages(k) = answer else {
            return Err(unexpected(answer));
        };
        let mut fetched = Fetched {
            active: k.devices.iter().map(|d| d.device_id).collect(),
            packages: Vec::new(),
        };
        for d in k.devices.into_iter().filter(|d| !d.key_package.is_empty()) {
            let kp = self.profile.mls(|m| {
                m.fetched_key_package(&d.key_package, &k.phone, d.device_id, &d.identity_key)
            })?;
            fetched.packages.push((d.device_id, kp));
        }
        Ok(fetched)
    }

    /// Uploads KeyPackages if the server holds few.
    pub(crate) async fn refresh_key_packages(&mut self) -> Result<(), ClientError> {
        let answer = self
            .conn
            .call(Request::UploadKeyPackages(v1::UploadKeyPackages::default()))
            .await?;
        let Body::KeyPackageCount(c) = answer else {
            return Err(unexpected(answer));
        };
        top_up_key_packages(&self.profile, &mut self.conn, c.one_time, c.has_last_resort).await
    }
}
