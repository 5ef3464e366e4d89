//! `org.rtmd.Dut1.Keyboard`: the USB keyboard of the board's gadget: `Type` text on the US
//! layout, `Press` a chord. Served when `[storage] keyboard = true`.

use zbus::interface;

use super::Error;
use super::access::BusGate;
use crate::access::clip;
use crate::gadget::Storage;

pub struct KeyboardIface {
    storage: Storage,
    gate: BusGate,
}

impl KeyboardIface {
    pub fn new(storage: Storage, gate: BusGate) -> Self {
        KeyboardIface { storage, gate }
    }
}

gated_interface! {
#[interface(name = "org.rtmd.Dut1.Keyboard")]
impl KeyboardIface {
    gated {
        #[gated(
            "Keyboard.Type",
            format!("{} characters: {}", text.chars().count(), clip(text, 80))
        )]
        /// Types `text` (US layout; `\n` is Enter). A character the layout lacks is
        /// `InvalidArgs`, and nothing is typed.
        #[zbus(name = "Type")]
        async fn type_text(&self, text: &str) -> Result<(), Error> |permit| {
            Ok(self.storage.type_text(&permit, text).await?)
        }

        #[gated("Keyboard.Press", clip(&keys.join("+"), 80))]
        /// Presses `keys` together and releases them: `["ctrl", "alt", "delete"]`, `["enter"]`.
        async fn press(&self, keys: Vec<String>) -> Result<(), Error> |permit| {
            Ok(self.storage.press(&permit, &keys).await?)
        }
    }
}
}
