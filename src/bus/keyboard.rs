//! `org.rtmd.Dut1.Keyboard`: the USB keyboard of the board's gadget: `Type` text on the US
//! layout, `Press` a chord. Served when `[storage] keyboard = true`.

use zbus::interface;

use super::Error;
use crate::gadget::Storage;

pub struct KeyboardIface {
    storage: Storage,
}

impl KeyboardIface {
    pub fn new(storage: Storage) -> Self {
        KeyboardIface { storage }
    }
}

#[interface(name = "org.rtmd.Dut1.Keyboard")]
impl KeyboardIface {
    /// Types `text` (US layout; `\n` is Enter). A character the layout lacks is
    /// `InvalidArgs`, and nothing is typed.
    #[zbus(name = "Type")]
    async fn type_text(&self, text: &str) -> Result<(), Error> {
        Ok(self.storage.type_text(text).await?)
    }

    /// Presses `keys` together and releases them: `["ctrl", "alt", "delete"]`, `["enter"]`.
    async fn press(&self, keys: Vec<String>) -> Result<(), Error> {
        Ok(self.storage.press(&keys).await?)
    }
}
