//! `rtmctl usbg-ms`: the board's USB disk (docs/storage.md): attach an image of the image
//! folder, detach, show. LAVA's `usbg_ms_commands` and `flasher_deploy_commands` call it.

use std::path::Path;

use clap::Subcommand;

use zbus::OwnedVariant;

use crate::{Client, Failure};

pub const STORAGE: &str = "org.rtmd.Dut1.Storage";

#[derive(Subcommand)]
pub enum UsbgAction {
    /// Attach IMAGE as the board's USB disk. IMAGE is a name in the board's image folder;
    /// a relative path to an existing file is taken from the working directory (LAVA runs
    /// flasher commands in its download folder), and must lie inside the image folder.
    On {
        #[arg(long)]
        image: String,
        /// Copy-on-write: the board may write to a private copy; the image stays pristine.
        #[arg(long)]
        cow: bool,
    },
    /// Unplug the gadget; nothing attached is fine (LAVA runs `disable` before `enable`).
    Off,
    /// Show what is attached.
    Status,
}

pub async fn run(c: &Client, action: &UsbgAction) -> Result<String, Failure> {
    match action {
        UsbgAction::On { image, cow } => {
            let mode = if *cow { "cow" } else { "ro" };
            let name = image_argument(image);
            c.call(STORAGE, "Attach", &(name.as_str(), mode)).await?;
            Ok(format!("{}: usbg-ms {image} ({mode})", c.board))
        }
        UsbgAction::Off => {
            // No gadget (Udc empty) is done already; Detach would say NotFound.
            let reply = c
                .call("org.freedesktop.DBus.Properties", "Get", &(STORAGE, "Udc"))
                .await?;
            let udc: OwnedVariant = reply.body().deserialize().map_err(|e| c.fail(e))?;
            if String::try_from(udc).unwrap_or_default().is_empty() {
                return Ok(format!("{}: usbg-ms off (nothing was attached)", c.board));
            }
            c.call(STORAGE, "Detach", &()).await?;
            Ok(format!("{}: usbg-ms off", c.board))
        }
        UsbgAction::Status => status(c).await,
    }
}

/// A relative path to a file that exists here becomes absolute (the daemon does not share
/// our working directory); anything else is passed on as an image name.
fn image_argument(image: &str) -> String {
    let path = Path::new(image);
    if path.is_relative()
        && path.is_file()
        && let Ok(absolute) = std::path::absolute(path)
    {
        return absolute.to_string_lossy().into_owned();
    }
    image.to_string()
}

async fn status(c: &Client) -> Result<String, Failure> {
    let props = c.properties(STORAGE).await?;
    let text = |name: &str| props.text(name);
    let attached = props.flag("Attached");
    let udc = text("Udc");
    let on = if udc.is_empty() {
        String::new()
    } else {
        format!(" on {udc}")
    };
    if !attached {
        return Ok(format!("{}: usbg-ms off{on}", c.board));
    }
    Ok(format!(
        "{}: usbg-ms {} ({}){on}",
        c.board,
        text("Image"),
        text("Mode")
    ))
}
