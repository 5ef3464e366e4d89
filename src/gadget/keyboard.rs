//! The USB keyboard's language: the HID boot-keyboard report descriptor, the US layout
//! (characters -> usage and Shift), key names for chords, and the 8-byte reports.
//!
//! Pure functions; the gadget's owner thread writes the reports to `/dev/hidgN`.

/// HID boot keyboard (HID 1.11, appendix B.1): modifiers byte, reserved byte, six key
/// usages; LED output report.
pub const REPORT_DESCRIPTOR: [u8; 63] = [
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x06, // Usage (Keyboard)
    0xa1, 0x01, // Collection (Application)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0xe0, //   Usage Minimum (224)
    0x29, 0xe7, //   Usage Maximum (231)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x01, //   Logical Maximum (1)
    0x75, 0x01, //   Report Size (1)
    0x95, 0x08, //   Report Count (8)
    0x81, 0x02, //   Input (Data, Variable, Absolute): modifiers
    0x95, 0x01, //   Report Count (1)
    0x75, 0x08, //   Report Size (8)
    0x81, 0x03, //   Input (Constant): reserved
    0x95, 0x05, //   Report Count (5)
    0x75, 0x01, //   Report Size (1)
    0x05, 0x08, //   Usage Page (LEDs)
    0x19, 0x01, //   Usage Minimum (1)
    0x29, 0x05, //   Usage Maximum (5)
    0x91, 0x02, //   Output (Data, Variable, Absolute): LEDs
    0x95, 0x01, //   Report Count (1)
    0x75, 0x03, //   Report Size (3)
    0x91, 0x03, //   Output (Constant): padding
    0x95, 0x06, //   Report Count (6)
    0x75, 0x08, //   Report Size (8)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x65, //   Logical Maximum (101)
    0x05, 0x07, //   Usage Page (Key Codes)
    0x19, 0x00, //   Usage Minimum (0)
    0x29, 0x65, //   Usage Maximum (101)
    0x81, 0x00, //   Input (Data, Array): keys
    0xc0, // End Collection
];

/// One input report.
pub type Report = [u8; 8];

/// The report with no key down.
pub const RELEASE: Report = [0; 8];

pub const LEFT_CTRL: u8 = 0x01;
pub const LEFT_SHIFT: u8 = 0x02;
pub const LEFT_ALT: u8 = 0x04;
pub const LEFT_META: u8 = 0x08;
pub const RIGHT_CTRL: u8 = 0x10;
pub const RIGHT_SHIFT: u8 = 0x20;
pub const RIGHT_ALT: u8 = 0x40;
pub const RIGHT_META: u8 = 0x80;

/// A key of a chord: a modifier bit or a key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Modifier(u8),
    Usage(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("unknown key name {0:?}")]
    UnknownKey(String),
    #[error("{0:?} cannot be typed on a US keyboard")]
    Untypable(char),
    #[error("a chord holds at most 6 keys besides modifiers")]
    TooManyKeys,
    #[error("no keys given")]
    Empty,
}

/// A character on the US layout: (usage, needs Shift).
pub fn us_layout(c: char) -> Option<(u8, bool)> {
    const DIGITS: &[u8] = b"1234567890";
    const SHIFTED_DIGITS: &[u8] = b"!@#$%^&*()";
    // usage 0x2d.. in order: - = [ ] \ (0x32 is the non-US #) ; ' ` , . /
    const PUNCT: &[(char, char, u8)] = &[
        ('-', '_', 0x2d),
        ('=', '+', 0x2e),
        ('[', '{', 0x2f),
        (']', '}', 0x30),
        ('\\', '|', 0x31),
        (';', ':', 0x33),
        ('\'', '"', 0x34),
        ('`', '~', 0x35),
        (',', '<', 0x36),
        ('.', '>', 0x37),
        ('/', '?', 0x38),
    ];
    match c {
        'a'..='z' => Some((0x04 + (c as u8 - b'a'), false)),
        'A'..='Z' => Some((0x04 + (c as u8 - b'A'), true)),
        '\n' | '\r' => Some((0x28, false)),
        '\t' => Some((0x2b, false)),
        ' ' => Some((0x2c, false)),
        _ => {
            if let Some(i) = DIGITS.iter().position(|&d| char::from(d) == c) {
                return Some((0x1e + i as u8, false));
            }
            if let Some(i) = SHIFTED_DIGITS.iter().position(|&d| char::from(d) == c) {
                return Some((0x1e + i as u8, true));
            }
            PUNCT.iter().find_map(|&(plain, shifted, usage)| {
                if c == plain {
                    Some((usage, false))
                } else if c == shifted {
                    Some((usage, true))
                } else {
                    None
                }
            })
        }
    }
}

