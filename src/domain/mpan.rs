//! MPAN cores (13 digits, check digit validated), distributor IDs and GSP groups.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

/// A validated 13-digit MPAN core, stored as its numeric value plus one: never zero, so an
/// `Option<MpanCore>` takes 8 bytes (every open outage holds one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MpanCore(NonZeroU64);

/// Why an MPAN core was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMpan {
    /// Not exactly 13 ASCII digits.
    #[error("mpan_core {0:?} is not 13 digits")]
    Format(String),
    /// The 13th digit does not match the check digit of the first 12.
    #[error("mpan_core {text} fails its check digit (expected {expected})")]
    CheckDigit {
        /// The MPAN as given.
        text: String,
        /// The check digit the first 12 digits call for.
        expected: u8,
    },
}

const CHECK_WEIGHTS: [u32; 12] = [3, 5, 7, 13, 17, 19, 23, 29, 31, 37, 41, 43];

/// The check digit of the first 12 digits of an MPAN core.
pub fn check_digit(first_twelve: &[u8; 12]) -> u8 {
    let sum: u32 = first_twelve
        .iter()
        .zip(CHECK_WEIGHTS)
        .map(|(digit, weight)| u32::from(*digit) * weight)
        .sum();
    u8::try_from(sum % 11 % 10).unwrap_or(0)
}

impl MpanCore {
    /// Builds an MPAN core from its first 12 digits (as a number below 10^12), appending the
    /// check digit. Used by fleet generators and tests.
    pub fn with_check_digit(first_twelve: u64) -> Option<Self> {
        if first_twelve >= 1_000_000_000_000 {
            return None;
        }
        let mut digits = [0u8; 12];
        let mut rest = first_twelve;
        for digit in digits.iter_mut().rev() {
            *digit = u8::try_from(rest % 10).unwrap_or(0);
            rest /= 10;
        }
        Some(Self::from_digits(
            first_twelve * 10 + u64::from(check_digit(&digits)),
        ))
    }

    /// The distributor ID: the first two digits.
    pub fn distributor(self) -> DistributorId {
        DistributorId(u8::try_from(self.value() / 100_000_000_000).unwrap_or(0))
    }

    /// The numeric value of all 13 digits.
    pub fn value(self) -> u64 {
        self.0.get() - 1
    }

    /// The core whose 13 digits have the value `digits` (below 10^13, so `+ 1` cannot wrap).
    fn from_digits(digits: u64) -> Self {
        Self(NonZeroU64::MIN.saturating_add(digits))
    }

    /// Rebuilds an MPAN core from [`MpanCore::value`], re-checking it (for stored data).
    pub fn from_value(value: u64) -> Option<Self> {
        if value >= 10_000_000_000_000 {
            return None;
        }
        Self::with_check_digit(value / 10).filter(|mpan| mpan.value() == value)
    }
}

impl FromStr for MpanCore {
    type Err = BadMpan;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = text.as_bytes();
        if bytes.len() != 13 || !bytes.iter().all(u8::is_ascii_digit) {
            return Err(BadMpan::Format(text.chars().take(32).collect()));
        }
        let mut first_twelve = [0u8; 12];
        for (slot, byte) in first_twelve.iter_mut().zip(bytes) {
            *slot = byte - b'0';
        }
        let expected = check_digit(&first_twelve);
        if bytes[12] - b'0' != expected {
            return Err(BadMpan::CheckDigit {
                text: text.to_owned(),
                expected,
            });
        }
        let value = bytes
            .iter()
            .fold(0u64, |acc, byte| acc * 10 + u64::from(byte - b'0'));
        Ok(Self::from_digits(value))
    }
}

impl fmt::Display for MpanCore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:013}", self.value())
    }
}

/// The two-digit distributor ID that starts an MPAN (10–23 DNO areas, 24+ IDNOs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct DistributorId(pub u8);

impl DistributorId {
    /// True for the 14 licensed DNO areas (10–23).
    pub fn is_dno_area(self) -> bool {
        (10..=23).contains(&self.0)
    }
}

/// A GSP group (`_A` … `_P`): the grid supply point area a supply sits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GspGroup(u8);

/// The 14 GB DNO areas: distributor ID, area name and GSP group letter.
pub const DNO_AREAS: [(u8, &str, char); 14] = [
    (10, "Eastern England", 'A'),
    (11, "East Midlands", 'B'),
    (12, "London", 'C'),
    (13, "Merseyside & North Wales", 'D'),
    (14, "West Midlands", 'E'),
    (15, "North East England", 'F'),
    (16, "North West England", 'G'),
    (17, "North Scotland", 'P'),
    (18, "South Scotland", 'N'),
    (19, "South East England", 'J'),
    (20, "Southern England", 'H'),
    (21, "South Wales", 'K'),
    (22, "South West England", 'L'),
    (23, "Yorkshire", 'M'),
];

