//! The routing table: which subscriber owns which distributor IDs, fixed at start from
//! [`RoutingConfig`].

use std::sync::Arc;

use super::ParkReason;
use crate::config::RoutingConfig;
use crate::domain::{DistributorId, GspGroup};

/// First distributor ID a subscriber can own (00–09 are not distribution networks).
const FIRST_DISTRIBUTOR: u8 = 10;
/// First IDNO distributor ID; 10–23 are the 14 licensed DNO areas.
const FIRST_IDNO: u8 = 24;
/// Distributor IDs are two digits.
const DISTRIBUTOR_SLOTS: usize = 100;

/// A subscriber, as its index in the configured subscriber list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriberId(pub u16);

impl SubscriberId {
    fn index(self) -> usize {
        usize::from(self.0)
    }
}

#[derive(Debug, Clone)]
struct Subscriber {
    name: Arc<str>,
    distributor_ids: Vec<DistributorId>,
    push_endpoint: Option<String>,
}

/// Subscribers in config order, with an O(1) distributor → owner lookup.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    subscribers: Vec<Subscriber>,
    owner: [Option<SubscriberId>; DISTRIBUTOR_SLOTS],
    idno_subscriber: Option<SubscriberId>,
}

impl RoutingTable {
    /// Builds the table from a configuration that `Config::validate` accepted. Should an
    /// unvalidated one get here, the first subscriber listing a distributor ID owns it, IDs
    /// outside 10–99 are ignored, and so are subscribers past the 65 536th.
    pub fn from_config(config: &RoutingConfig) -> Self {
        let mut table = Self {
            subscribers: Vec::with_capacity(config.subscribers.len()),
            owner: [None; DISTRIBUTOR_SLOTS],
            idno_subscriber: None,
        };
        for (sub, id) in config
            .subscribers
            .iter()
            .zip((0..=u16::MAX).map(SubscriberId))
        {
            for distributor in &sub.distributor_ids {
                if distributor.0 < FIRST_DISTRIBUTOR {
                    continue;
                }
                if let Some(slot @ None) = table.owner.get_mut(usize::from(distributor.0)) {
                    *slot = Some(id);
                }
            }
            table.subscribers.push(Subscriber {
                name: Arc::from(sub.name.as_str()),
                distributor_ids: sub.distributor_ids.clone(),
                push_endpoint: sub.push.as_ref().map(|push| push.endpoint.clone()),
            });
        }
        table.idno_subscriber = config
            .idno_subscriber
            .as_deref()
            .and_then(|name| table.id_of(name));
        table
    }

    /// Who receives alerts for a supply of `distributor` in `gsp` (the supply's GSP group,
    /// when known). A subscriber that lists the ID itself always wins; other IDNO supplies
    /// (24+) go to `idno_subscriber`, else to the owner of their GSP group's host area.
    pub fn subscriber_for(
        &self,
        distributor: DistributorId,
        gsp: Option<GspGroup>,
    ) -> Result<SubscriberId, ParkReason> {
        if let Some(id) = self.owner_of(distributor) {
            return Ok(id);
        }
        if distributor.0 < FIRST_IDNO {
            return Err(ParkReason::NoSubscriber(distributor));
        }
        if let Some(id) = self.idno_subscriber {
            return Ok(id);
        }
        let gsp = gsp.ok_or(ParkReason::IdnoWithoutGsp(distributor))?;
        self.owner_of(gsp.host_distributor())
            .ok_or(ParkReason::NoSubscriber(distributor))
    }

    fn owner_of(&self, distributor: DistributorId) -> Option<SubscriberId> {
        self.owner
            .get(usize::from(distributor.0))
            .copied()
            .flatten()
    }

    fn subscriber(&self, id: SubscriberId) -> &Subscriber {
        // Ids come from this table; another table's id is a programming error.
        &self.subscribers[id.index()]
    }