/// A key by name, as `Press` takes them: modifiers (`ctrl`, `shift`, `alt`, `meta` and their
/// `right` forms), named keys (`enter`, `esc`, `f1`..`f12`, `up`, `delete`, ...), and any
/// single character of the US layout (`a`, `1`, `/`). Case-insensitive.
pub fn key_by_name(name: &str) -> Option<Key> {
    let lower = name.to_ascii_lowercase();
    let modifier = match lower.as_str() {
        "ctrl" | "control" | "leftctrl" => Some(LEFT_CTRL),
        "shift" | "leftshift" => Some(LEFT_SHIFT),
        "alt" | "leftalt" => Some(LEFT_ALT),
        "meta" | "super" | "win" | "gui" | "leftmeta" => Some(LEFT_META),
        "rightctrl" => Some(RIGHT_CTRL),
        "rightshift" => Some(RIGHT_SHIFT),
        "rightalt" | "altgr" => Some(RIGHT_ALT),
        "rightmeta" => Some(RIGHT_META),
        _ => None,
    };
    if let Some(bit) = modifier {
        return Some(Key::Modifier(bit));
    }
    let usage = match lower.as_str() {
        "enter" | "return" => 0x28,
        "esc" | "escape" => 0x29,
        "backspace" => 0x2a,
        "tab" => 0x2b,
        "space" => 0x2c,
        "capslock" => 0x39,
        "printscreen" | "sysrq" => 0x46,
        "scrolllock" => 0x47,
        "pause" | "break" => 0x48,
        "insert" => 0x49,
        "home" => 0x4a,
        "pageup" => 0x4b,
        "delete" | "del" => 0x4c,
        "end" => 0x4d,
        "pagedown" => 0x4e,
        "right" => 0x4f,
        "left" => 0x50,
        "down" => 0x51,
        "up" => 0x52,
        "menu" => 0x65,
        _ => {
            if let Some(n) = lower.strip_prefix('f').and_then(|n| n.parse::<u8>().ok())
                && (1..=12).contains(&n)
            {
                0x3a + n - 1
            } else {
                let mut chars = lower.chars();
                match (chars.next(), chars.next()) {
                    // Only the unshifted character: "shift" is said as a key of its own.
                    (Some(c), None) => match us_layout(c) {
                        Some((usage, false)) => usage,
                        _ => return None,
                    },
                    _ => return None,
                }
            }
        }
    };
    Some(Key::Usage(usage))
}

/// The reports that type `text`: each character pressed and released.
pub fn type_reports(text: &str) -> Result<Vec<Report>, KeyError> {
    let mut reports = Vec::with_capacity(text.len() * 2);
    for c in text.chars() {
        let (usage, shift) = us_layout(c).ok_or(KeyError::Untypable(c))?;
        let modifiers = if shift { LEFT_SHIFT } else { 0 };
        reports.push([modifiers, 0, usage, 0, 0, 0, 0, 0]);
        reports.push(RELEASE);
    }
    Ok(reports)
}

/// The reports of one chord: all keys down at once, then all released.
pub fn chord_reports(keys: &[String]) -> Result<Vec<Report>, KeyError> {
    if keys.is_empty() {
        return Err(KeyError::Empty);
    }
    let mut report = RELEASE;
    let mut n = 0;
    for name in keys {
        match key_by_name(name).ok_or_else(|| KeyError::UnknownKey(name.clone()))? {
            Key::Modifier(bit) => report[0] |= bit,
            Key::Usage(usage) => {
                // Six usage slots, bytes 2..8: a seventh key has none.
                let slot = report.get_mut(2 + n).ok_or(KeyError::TooManyKeys)?;
                *slot = usage;
                n += 1;
            }
        }
    }
    Ok(vec![report, RELEASE])
}
