//! The `[lifecycle]` section: the status machine, its limits and the transits to watch.

use serde::Deserialize;

/// One status of the lifecycle, in the order an order walks through them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Canonical status name, as the rules put it in `order.status`.
    pub name: String,
    /// The service that moves an order *into* this status: it is blamed when an order does not
    /// reach it (a `stuck` detection names the status not reached and this service).
    pub service: String,
    /// How long an order may stay in this status before it is `stuck`; absent for the final
    /// status and for statuses that may last forever.
    #[serde(default)]
    pub stuck_after_secs: Option<f64>,
}

/// A hand-over between two services through something the tracer cannot see (a broker): the
/// sender's successful client or producer span (or the order reaching a status) must be
/// followed by the receiver's span within `limit_secs`. A receiver's consumer span that was
/// never acknowledged (the consumer took the message and never handled it) counts as lost.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransitConfig {
    /// `order.rule` of the sender's successful client or producer span (e.g.
    /// `queue.publish_priced`).
    #[serde(default)]
    pub from_rule: Option<String>,
    /// Or: the status whose reaching starts the hand-over (e.g. `SHIPPED`: the CRM must hear
    /// of the shipment, whatever carries it). Exactly one of `from_rule` and `from_status`.
    #[serde(default)]
    pub from_status: Option<String>,
    /// `order.rule` of the receiver's span (e.g. `crm.receive_deal`).
    pub to_rule: String,
    /// The status the order cannot reach when the hand-over is lost.
    pub step: String,
    /// The receiving service, named in the detection.
    pub service: String,
    pub limit_secs: f64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {
    /// The statuses in their allowed order; the first is where orders start, the last closes
    /// them. Defaults to the shop's ten statuses.
    pub statuses: Vec<StatusConfig>,
    pub transits: Vec<TransitConfig>,
    /// A failed step is reported only when no retry reached the step within this grace.
    pub retry_grace_secs: f64,
    /// A creation (a span carrying `order.key`) that took at least this long, or whose client
    /// gave up, is "hung": the customer may have created the order again.
    pub hung_creation_secs: f64,
    /// A second creation with the same key this soon after a hung one is a possible duplicate.
    pub duplicate_window_secs: f64,
    /// Spans are applied in end-time order after waiting this long for stragglers: exchange
    /// spans of one order come from several services and exporters batch them.
    pub reorder_secs: f64,
    /// An order with no activity for this long is given up: its root span ends and its open
    /// detections are resolved. Closed orders are kept this long for late lookups too.
    pub order_expiry_secs: f64,
    /// Orders kept in memory; over this, the least recently active one is given up (counted).
    pub max_orders: usize,
    /// Spans waiting in the reorder buffer; over this, the oldest are applied early.
    pub max_buffered_spans: usize,
}

const HOUR: f64 = 3600.0;
const DAY: f64 = 24.0 * HOUR;

impl Default for LifecycleConfig {
    fn default() -> Self {
        // The seed's lifecycle; limits are a starting point for a real shop, not a promise.
        let status = |name: &str, service: &str, stuck: Option<f64>| StatusConfig {
            name: name.to_string(),
            service: service.to_string(),
            stuck_after_secs: stuck,
        };
        Self {
            statuses: vec![
                status("INITIATED", "shop-api", Some(HOUR)),
                status("FILE_UPLOADED", "shop-api", Some(HOUR)),
                status("SUBMITTED", "shop-api", Some(HOUR)),
                status("PRICE_CALCULATED", "mes-api", Some(DAY)),
                status("MANUFACTURING_APPROVED", "crm-api", Some(DAY)),
                status("MANUFACTURING_STARTED", "mes-api", Some(3.0 * DAY)),
                status("MANUFACTURING_COMPLETED", "mes-api", Some(DAY)),
                status("PACKAGING", "mes-api", Some(DAY)),
                status("SHIPPED", "mes-api", Some(14.0 * DAY)),
                status("CLOSED", "crm-api", None),
            ],
            transits: vec![
                TransitConfig {
                    from_rule: Some("queue.publish_priced".into()),
                    from_status: None,
                    to_rule: "crm.receive_deal".into(),
                    step: "MANUFACTURING_APPROVED".into(),
                    service: "crm-api".into(),
                    limit_secs: 15.0 * 60.0,
                },
                TransitConfig {
                    from_rule: Some("queue.publish_work_order".into()),
                    from_status: None,
                    to_rule: "mes.receive_work_order".into(),
                    step: "MANUFACTURING_STARTED".into(),
                    service: "mes-api".into(),
                    limit_secs: 15.0 * 60.0,
                },
            ],
            retry_grace_secs: 60.0,
            hung_creation_secs: 30.0,
            duplicate_window_secs: 15.0 * 60.0,
            reorder_secs: 2.0,
            order_expiry_secs: 60.0 * DAY,
            max_orders: 1_000_000,
            max_buffered_spans: 100_000,
        }
    }
}

