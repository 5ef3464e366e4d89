//! `org.rtmd.Dut1`: the board itself: its name, the daemon's version, and which subsystems
//! it serves (the interfaces present at the object path).

use zbus::interface;

pub struct Dut {
    name: String,
    subsystems: Vec<String>,
}

impl Dut {
    pub fn new(name: &str, subsystems: Vec<String>) -> Self {
        Dut {
            name: name.to_string(),
            subsystems,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

#[interface(name = "org.rtmd.Dut1")]
impl Dut {
    #[zbus(property(emits_changed_signal = "const"), name = "Name")]
    fn board_name(&self) -> &str {
        &self.name
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> &str {
        env!("CARGO_PKG_VERSION")
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn subsystems(&self) -> Vec<String> {
        self.subsystems.clone()
    }
}
