//! `rtmctl nbd`: exports an image of the board's image folder over NBD, withdraws it,
//! resets its overlay, shows it (docs/nbd.md).

use std::collections::HashMap;

use clap::Subcommand;
use zbus::OwnedVariant;

use crate::{Client, Failure};

pub const NBD: &str = "org.rtmd.Dut1.Nbd";

#[derive(Subcommand)]
pub enum NbdAction {
    /// Export IMAGE (a name in the board's image folder) and print its nbd:// URI.
    Export {
        image: String,
        /// Copy-on-write: the board may write; the image stays pristine.
        #[arg(long)]
        cow: bool,
        /// With --cow: first discard what earlier clients wrote (a fresh start for a job).
        #[arg(long, requires = "cow")]
        reset: bool,
    },
    /// Withdraw the export (its clients are disconnected; the overlay is kept).
    Unexport,
    /// Discard what clients wrote to the cow export.
    Reset,
    /// Show what is exported.
    Status,
}

pub async fn run(c: &Client, action: &NbdAction) -> Result<String, Failure> {
    match action {
        NbdAction::Export { image, cow, reset } => {
            export(c, image, if *cow { "cow" } else { "ro" }, *reset).await
        }
        NbdAction::Unexport => {
            c.call(NBD, "Unexport", &()).await?;
            Ok(format!("{}: nothing exported", c.board))
        }
        NbdAction::Reset => {
            c.call(NBD, "ResetOverlay", &()).await?;
            Ok(format!("{}: overlay reset", c.board))
        }
        NbdAction::Status => status(c).await,
    }
}

/// Exports `image` with `mode`, optionally from a fresh overlay; one line with the URI.
pub async fn export(c: &Client, image: &str, mode: &str, reset: bool) -> Result<String, Failure> {
    let reply = c.call(NBD, "Export", &(image, mode)).await?;
    let uri: String = reply.body().deserialize().map_err(|e| c.fail(e))?;
    let mut line = format!("{}: {image} ({mode}) at {uri}", c.board);
    if reset {
        c.call(NBD, "ResetOverlay", &()).await?;
        line.push_str(", fresh overlay");
    }
    Ok(line)
}

async fn status(c: &Client) -> Result<String, Failure> {
    let reply = c
        .call("org.freedesktop.DBus.Properties", "GetAll", &(NBD,))
        .await?;
    let props: HashMap<String, OwnedVariant> = reply.body().deserialize().map_err(|e| c.fail(e))?;
    let get = |name: &str| props.get(name).and_then(|v| v.try_clone().ok());
    let text = |name: &str| {
        get(name)
            .and_then(|v| String::try_from(v).ok())
            .unwrap_or_default()
    };
    let exported = get("Exported")
        .and_then(|v| bool::try_from(v).ok())
        .unwrap_or(false);
    if !exported {
        return Ok(format!("{}: nothing exported", c.board));
    }
    let clients = get("Clients")
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(0);
    Ok(format!(
        "{}: {} ({}) at {}, {clients} client{}",
        c.board,
        text("Image"),
        text("Mode"),
        text("Uri"),
        if clients == 1 { "" } else { "s" }
    ))
}
