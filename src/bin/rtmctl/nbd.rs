//! `rtmctl nbd`: exports an image of the board's image folder over NBD, withdraws it,
//! resets its overlay, shows it (docs/nbd.md).

use clap::Subcommand;

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
    let props = c.properties(NBD).await?;
    if !props.flag("Exported") {
        return Ok(format!("{}: nothing exported", c.board));
    }
    let clients = props.count("Clients");
    Ok(format!(
        "{}: {} ({}) at {}, {clients} client{}",
        c.board,
        props.text("Image"),
        props.text("Mode"),
        props.text("Uri"),
        if clients == 1 { "" } else { "s" }
    ))
}
