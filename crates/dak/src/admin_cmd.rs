//! `dak admin`: the server operator's commands, run on the server's
//! machine against its store (the data directory's SQLite, or the
//! cluster's PostgreSQL), beside a running server.
//!
//! `verify-business` records that the operator checked a business owns
//! its display name (a registration certificate, a government order):
//! every client then shows that name with a tick. A business that changes
//! its name loses the tick until it is verified again.
//!
//! `notice` publishes the operator's signed notices (`notice_admin.rs`);
//! it needs no store, so it works during an outage.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use dak_proto::v1;
use prost::Message;
use serde_json::json;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// The server's TOML config file (for its data directory or store).
    #[arg(long, env = "DAK_CONFIG")]
    config: Option<PathBuf>,
    /// The server's data directory [default: ./dak-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// A cluster's PostgreSQL store, e.g. postgres://dak@db1/dak.
    #[arg(long)]
    store: Option<String>,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Subcommand, Debug)]
enum AdminAction {
    /// Incident, maintenance, security and targeted-attack notices,
    /// signed with the server's notice key (works while the store is down).
    Notice {
        #[command(subcommand)]
        action: crate::notice_admin::NoticeAction,
    },
    /// Mark a business account verified: clients show its display name
    /// with a tick. Check its papers first.
    VerifyBusiness {
        phone: String,
        /// The display name you checked; refused if the business shows
        /// another (it may have changed it since you looked).
        #[arg(long)]
        name: String,
    },
    /// Take a business's verification back.
    UnverifyBusiness { phone: String },
    /// Show an account's business profile as the server holds it.
    ShowBusiness { phone: String },
}

pub async fn run(args: AdminArgs, json: bool) -> Result<()> {
    let mut config = dak_server::Config::load(args.config.as_deref())?;
    if let Some(d) = args.data {
        config.data = d;
    }
    if args.store.is_some() {
        config.store = args.store;
    }
    match args.action {
        AdminAction::Notice { action } => crate::notice_admin::run(&config, action, json),
        business => run_business(&config, business, json).await,
    }
}

/// The business commands, on the store.
async fn run_business(config: &dak_server::Config, action: AdminAction, json: bool) -> Result<()> {
    if config.store.is_none() && !config.data.join("dak.db").exists() {
        bail!(
            "no store in {}: give the server's --data directory (or --store)",
            config.data.display()
        );
    }
    let (store, _) = dak_server::open_store(config, 2).await?;
    let account = |phone: &str| {
        let phone = dak_proto::normalize_phone(phone).map_err(|e| anyhow::anyhow!("{e}"));
        let store = store.clone();
        async move {
            let phone = phone?;
            store
                .account_by_phone(&phone)
                .await?
                .with_context(|| format!("{phone} has no account on this server"))
        }
    };
    match action {
        AdminAction::VerifyBusiness { phone, name } => {
            let a = account(&phone).await?;
            let b = store
                .business(a.id)
                .await?
                .with_context(|| format!("{} is not a business account", a.phone))?;
            if b.display_name != name {
                bail!(
                    "{} calls itself {:?}, not {name:?}: check the name it shows now",
                    a.phone,
                    b.display_name
                );
            }
            // Only if the name is still the one checked (a rename may race this).
            if !store.verify_business(a.id, Some(&name)).await? {
                bail!(
                    "{} changed its name just now: check the name it shows now",
                    a.phone
                );
            }
            say(
                json,
                json!({"verified": a.phone, "name": name}),
                &format!("{} is verified as {name:?}", a.phone),
            );
        }
        AdminAction::UnverifyBusiness { phone } => {
            let a = account(&phone).await?;
            if !store.verify_business(a.id, None).await? {
                bail!("{} is not a business account", a.phone);
            }
            say(
                json,
                json!({"unverified": a.phone}),
                &format!("{} is no longer verified", a.phone),
            );
        }
        AdminAction::Notice { .. } => bail!("notices are not a business command"),
        AdminAction::ShowBusiness { phone } => {
            let a = account(&phone).await?;
            let Some(b) = store.business(a.id).await? else {
                say(
                    json,
                    json!({"phone": a.phone, "business": false}),
                    &format!("{} is not a business account", a.phone),
                );
                return Ok(());
            };
            let p = v1::BusinessProfile::decode(&b.profile[..]).unwrap_or_default();
            say(
                json,
                json!({"phone": a.phone, "business": true, "display_name": p.display_name, "verified": b.verified,
                       "category": p.category, "website": p.website, "description": p.description, "address": p.address}),
                &format!(
                    "{}: {:?} ({}){}",
                    a.phone,
                    p.display_name,
                    if b.verified {
                        "verified"
                    } else {
                        "not verified"
                    },
                    if p.website.is_empty() {
                        String::new()
                    } else {
                        format!(", {}", p.website)
                    }
                ),
            );
        }
    }
    Ok(())
}

fn say(json: bool, value: serde_json::Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}
