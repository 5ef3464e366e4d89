//! `rtmctl hold`, `release`, `who`, `audit`, and `--hold LABEL` on any command (how LAVA
//! hooks take the board): the lease of `org.rtmd.Dut1` (docs/access.md).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Client, Failure};

const DUT: &str = "org.rtmd.Dut1";

/// The lease as the board's properties say.
struct Holder {
    label: String,
    uid: i64,
    since: u64,
    expires: u64,
}

async fn holder(c: &Client) -> Result<Option<Holder>, Failure> {
    let props = c.properties(DUT).await?;
    let uid = props.value::<i64>("HolderUid").unwrap_or(-1);
    if uid < 0 {
        return Ok(None);
    }
    let number = |name: &str| props.value::<u64>(name).unwrap_or(0);
    Ok(Some(Holder {
        label: props.text("Holder"),
        uid,
        since: number("Since"),
        expires: number("Expires"),
    }))
}

fn time(t: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)).to_string()
}

fn user_name(uid: i64) -> String {
    u32::try_from(uid)
        .ok()
        .and_then(|u| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(u)).ok())
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn ttl_seconds(ttl: Duration) -> Result<u32, Failure> {
    u32::try_from(ttl.as_secs()).map_err(|_| Failure {
        code: 2,
        message: format!("ttl {} is too long", humantime::format_duration(ttl)),
    })
}

/// Takes the board, or renews the lease when this uid holds it already. Someone else
/// holding it is exit 3, naming them.
pub async fn hold(c: &Client, label: &str, ttl: Duration) -> Result<String, Failure> {
    let ttl_s = ttl_seconds(ttl)?;
    match c.call(DUT, "Acquire", &(label, ttl_s)).await {
        Ok(reply) => {
            let expires: u64 = reply.body().deserialize().map_err(|e| c.fail(e))?;
            Ok(format!("{}: held by you until {}", c.board, time(expires)))
        }
        Err(f) if f.code == 3 => {
            // Held: by us (a second hook of the same job, a person's second shell) renews.
            let me = i64::from(nix::unistd::getuid().as_raw());
            match holder(c).await? {
                Some(h) if h.uid == me => {
                    let reply = c.call(DUT, "Renew", &(ttl_s,)).await?;
                    let expires: u64 = reply.body().deserialize().map_err(|e| c.fail(e))?;
                    Ok(format!(
                        "{}: held by you ({:?}), renewed until {}",
                        c.board,
                        h.label,
                        time(expires)
                    ))
                }
                _ => Err(f),
            }
        }
        Err(f) => Err(f),
    }
}

/// Ends this uid's lease (`force`: anybody's, for admins). Nobody holding is done already.
pub async fn release(c: &Client, force: bool) -> Result<String, Failure> {
    let method = if force { "ForceRelease" } else { "Release" };
    match c.call(DUT, method, &()).await {
        Ok(_) => Ok(format!("{}: released", c.board)),
        Err(f) if f.message.contains("nobody holds") => Ok(format!("{}: nobody holds it", c.board)),
        Err(f) => Err(f),
    }
}

pub async fn who(c: &Client) -> Result<String, Failure> {
    Ok(match holder(c).await? {
        None => format!("{}: free", c.board),
        Some(h) => {
            let left = h.expires.saturating_sub(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            );
            format!(
                "{}: held by {:?} ({}, uid {}) since {}, until {} ({} left)",
                c.board,
                h.label,
                user_name(h.uid),
                h.uid,
                time(h.since),
                time(h.expires),
                humantime::format_duration(Duration::from_secs(left))
            )
        }
    })
}

/// One line per record, oldest first.
pub async fn audit(c: &Client, since: Option<Duration>) -> Result<String, Failure> {
    let since = since
        .and_then(|d| SystemTime::now().checked_sub(d))
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let reply = c.call(DUT, "Audit", &(since,)).await?;
    let records: Vec<(u64, i64, String, String, String, String)> =
        reply.body().deserialize().map_err(|e| c.fail(e))?;
    if records.is_empty() {
        return Ok(format!("{}: no mutating calls recorded", c.board));
    }
    let lines: Vec<String> = records
        .into_iter()
        .map(|(t, uid, holder, method, args, result)| {
            let who = if uid < 0 {
                "unknown".to_string()
            } else {
                format!("{} ({uid})", user_name(uid))
            };
            let held = if holder.is_empty() {
                String::new()
            } else {
                format!(" [held: {holder}]")
            };
            format!("{} {who} {method}({args}) -> {result}{held}", time(t))
        })
        .collect();
    Ok(lines.join("\n"))
}
