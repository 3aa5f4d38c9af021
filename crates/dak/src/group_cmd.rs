//! `dak group …`, `dak broadcast …` and the message commands (edit,
//! delete, timer, forward): parsing and printing around `dak_client`.

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use dak_client::{ForwardLimits, GroupEdit, GroupInfo, SendOutcome, format_id, parse_id};
use serde_json::json;

use crate::cli::{connect, open};

#[derive(Subcommand, Debug)]
pub enum GroupAction {
    /// Create a group: you are its admin; the numbers are added with all their devices.
    Create {
        title: String,
        members: Vec<String>,
        /// Only admins may add members and change settings.
        #[arg(long)]
        admins_only: bool,
    },
    /// Groups you are in.
    List,
    /// Members, admins and settings of a group.
    Info { group: String },
    /// Add members (admins only, if the group says so).
    Add {
        group: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Remove a member (admins only): they cannot read anything sent afterwards.
    Remove { group: String, member: String },
    /// Leave the group.
    Leave { group: String },
    /// Make a member an admin (admins only).
    Promote { group: String, member: String },
    /// Take a member's admin rights (admins only).
    Demote { group: String, member: String },
    /// Change the title, description, avatar or rules.
    Set {
        group: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// An image file (up to 64 KiB).
        #[arg(long)]
        avatar: Option<std::path::PathBuf>,
        /// Whether only admins may add members and change settings.
        #[arg(long)]
        admins_only: Option<bool>,
    },
    /// Make an invite link (replacing any earlier one), or revoke it.
    InviteLink {
        group: String,
        /// Revoke the current link.
        #[arg(long)]
        revoke: bool,
        /// Joining needs an admin's approval (`dak group approve`).
        #[arg(long, conflicts_with = "revoke")]
        approval: bool,
    },
    /// Ask to join a group with its invite link.
    Join { link: String },
    /// Add someone who asked to join by the invite link.
    Approve { group: String, member: String },
}

#[derive(Subcommand, Debug)]
pub enum BroadcastAction {
    /// Create or replace a list.
    Create {
        name: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Your lists.
    List,
    /// Delete a list.
    Delete { name: String },
    /// Send a text to everyone on the list, each in their 1:1 chat.
    Send { name: String, text: String },
}

fn print_info(g: &GroupInfo, json: bool) {
    if json {
        println!("{}", json!(g));
        return;
    }
    println!("{}  ({})", g.title, g.key);
    if !g.description.is_empty() {
        println!("  {}", g.description);
    }
    println!(
        "  {} member(s); {}; {}",
        g.members.len(),
        if g.admins_only {
            "only admins add members and change settings"
        } else {
            "all members add members and change settings"
        },
        crate::show::timer_text(g.expire_secs)
    );
    if g.avatar_bytes > 0 {
        println!("  avatar: {} bytes", g.avatar_bytes);
    }
    for m in &g.members {
        let admin = if m.admin { "  admin" } else { "" };
        println!("  {}  ({} device(s)){admin}", m.phone, m.devices);
    }
    if let Some(link) = &g.invite_link {
        let approval = if g.invite_needs_approval {
            " (joining needs approval)"
        } else {
            ""
        };
        println!("  invite link{approval}: {link}");
    }
    for r in &g.join_requests {
        println!("  {r} asks to join: dak group approve {} {r}", g.key);
    }
}

fn done(json: bool, what: serde_json::Value, line: &str) {
    if json {
        println!("{what}");
    } else {
        println!("{line}");
    }
}

pub async fn group(dir: &Path, action: GroupAction, json: bool) -> Result<()> {
    if let GroupAction::List = action {
        // From the profile alone: no connection needed.
        let profile = open(dir)?;
        for g in dak_client::groups::list_groups(&profile)? {
            if json {
                println!("{}", json!(g));
            } else {
                println!("{}  {} member(s)  {}", g.title, g.members.len(), g.key);
            }
        }
        return Ok(());
    }
    let mut client = connect(dir).await?;
    match action {
        GroupAction::List => {}
        GroupAction::Create {
            title,
            members,
            admins_only,
        } => {
            let g = client.create_group(&title, &members, admins_only).await?;
            print_info(&g, json);
        }
        GroupAction::Info { group } => print_info(&client.group_info(&group)?, json),
        GroupAction::Add { group, members } => {
            client.add_members(&group, &members).await?;
            done(
                json,
                json!({"added": members}),
                &format!("Added {}.", members.join(", ")),
            );
        }
        GroupAction::Remove { group, member } => {
            client.remove_member(&group, &member).await?;
            done(
                json,
                json!({"removed": member}),
                &format!("Removed {member}."),
            );
        }
        GroupAction::Leave { group } => {
            client.leave_group(&group).await?;
            done(json, json!({"left": group}), "You left the group.");
        }
        GroupAction::Promote { group, member } => {
            client.set_admin(&group, &member, true).await?;
            done(
                json,
                json!({"admin": member}),
                &format!("{member} is now an admin."),
            );
        }
        GroupAction::Demote { group, member } => {
            client.set_admin(&group, &member, false).await?;
            done(
                json,
                json!({"not_admin": member}),
                &format!("{member} is no longer an admin."),
            );
        }
        GroupAction::Set {
            group,
            title,
            description,
            avatar,
            admins_only,
        } => {
            let avatar = match avatar {
                Some(path) => Some(
                    std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?,
                ),
                None => None,
            };
            let edit = GroupEdit {
                title,
                description,
                avatar,
                admins_only,
                expire_secs: None,
            };
            client.update_group(&group, edit).await?;
            print_info(&client.group_info(&group)?, json);
        }
        GroupAction::InviteLink {
            group,
            revoke,
            approval,
        } => {
            if revoke {
                client.revoke_invite_link(&group).await?;
                done(
                    json,
                    json!({"revoked": true}),
                    "The invite link was revoked.",
                );
            } else {
                let link = client.create_invite_link(&group, approval).await?;
                done(json, json!({"link": link, "approval": approval}), &link);
            }
        }
        GroupAction::Join { link } => {
            client.join_by_link(&link).await?;
            done(
                json,
                json!({"requested": true}),
                "Asked to join: you are added when the member who made the link is online (or an admin approves).",
            );
        }
        GroupAction::Approve { group, member } => {
            client.approve_join(&group, &member).await?;
            done(json, json!({"added": member}), &format!("Added {member}."));
        }
    }
    client.close().await;
    Ok(())
}

fn print_sent(sent: &SendOutcome, json: bool) {
    done(
        json,
        json!({"id": format_id(&sent.id), "tick": dak_client::TickState::Sent}),
        &format!("{} ✓", format_id(&sent.id)),
    );
}

pub async fn edit(dir: &Path, id: &str, text: &str, json: bool) -> Result<()> {
    let id = parse_id(id)?;
    let mut client = connect(dir).await?;
    print_sent(&client.edit_message(&id, text).await?, json);
    client.close().await;
    Ok(())
}

pub async fn delete(dir: &Path, id: &str, json: bool) -> Result<()> {
    let id = parse_id(id)?;
    let mut client = connect(dir).await?;
    print_sent(&client.delete_for_everyone(&id).await?, json);
    client.close().await;
    Ok(())
}

/// "off", or a duration like 1h or 7days.
fn parse_timer(raw: &str) -> Result<u32> {
    if raw.eq_ignore_ascii_case("off") || raw == "0" {
        return Ok(0);
    }
    let d = humantime::parse_duration(raw)
        .with_context(|| format!("{raw:?} is not a duration (like 1h, 7days) or \"off\""))?;
    let secs = d.as_secs();
    if secs == 0 || secs > u32::MAX as u64 {
        bail!("the timer must be between 1 second and about 136 years, or off");
    }
    Ok(secs as u32)
}

pub async fn timer(dir: &Path, conversation: &str, duration: &str, json: bool) -> Result<()> {
    let secs = parse_timer(duration)?;
    let mut client = connect(dir).await?;
    client.set_timer(conversation, secs).await?;
    done(
        json,
        json!({"expire_secs": secs}),
        &crate::show::timer_text(secs),
    );
    client.close().await;
    Ok(())
}

pub async fn forward(
    dir: &Path,
    id: &str,
    to: &[String],
    limits: ForwardLimits,
    json: bool,
) -> Result<()> {
    let id = parse_id(id)?;
    let mut client = connect(dir).await?;
    for sent in client.forward(&id, to, limits).await? {
        print_sent(&sent, json);
    }
    client.close().await;
    Ok(())
}

pub async fn broadcast(dir: &Path, action: BroadcastAction, json: bool) -> Result<()> {
    let profile = open(dir)?;
    match action {
        BroadcastAction::Create { name, members } => {
            let members = dak_client::save_broadcast_list(&profile, &name, &members)?;
            done(
                json,
                json!({"list": name, "members": members}),
                &format!("Broadcast list {name:?}: {}.", members.join(", ")),
            );
        }
        BroadcastAction::List => {
            for (name, members) in profile.broadcast_lists()? {
                done(
                    json,
                    json!({"list": name, "members": members}),
                    &format!("{name}: {}", members.join(", ")),
                );
            }
        }
        BroadcastAction::Delete { name } => {
            if !profile.delete_broadcast_list(&name)? {
                bail!("no broadcast list {name:?}");
            }
            done(json, json!({"deleted": name}), "Deleted.");
        }
        BroadcastAction::Send { name, text } => {
            drop(profile);
            let mut client = connect(dir).await?;
            for sent in client.broadcast(&name, &text).await? {
                print_sent(&sent, json);
            }
            client.close().await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_timer;

    #[test]
    fn timers_parse_as_durations_or_off() {
        assert_eq!(parse_timer("off").unwrap(), 0);
        assert_eq!(parse_timer("1h").unwrap(), 3600);
        assert_eq!(parse_timer("7days").unwrap(), 7 * 86400);
        assert!(parse_timer("soon").is_err());
    }
}
