//! Device identity (EUI-64) and supply points (a device and, for polyphase supplies, a phase).

use std::fmt;
use std::str::FromStr;

/// A device's EUI-64, written `00-db-12-34-56-78-90-a0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u64);

/// Why a device id could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "device_id {0:?} is not an EUI-64 (expected 8 hex byte pairs like 00-db-12-34-56-78-90-a0)"
)]
pub struct BadDeviceId(pub String);

impl FromStr for DeviceId {
    type Err = BadDeviceId;

    /// Accepts `00-db-12-34-56-78-90-a0` (dashes or colons, any case) or 16 bare hex digits.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadDeviceId(text.chars().take(64).collect());
        let bytes = text.as_bytes();
        let digits: Vec<u8> = match bytes.len() {
            16 => bytes.to_vec(),
            23 => {
                let separator = bytes[2];
                if separator != b'-' && separator != b':' {
                    return Err(bad());
                }
                let mut digits = Vec::with_capacity(16);
                for (i, chunk) in bytes.chunks(3).enumerate() {
                    if i < 7 && chunk.get(2) != Some(&separator) {
                        return Err(bad());
                    }
                    digits.extend_from_slice(&chunk[..2]);
                }
                digits
            }
            _ => return Err(bad()),
        };
        let mut value = 0u64;
        for digit in digits {
            let nibble = (digit as char).to_digit(16).ok_or_else(bad)?;
            value = (value << 4) | u64::from(nibble);
        }
        Ok(Self(value))
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl DeviceId {
    /// The 16 lowercase hex digits, as alert ids show the device.
    pub fn hex(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, digit) in out.iter_mut().enumerate() {
            *digit = HEX[((self.0 >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }
}

impl fmt::Display for DeviceId {
    /// `00-db-12-34-56-78-90-a0`. Formatted by hand: every alert sent shows one, and the
    /// formatting machinery costs several times more.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        let mut out = [b'-'; 23];
        for (pair, digits) in hex.chunks_exact(2).enumerate() {
            out[pair * 3..pair * 3 + 2].copy_from_slice(digits);
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

/// The phase an event is about; `Whole` for single-phase supplies or whole-supply events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Phase {
    /// The whole supply (proto `PHASE_UNSPECIFIED`).
    #[default]
    Whole,
    /// Phase 1 (L1).
    L1,
    /// Phase 2 (L2).
    L2,
    /// Phase 3 (L3).
    L3,
}

impl Phase {
    /// Maps the proto enum value; `None` for values the proto does not define.
    pub fn from_proto(value: i32) -> Option<Self> {
        match value {
            0 => Some(Self::Whole),
            1 => Some(Self::L1),
            2 => Some(Self::L2),
            3 => Some(Self::L3),
            _ => None,
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> i32 {
        self as i32
    }
}

/// What the state machine tracks: one device's supply, or one phase of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SupplyPoint {
    /// The reporting device.
    pub device: DeviceId,
    /// The phase, or `Whole`.
    pub phase: Phase,
}

impl fmt::Display for SupplyPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.device, self.phase.to_proto())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_dashed_colon_and_bare_forms() {
        let expected = DeviceId(0x00db_1234_5678_90a0);
        assert_eq!("00-db-12-34-56-78-90-a0".parse(), Ok(expected));
        assert_eq!("00:DB:12:34:56:78:90:A0".parse(), Ok(expected));
        assert_eq!("00db1234567890a0".parse(), Ok(expected));
        assert_eq!(expected.to_string(), "00-db-12-34-56-78-90-a0");
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "00-db-12-34-56-78-90",
            "00-db-12-34-56-78-90-a0-11",
            "00-db-12:34-56-78-90-a0",
            "0g-db-12-34-56-78-90-a0",
            "00_db_12_34_56_78_90_a0",
            "+0db1234567890a0",
            "ß0-db-12-34-56-78-90-a",
        ] {
            assert!(
                bad.parse::<DeviceId>().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(raw in any::<u64>()) {
            let id = DeviceId(raw);
            prop_assert_eq!(id.to_string().parse::<DeviceId>(), Ok(id));
        }

        #[test]
        fn parse_never_panics(text in ".{0,40}") {
            let _ = text.parse::<DeviceId>();
        }
    }
}
