//! `rtmctl keyboard`: types on the board's USB keyboard (`[storage] keyboard = true`).

use clap::Subcommand;

use crate::{Client, Failure};

pub const KEYBOARD: &str = "org.rtmd.Dut1.Keyboard";

#[derive(Subcommand)]
pub enum KeyboardAction {
    /// Type TEXT on the US layout (`\n` in TEXT is Enter).
    Type { text: String },
    /// Press KEYs together and release them: `ctrl alt delete`, `enter`, `f2`.
    Press {
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

pub async fn run(c: &Client, action: &KeyboardAction) -> Result<String, Failure> {
    match action {
        KeyboardAction::Type { text } => {
            c.call(KEYBOARD, "Type", &(text.as_str(),)).await?;
            Ok(format!(
                "{}: typed {} characters",
                c.board,
                text.chars().count()
            ))
        }
        KeyboardAction::Press { keys } => {
            c.call(KEYBOARD, "Press", &(keys,)).await?;
            Ok(format!("{}: pressed {}", c.board, keys.join("+")))
        }
    }
}
