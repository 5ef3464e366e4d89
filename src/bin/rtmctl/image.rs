//! `rtmctl image fetch|list|rm`: the board's image folder.
//!
//! `fetch` starts a job (`Images.Fetch`) and follows it through its signals (no polling): a
//! progress bar with rate and ETA on stderr when stderr is a terminal, nothing otherwise;
//! then one line. Ctrl-C (or SIGTERM) cancels the job, which leaves nothing behind.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;

use clap::Subcommand;
use futures_util::StreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::signal::unix::{SignalKind, signal};
use zbus::{MessageStream, OwnedObjectPath, OwnedVariant};

use super::{Client, Failure, Props};

const IMAGES: &str = "org.rtmd.Dut1.Images";
const JOB: &str = "org.rtmd.Dut1.Images.Job";

#[derive(Subcommand)]
pub enum ImageAction {
    /// Fetch an image into the board's image folder (http://, https://, or a local file
    /// that rtmd can read); xz, gzip, zstd and bzip2 are decompressed.
    Fetch {
        source: String,
        /// sha256 of the source as published (the compressed file).
        #[arg(long)]
        sha256: Option<String>,
        /// Then export the image over NBD (`cow`: from a fresh overlay) and print its URI.
        #[arg(long, value_name = "MODE", value_parser = ["ro", "cow"])]
        nbd: Option<String>,
    },
    /// List the images: name, size, allocated bytes, source sha256.
    List,
    /// Remove an image.
    Rm { name: String },
}

pub async fn run(c: &Client, action: &ImageAction) -> Result<String, Failure> {
    match action {
        ImageAction::Fetch {
            source,
            sha256,
            nbd: None,
        } => fetch(c, source, sha256.as_deref())
            .await
            .map(|(image, cached)| format!("{}: {image}{}", c.board, cached_note(cached))),
        ImageAction::Fetch {
            source,
            sha256,
            nbd: Some(mode),
        } => {
            let (image, _) = fetch(c, source, sha256.as_deref()).await?;
            crate::nbd::export(c, &image, mode, mode == "cow").await
        }
        ImageAction::List => list(c).await,
        ImageAction::Rm { name } => {
            c.call(IMAGES, "Remove", &(name.as_str(),)).await?;
            Ok(format!("{}: removed {name}", c.board))
        }
    }
}

/// A relative local path is the caller's: rtmd runs elsewhere.
fn absolute_source(source: &str) -> String {
    if source.contains("://") || Path::new(source).is_absolute() {
        return source.to_string();
    }
    match std::env::current_dir() {
        Ok(cwd) => cwd.join(source).display().to_string(),
        Err(_) => source.to_string(),
    }
}

fn cached_note(cached: bool) -> &'static str {
    if cached { " (cached)" } else { "" }
}

/// Fetches `source`, following the job; returns the image's name and whether it was cached.
async fn fetch(c: &Client, source: &str, sha256: Option<&str>) -> Result<(String, bool), Failure> {
    let source = absolute_source(source);
    // Installed first: a Ctrl-C from now on cancels the job instead of leaving it running.
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => {
            return Err(Failure {
                code: 1,
                message: "cannot install signal handlers".to_string(),
            });
        }
    };
    // Signals are matched on the daemon's unique name: every board serves the same paths.
    let owner: String = c
        .connection
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "GetNameOwner",
            &(c.dest.as_str(),),
        )
        .await
        .map_err(|e| c.fail(e))?
        .body()
        .deserialize()
        .map_err(|e| c.fail(e))?;
    let reply = c
        .call(IMAGES, "Fetch", &(source.as_str(), sha256.unwrap_or("")))
        .await?;
    let job: OwnedObjectPath = reply.body().deserialize().map_err(|e| c.fail(e))?;
    let rule = format!("type='signal',sender='{owner}',path='{}'", job.as_str());
    let mut stream = MessageStream::for_match_rule(rule.as_str(), &c.connection, None)
        .await
        .map_err(|e| c.fail(e))?;
    // Read the state only after subscribing, so no change falls in between.
    let mut props = c.properties_at(job.as_str(), JOB).await?;

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_message(props.text("Image"));
        bar
    });
    let show = |props: &Props| {
        if let Some(bar) = &bar {
            let total = props.value::<u64>("BytesTotal").unwrap_or(0);
            if total > 0 && bar.length() != Some(total) {
                bar.set_length(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
            } else if total == 0 && bar.length().is_none() {
                bar.set_style(
                    ProgressStyle::with_template("{msg} {spinner} {bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
            }
            bar.set_position(props.value::<u64>("BytesDone").unwrap_or(0));
        }
    };
    show(&props);

    let mut cancelled = false;
    while props.text("State") == "running" {
        tokio::select! {
            msg = stream.next() => {
                let Some(Ok(msg)) = msg else {
                    return Err(Failure { code: 1, message: "lost the connection to rtmd".to_string() });
                };
                let member = msg.header().member().map(|m| m.to_string()).unwrap_or_default();
                if member == "PropertiesChanged"
                    && let Ok((_, changed, _)) = msg.body().deserialize::<(String, HashMap<String, OwnedVariant>, Vec<String>)>()
                {
                    props.update(changed);
                    show(&props);
                } else if member == "Finished" {
                    props = c.properties_at(job.as_str(), JOB).await?;
                }
            }
            _ = int.recv(), if !cancelled => cancelled = true,
            _ = term.recv(), if !cancelled => cancelled = true,
        }
        if cancelled && props.text("State") == "running" {
            c.connection
                .call_method(
                    Some(c.dest.as_str()),
                    job.as_str(),
                    Some(JOB),
                    "Cancel",
                    &(),
                )
                .await
                .map_err(|e| c.fail(e))?;
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    match props.text("State").as_str() {
        "done" => Ok((props.text("Image"), props.flag("Cached"))),
        _ => Err(Failure {
            code: 1,
            message: props.text("Error"),
        }),
    }
}

async fn list(c: &Client) -> Result<String, Failure> {
    let reply = c.call(IMAGES, "List", &()).await?;
    let images: Vec<(String, u64, u64, String, String)> =
        reply.body().deserialize().map_err(|e| c.fail(e))?;
    let width = images
        .iter()
        .map(|i| i.0.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = format!(
        "{:<width$}  {:>10}  {:>10}  SHA256",
        "NAME", "SIZE", "ALLOCATED"
    );
    for (name, size, allocated, sha256, _) in images {
        let short = if sha256.is_empty() {
            "-".to_string()
        } else {
            sha256.chars().take(12).collect()
        };
        out.push_str(&format!(
            "\n{name:<width$}  {:>10}  {:>10}  {short}",
            HumanBytes(size).to_string(),
            HumanBytes(allocated).to_string()
        ));
    }
    Ok(out)
}
