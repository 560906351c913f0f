//! `outage-relay check-config`: resolves the configuration exactly as `serve` would (flags,
//! then `OUTAGE_RELAY_*` variables, then the TOML file, then the defaults), validates it,
//! loads the device registry, and prints the effective configuration as TOML, so an operator
//! can test a change before restarting the relay.

use crate::config::Config;

/// The report printed for a valid configuration: comment lines naming the registry and its
/// device count, then the effective configuration as TOML (which `--config` accepts back).
pub fn render(config: &Config, registry_devices: usize) -> Result<String, toml::ser::Error> {
    let registry = match &config.registry {
        Some(path) => format!("# registry {}: {registry_devices} devices", path.display()),
        None => {
            "# registry: none, 0 devices (alerts route by the MPAN their events carry)".to_owned()
        }
    };
    Ok(format!(
        "# outage-relay check-config: the configuration is valid\n{registry}\n\n{}",
        toml::to_string_pretty(config)?
    ))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::PushConfig;

    #[test]
    fn the_printed_configuration_reads_back_as_the_same_configuration() {
        let mut config = Config {
            registry: Some(PathBuf::from("/etc/outage-relay/registry.csv")),
            debounce: Duration::from_secs(90),
            ..Config::default()
        };
        config.routing.subscribers[0].push = Some(PushConfig {
            endpoint: "http://10.0.0.5:50061".into(),
            ca: None,
            domain: None,
        });
        config.routing.idno_subscriber = Some("ukpn".into());
        let text = render(&config, 42).expect("serializes");
        assert!(
            text.contains("# registry /etc/outage-relay/registry.csv: 42 devices"),
            "{text}"
        );
        assert!(text.contains("debounce = \"1m 30s\""), "{text}");
        assert_eq!(Config::from_toml(&text).expect("parses back"), config);
    }

    #[test]
    fn without_a_registry_the_report_says_so() {
        let text = render(&Config::default(), 0).expect("serializes");
        assert!(text.contains("# registry: none, 0 devices"), "{text}");
        assert_eq!(
            Config::from_toml(&text).expect("parses back"),
            Config::default()
        );
    }
}
