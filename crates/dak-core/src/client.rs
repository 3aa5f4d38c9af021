//! `Client`: a device connected to its server, and what it does with its
//! account (linked devices, the registration-lock PIN). What it does with
//! conversations is in the modules beside this one, by concept (`outbox`,
//! `receive`, `ticks`, `group_sync`, `key_packages`, `groups`,
//! `actions`); how it comes to exist is `connect`.

use crate::ClientError;
use crate::connection::{Connection, unexpected};
use crate::events::Event;
use crate::format_id;
use crate::work::{MAX_WORK_ROUNDS, Work};
use crate::{Profile, Registration};
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use ed25519_dalek::SigningKey;

pub struct Client {
    pub(crate) profile: Profile,
    pub(crate) conn: Connection,
    pub(crate) reg: Registration,
    /// The node this connection went to.
    pub(crate) server: String,
    pub(crate) undecodable: u64,
    /// Events that came up inside another step (deliveries handled while
    /// catching up, a contact's changed devices found by a send), given out
    /// by the next `next_events` or `handle_push`.
    pub(crate) pending_events: Vec<Event>,
    /// Work queued by what the client handled, done by `run_work`.
    pub(crate) work: Vec<Work>,
    /// `run_work` is running: work queued meanwhile joins its loop instead
    /// of starting another.
    /// Shared with a guard that clears it when `run_work` ends or its
    /// future is dropped (a caller's timeout), so it never sticks.
    pub(crate) working: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Client {
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The node this client is connected to.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn phone(&self) -> &str {
        &self.reg.phone
    }

    pub fn device_id(&self) -> u64 {
        self.reg.device_id
    }

    /// Bodies that failed to decode since this client started.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    pub fn identity(&self) -> Result<SigningKey, ClientError> {
        self.profile.identity()
    }

    pub async fn devices(&mut self) -> Result<Vec<v1::DeviceInfo>, ClientError> {
        match self
            .conn
            .call(Request::ListDevices(v1::ListDevices {}))
            .await?
        {
            Body::DeviceList(l) => Ok(l.devices),
            other => Err(unexpected(other)),
        }
    }

    pub async fn approve_link(&mut self, code: &str) -> Result<v1::DeviceInfo, ClientError> {
        match self
            .conn
            .call(Request::ApproveLink(v1::ApproveLink { code: code.into() }))
            .await?
        {
            Body::DeviceLinked(d) => {
                crate::kt::approved(&self.profile, d.device_id, &d.identity_key)?;
                Ok(d)
            }
            other => Err(unexpected(other)),
        }
    }

    /// Unlinks a device, then removes its leaves from every conversation
    /// this device is in (any that fail here are fixed on their next send).
    pub async fn remove_device(&mut self, device_id: u64) -> Result<(), ClientError> {
        self.call_ok(Request::RemoveDevice(v1::RemoveDevice { device_id }))
            .await?;
        if device_id == self.reg.device_id {
            return Ok(());
        }
        for (group, _) in self.profile.active_groups()? {
            if let Err(e) = self.reconcile(&group).await {
                tracing::warn!(group = %format_id(&group), error = %e, "device removal postponed in a conversation");
            }
        }
        Ok(())
    }

    pub async fn set_pin(&mut self, pin: &str) -> Result<(), ClientError> {
        self.call_ok(Request::SetPin(v1::SetPin { pin: pin.into() }))
            .await
    }

    /// A request whose only good answer is `Ok`.
    async fn call_ok(&mut self, request: Request) -> Result<(), ClientError> {
        match self.conn.call(request).await? {
            Body::Ok(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn close(self) -> Profile {
        self.conn.close().await;
        self.profile
    }

    /// Does the queued work (see `work`), in the order queued, until none is
    /// left or `MAX_WORK_ROUNDS` have passed. Called after every push is
    /// handled and every send is acked; a call while it runs returns at
    /// once (the running loop takes the new work). Failures are logged and
    /// wait for a later chance.
    pub(crate) async fn run_work(&mut self) {
        use std::sync::atomic::Ordering;
        if self.working.swap(true, Ordering::SeqCst) {
            return;
        }
        struct Clear(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Clear {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        let _clear = Clear(self.working.clone());
        for _ in 0..MAX_WORK_ROUNDS {
            let mut batch = std::mem::take(&mut self.work);
            if batch.is_empty() {
                break;
            }
            batch.dedup();
            for work in batch {
                let done = match &work {
                    Work::TopUpKeyPackages => Box::pin(self.refresh_key_packages()).await,
                    Work::Receipts(queued) => Box::pin(self.push_queued(queued.clone())).await,
                    Work::Group(w) => Box::pin(self.follow_up(w.clone())).await,
                    Work::ReshareState { group } => Box::pin(self.reshare_state(group)).await,
                };
                if let Err(e) = done {
                    tracing::debug!(error = %e, ?work, "queued work postponed");
                }
            }
        }
    }
}
