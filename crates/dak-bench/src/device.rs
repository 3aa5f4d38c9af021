//! Simulated devices: each has a phone number, a device id and an Ed25519
//! identity key, registered the way a phone registers (code by "SMS").

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dak_client::Connection;
use dak_client::transport::{CertTrust, WsTransport};
use dak_proto::AuthPurpose;
use dak_proto::v1::{self, client_frame::Request, server_frame::Body};
use ed25519_dalek::SigningKey;
use tokio::sync::{Mutex, Semaphore};

#[derive(Clone)]
pub struct Device {
    pub phone: String,
    pub id: u64,
    pub key: SigningKey,
}

/// Reads codes from the server's SMS outbox as it grows, so that waiting
/// for one code costs only the new lines.
pub struct Codes {
    path: PathBuf,
    state: Mutex<(u64, HashMap<String, String>)>,
}

impl Codes {
    pub fn new(path: PathBuf) -> Self {
        Codes {
            path,
            state: Mutex::new((0, HashMap::new())),
        }
    }

    pub async fn wait_for(&self, phone: &str) -> Result<String> {
        for _ in 0..5000 {
            {
                let mut state = self.state.lock().await;
                self.scan(&mut state)?;
                if let Some(code) = state.1.remove(phone) {
                    return Ok(code);
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        bail!("no code for {phone} appeared in {}", self.path.display())
    }

    fn scan(&self, state: &mut (u64, HashMap<String, String>)) -> Result<()> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Ok(()); // not written yet
        };
        f.seek(SeekFrom::Start(state.0))?;
        let mut text = String::new();
        f.read_to_string(&mut text)?;
        let complete = text.rfind('\n').map(|i| i + 1).unwrap_or(0);
        for line in text[..complete].lines() {
            let v: serde_json::Value = serde_json::from_str(line).context("outbox line")?;
            if let (Some(to), Some(code)) = (v["to"].as_str(), v["code"].as_str()) {
                state.1.insert(to.to_string(), code.to_string());
            }
        }
        state.0 += complete as u64;
        Ok(())
    }
}

/// Connects (from `local`, if given) without authenticating.
pub async fn open(url: &str, local: Option<IpAddr>) -> Result<Connection> {
    let (t, _) = WsTransport::connect_from(url, &CertTrust::FirstUse, local).await?;
    Ok(Connection::open(
        Box::new(t),
        std::sync::Arc::new(dak_client::SystemEnvironment),
    )
    .await?)
}

pub async fn register(url: &str, codes: &Codes, phone: String) -> Result<Device> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut conn = open(url, None).await?;
    let sent = conn
        .call(Request::RequestCode(v1::RequestCode {
            phone: phone.clone(),
        }))
        .await?;
    let Body::CodeSent(sent) = sent else {
        bail!("unexpected answer to RequestCode")
    };
    let code = codes.wait_for(&phone).await?;
    let signature = conn.sign(&key, AuthPurpose::Register, phone.as_bytes());
    let answer = conn
        .call(Request::VerifyCode(v1::VerifyCode {
            phone: phone.clone(),
            code,
            identity_key: key.verifying_key().to_bytes().to_vec(),
            signature,
            pin: String::new(),
            device_name: "bench".into(),
            session: sent.session,
        }))
        .await?;
    conn.close().await;
    let Body::Registered(r) = answer else {
        bail!("unexpected answer to VerifyCode")
    };
    Ok(Device {
        phone,
        id: r.device_id,
        key,
    })
}

/// Registers `n` devices with numbers unique to this run, `parallel` at a time.
pub async fn register_many(
    url: &str,
    outbox: PathBuf,
    n: usize,
    progress: &(dyn Fn(String) + Sync),
) -> Result<Vec<Device>> {
    let codes = Arc::new(Codes::new(outbox));
    let base: u64 = rand::random::<u64>() % 9_000_000;
    let gate = Arc::new(Semaphore::new(64));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (url, codes, gate, done) = (url.to_string(), codes.clone(), gate.clone(), done.clone());
        // +1 555 numbers are reserved for fiction; 8 digits after the 1 555.
        let phone = format!("+1555{:08}", base * 10 + i as u64);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let d = register(&url, &codes, phone).await;
            done.fetch_add(1, Ordering::Relaxed);
            d
        }));
    }
    let ticker = {
        let done = done.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                progress(format!(
                    "registering devices: {}/{n}",
                    done.load(Ordering::Relaxed)
                ));
            }
        }
    };
    let collect = async {
        let mut devices = Vec::with_capacity(n);
        for t in tasks {
            devices.push(t.await??);
        }
        Ok::<_, anyhow::Error>(devices)
    };
    tokio::select! {
        r = collect => r,
        _ = ticker => unreachable!("the ticker never ends"),
    }
}

/// An authenticated connection for `device`.
pub async fn connect(url: &str, device: &Device, local: Option<IpAddr>) -> Result<Connection> {
    let mut conn = open(url, local).await?;
    conn.authenticate(&device.key, device.id).await?;
    Ok(conn)
}

/// Source addresses 127.0.0.1 .. 127.0.0.k, round robin.
pub fn source_ip(i: usize, k: usize) -> Option<IpAddr> {
    if k <= 1 {
        return None;
    }
    Some(IpAddr::from([127, 0, 0, 1 + (i % k) as u8]))
}