impl LifecycleConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.statuses.len() < 2 {
            return Err("[lifecycle] statuses: list at least two statuses, first to last".into());
        }
        for (i, status) in self.statuses.iter().enumerate() {
            if status.name.is_empty() || status.service.is_empty() {
                return Err(format!(
                    "[lifecycle] statuses[{i}]: give both `name` and `service`"
                ));
            }
            if self.statuses[..i].iter().any(|s| s.name == status.name) {
                return Err(format!(
                    "[lifecycle] status {} is listed twice; each status appears once",
                    status.name
                ));
            }
            if let Some(limit) = status.stuck_after_secs {
                positive(&format!("statuses.{}.stuck_after_secs", status.name), limit)?;
            }
        }
        for transit in &self.transits {
            let from = match (&transit.from_rule, &transit.from_status) {
                (Some(rule), None) => rule,
                (None, Some(status)) => {
                    if self.index_of(status).is_none() {
                        return Err(format!(
                            "[lifecycle] transit → {}: from_status {status} is not one of the statuses",
                            transit.to_rule
                        ));
                    }
                    status
                }
                _ => {
                    return Err(format!(
                        "[lifecycle] transit → {}: give exactly one of from_rule and from_status",
                        transit.to_rule
                    ));
                }
            };
            if self.index_of(&transit.step).is_none() {
                return Err(format!(
                    "[lifecycle] transit {from} → {}: step {} is not one of the statuses",
                    transit.to_rule, transit.step
                ));
            }
            if transit.from_rule.as_ref() == Some(&transit.to_rule) {
                return Err(format!(
                    "[lifecycle] transit {from}: from_rule and to_rule must differ"
                ));
            }
            positive("transits.limit_secs", transit.limit_secs)?;
        }
        positive("retry_grace_secs", self.retry_grace_secs)?;
        positive("hung_creation_secs", self.hung_creation_secs)?;
        positive("duplicate_window_secs", self.duplicate_window_secs)?;
        positive("order_expiry_secs", self.order_expiry_secs)?;
        if !(self.reorder_secs >= 0.0 && self.reorder_secs <= 60.0) {
            return Err("[lifecycle] reorder_secs: give 0 to 60 seconds".into());
        }
        if self.max_orders == 0 || self.max_buffered_spans == 0 {
            return Err("[lifecycle] max_orders and max_buffered_spans must be at least 1".into());
        }
        Ok(())
    }

    /// Position of a status in the lifecycle.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.statuses.iter().position(|s| s.name == name)
    }

    pub fn is_final(&self, index: usize) -> bool {
        index + 1 == self.statuses.len()
    }
}

fn positive(field: &str, value: f64) -> Result<(), String> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(format!(
            "[lifecycle] {field}: give a positive number of seconds"
        ))
    }
}

/// Seconds (config) to nanoseconds (span clocks).
pub(crate) fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_has_the_ten_statuses() {
        let config = LifecycleConfig::default();
        config.validate().unwrap();
        assert_eq!(config.statuses.len(), 10);
        assert_eq!(config.index_of("SHIPPED"), Some(8));
    }

    #[test]
    fn bad_sections_say_what_to_fix() {
        let mut config = LifecycleConfig::default();
        config.transits[0].step = "NOPE".into();
        assert!(config.validate().unwrap_err().contains("NOPE"));
        let mut config = LifecycleConfig::default();
        config.statuses[3].stuck_after_secs = Some(-1.0);
        assert!(config.validate().unwrap_err().contains("PRICE_CALCULATED"));
        let mut config = LifecycleConfig::default();
        config.statuses.push(config.statuses[0].clone());
        assert!(config.validate().unwrap_err().contains("twice"));
        let mut config = LifecycleConfig::default();
        config.transits[0].from_status = Some("SHIPPED".into());
        assert!(config.validate().unwrap_err().contains("exactly one"));
        config.transits[0].from_rule = None;
        config.validate().unwrap();
        config.transits[0].from_status = Some("NOPE".into());
        assert!(config.validate().unwrap_err().contains("NOPE"));
    }
}
