//! Fuzz target: bytes read as a device registry file. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outage_relay::route::Registry;

fuzz_target!(|data: &[u8]| {
    let _ = Registry::from_reader(data, "fuzz");
});
