//! Fuzz target: UTF-8 text parsed as a TOML configuration and validated. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outage_relay::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(config) = Config::from_toml(text)
    {
        let _ = config.validate();
    }
});
