//! `org.rtmd.Dut1.Keyboard`: the USB keyboard of the board's gadget: `Type` text on the US
//! layout, `Press` a chord. Served when `[storage] keyboard = true`.

use zbus::message::Header;
use zbus::{Connection, interface};

use super::Error;
use super::access::Gate;
use crate::gadget::Storage;

pub struct KeyboardIface {
    storage: Storage,
    gate: Gate,
}

impl KeyboardIface {
    pub fn new(storage: Storage, gate: Gate) -> Self {
        KeyboardIface { storage, gate }
    }
}

#[interface(name = "org.rtmd.Dut1.Keyboard")]
impl KeyboardIface {
    /// Types `text` (US layout; `\n` is Enter). A character the layout lacks is
    /// `InvalidArgs`, and nothing is typed.
    #[zbus(name = "Type")]
    async fn type_text(
        &self,
        text: &str,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let args = format!(
            "{} characters: {}",
            text.chars().count(),
            crate::access::clip(text, 80)
        );
        self.gate
            .run(&hdr, conn, "Keyboard.Type", args, async {
                Ok(self.storage.type_text(text).await?)
            })
            .await
    }

    /// Presses `keys` together and releases them: `["ctrl", "alt", "delete"]`, `["enter"]`.
    async fn press(
        &self,
        keys: Vec<String>,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), Error> {
        let args = crate::access::clip(&keys.join("+"), 80);
        self.gate
            .run(&hdr, conn, "Keyboard.Press", args, async {
                Ok(self.storage.press(&keys).await?)
            })
            .await
    }
}
