//! `Client`: a device connected to its server, and what it does with its
//! account (linked devices, the registration-lock PIN). What it does with
//! conversations is in the modules beside this one, by concept (`outbox`,
//! `receive`, `ticks`, `group_sync`, `key_packages`, `groups`,
//! `actions`); how it comes to exist is `connect`.

use crate::ClientError;
use crate::OutboxEntry;
use crate::connection::{Connection, unexpected};
use crate::events::Event;
use crate::format_id;
use crate::work::FollowUp;
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
    /// Events handled while waiting for a commit (see `catch_up`), given
    /// out by the next `next_events`.
    pub(crate) backlog: Vec<Event>,
    /// Receipts queued by deliveries handled while catching up; sent by
    /// the next `handle_push` (they are in the outbox meanwhile).
    pub(crate) unsent_receipts: Vec<OutboxEntry>,
    /// A Welcome used one of our KeyPackages since the last top-up.
    pub(crate) keys_used: bool,
    /// Group work deliveries called for, done by the next `answer`.
    pub(crate) follow_ups: Vec<FollowUp>,
    /// Named groups that gained devices: their state is sent again once
    /// the send in progress is done.
    pub(crate) reshare: Vec<Vec<u8>>,
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
            Body::DeviceLinked(d) => Ok(d),
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
}