/// Why a GSP group was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gsp_group {0:?} is not one of _A,_B,_C,_D,_E,_F,_G,_H,_J,_K,_L,_M,_N,_P")]
pub struct BadGspGroup(pub String);

impl GspGroup {
    /// The group's letter as a byte (`b'A'` for `_A`), for compact storage.
    pub fn letter(self) -> u8 {
        self.0
    }

    /// The group whose letter is `letter`, if there is one.
    pub fn from_letter(letter: u8) -> Option<Self> {
        DNO_AREAS
            .iter()
            .any(|(_, _, l)| *l as u8 == letter)
            .then_some(Self(letter))
    }

    /// The DNO area (host distributor) this GSP group belongs to.
    pub fn host_distributor(self) -> DistributorId {
        let host = DNO_AREAS
            .iter()
            .find(|(_, _, letter)| *letter as u8 == self.0)
            .map_or(0, |(id, _, _)| *id);
        DistributorId(host)
    }

    /// The GSP group of a DNO area, if `distributor` is one.
    pub fn of_area(distributor: DistributorId) -> Option<Self> {
        DNO_AREAS
            .iter()
            .find(|(id, _, _)| *id == distributor.0)
            .map(|(_, _, letter)| Self(*letter as u8))
    }
}

impl FromStr for GspGroup {
    type Err = BadGspGroup;

    /// Accepts `_A` or `A` (any case).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let letter = text.strip_prefix('_').unwrap_or(text);
        let mut chars = letter.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => {
                let upper = c.to_ascii_uppercase();
                if DNO_AREAS.iter().any(|(_, _, l)| *l == upper) {
                    Ok(Self(upper as u8))
                } else {
                    Err(BadGspGroup(text.chars().take(16).collect()))
                }
            }
            _ => Err(BadGspGroup(text.chars().take(16).collect())),
        }
    }
}

impl fmt::Display for GspGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "_{}", self.0 as char)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_a_valid_mpan_and_reads_its_distributor() {
        let mpan = MpanCore::with_check_digit(123_456_789_012).expect("12 digits");
        let text = mpan.to_string();
        assert_eq!(text.len(), 13);
        assert_eq!(text.parse::<MpanCore>(), Ok(mpan));
        assert_eq!(mpan.distributor(), DistributorId(12));
    }

    #[test]
    fn check_digit_follows_the_published_weights() {
        // 1,2,3,...: 3+10+21+52+85+114+161+232+279+0+41+86 = 1084; 1084 % 11 = 6.
        let digits = [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2];
        assert_eq!(check_digit(&digits), 6);
        assert!("1234567890126".parse::<MpanCore>().is_ok());
        assert_eq!(
            "1234567890127".parse::<MpanCore>(),
            Err(BadMpan::CheckDigit {
                text: "1234567890127".into(),
                expected: 6
            })
        );
    }

    #[test]
    fn rejects_wrong_length_and_non_digits() {
        for bad in [
            "",
            "123456789012",
            "12345678901260",
            "12345678901a6",
            " 234567890126",
        ] {
            assert!(
                matches!(bad.parse::<MpanCore>(), Err(BadMpan::Format(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn gsp_groups_map_to_their_host_areas() {
        assert_eq!(
            "_C".parse::<GspGroup>().map(GspGroup::host_distributor),
            Ok(DistributorId(12))
        );
        assert_eq!(
            "p".parse::<GspGroup>().map(GspGroup::host_distributor),
            Ok(DistributorId(17))
        );
        assert!("_I".parse::<GspGroup>().is_err());
        assert!("_AB".parse::<GspGroup>().is_err());
        assert_eq!(
            GspGroup::of_area(DistributorId(23)).map(|g| g.to_string()),
            Some("_M".into())
        );
    }

    proptest! {
        #[test]
        fn generated_mpans_always_validate(first in 0u64..1_000_000_000_000) {
            let mpan = MpanCore::with_check_digit(first).expect("below 10^12");
            prop_assert_eq!(mpan.to_string().parse::<MpanCore>(), Ok(mpan));
        }

        #[test]
        fn a_changed_check_digit_is_refused(first in 0u64..1_000_000_000_000, bump in 1u64..10) {
            let mpan = MpanCore::with_check_digit(first).expect("below 10^12");
            let wrong = first * 10 + (mpan.value() % 10 + bump) % 10;
            let is_check_digit_error = matches!(
                format!("{wrong:013}").parse::<MpanCore>(),
                Err(BadMpan::CheckDigit { .. })
            );
            prop_assert!(is_check_digit_error);
        }
    }
}