    /// The subscriber's configured name. Panics if `id` is not from this table.
    pub fn name(&self, id: SubscriberId) -> &str {
        &self.subscriber(id).name
    }

    /// The name as a shared string, for labels and stored alerts that outlive a borrow.
    /// Panics if `id` is not from this table.
    pub fn name_arc(&self, id: SubscriberId) -> Arc<str> {
        Arc::clone(&self.subscriber(id).name)
    }

    /// The subscriber called `name`.
    pub fn id_of(&self, name: &str) -> Option<SubscriberId> {
        self.iter()
            .find(|(_, candidate)| *candidate == name)
            .map(|(id, _)| id)
    }

    /// Number of subscribers.
    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    /// True when no subscriber is configured (every alert parks).
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Subscribers in config order.
    pub fn iter(&self) -> impl Iterator<Item = (SubscriberId, &str)> + '_ {
        (0..=u16::MAX)
            .map(SubscriberId)
            .zip(&self.subscribers)
            .map(|(id, sub)| (id, &*sub.name))
    }

    /// The distributor IDs the subscriber listed. Panics if `id` is not from this table.
    pub fn distributor_ids(&self, id: SubscriberId) -> &[DistributorId] {
        &self.subscriber(id).distributor_ids
    }

    /// The push receiver URL, for subscribers in push mode. Panics if `id` is not from this
    /// table.
    pub fn push_endpoint(&self, id: SubscriberId) -> Option<&str> {
        self.subscriber(id).push_endpoint.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PushConfig, SubscriberConfig};

    fn table() -> RoutingTable {
        let mut config = RoutingConfig::default();
        config.subscribers.push(SubscriberConfig {
            name: "idno-direct".into(),
            distributor_ids: vec![DistributorId(27)],
            push: Some(PushConfig {
                endpoint: "http://127.0.0.1:50061".into(),
                ca: None,
                domain: None,
            }),
        });
        RoutingTable::from_config(&config)
    }

    #[test]
    fn accessors_follow_config_order() {
        let table = table();
        assert_eq!(table.len(), 7);
        assert!(!table.is_empty());
        let names: Vec<&str> = table.iter().map(|(_, name)| name).collect();
        assert_eq!(
            names,
            ["ukpn", "nged", "spen", "ssen", "npg", "enwl", "idno-direct"]
        );
        let direct = table.id_of("idno-direct").expect("configured");
        assert_eq!(direct, SubscriberId(6));
        assert_eq!(table.name(direct), "idno-direct");
        assert_eq!(&*table.name_arc(direct), "idno-direct");
        assert_eq!(table.distributor_ids(direct), [DistributorId(27)]);
        assert_eq!(table.push_endpoint(direct), Some("http://127.0.0.1:50061"));
        assert_eq!(table.push_endpoint(SubscriberId(0)), None);
        assert_eq!(table.id_of("nobody"), None);
    }

    #[test]
    fn ids_below_ten_and_unowned_areas_have_no_subscriber() {
        let mut config = RoutingConfig::default();
        config.subscribers.retain(|sub| sub.name != "enwl");
        let table = RoutingTable::from_config(&config);
        for id in [0, 9, 16] {
            assert_eq!(
                table.subscriber_for(DistributorId(id), None),
                Err(ParkReason::NoSubscriber(DistributorId(id)))
            );
        }
        // An IDNO hosted in the unowned area parks too.
        let gsp_g = GspGroup::of_area(DistributorId(16));
        assert_eq!(
            table.subscriber_for(DistributorId(30), gsp_g),
            Err(ParkReason::NoSubscriber(DistributorId(30)))
        );
    }

    #[test]
    fn an_empty_table_parks_everything() {
        let table = RoutingTable::from_config(&RoutingConfig {
            subscribers: Vec::new(),
            idno_subscriber: None,
        });
        assert!(table.is_empty());
        assert_eq!(
            table.subscriber_for(DistributorId(12), None),
            Err(ParkReason::NoSubscriber(DistributorId(12)))
        );
    }
}
