//! The fault kinds of the contract's fault table, and `--faults` specs.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::service::Service;
use crate::status::Status;

/// Header that tells a service (and the services it calls for the same order) which fault to
/// play. The driver sets it; each service forwards it on the calls it makes for that order.
pub const FAULT_HEADER: &str = "x-testbed-fault";

/// One row of the fault table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    SessionHung,
    DuplicateOrder,
    CreatedNotSaved,
    UploadStorageFull,
    UploadTimeout,
    SubmitDbError,
    PricingNoAnswer,
    PricingAfterChange,
    PricedOrderDropped,
    PricedOrderReturned,
    WorkOrderDropped,
    WorkOrderUnacked,
    OperatorNeverStarted,
    #[serde(rename = "completion_500")]
    Completion500,
    CompletionLost,
    PackagingNotRecorded,
    PackagingSkipped,
    ShippingUnavailable,
    CarrierWebhookLost,
}

/// What the monitor should raise for a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detection {
    Stuck,
    PossibleDuplicate,
    Vanished,
    FailedStep,
    LostInTransit,
    Backwards,
    Skipped,
}

impl FaultKind {
    pub const ALL: [FaultKind; 19] = [
        FaultKind::SessionHung,
        FaultKind::DuplicateOrder,
        FaultKind::CreatedNotSaved,
        FaultKind::UploadStorageFull,
        FaultKind::UploadTimeout,
        FaultKind::SubmitDbError,
        FaultKind::PricingNoAnswer,
        FaultKind::PricingAfterChange,
        FaultKind::PricedOrderDropped,
        FaultKind::PricedOrderReturned,
        FaultKind::WorkOrderDropped,
        FaultKind::WorkOrderUnacked,
        FaultKind::OperatorNeverStarted,
        FaultKind::Completion500,
        FaultKind::CompletionLost,
        FaultKind::PackagingNotRecorded,
        FaultKind::PackagingSkipped,
        FaultKind::ShippingUnavailable,
        FaultKind::CarrierWebhookLost,
    ];

    /// The contract's name of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::SessionHung => "session_hung",
            FaultKind::DuplicateOrder => "duplicate_order",
            FaultKind::CreatedNotSaved => "created_not_saved",
            FaultKind::UploadStorageFull => "upload_storage_full",
            FaultKind::UploadTimeout => "upload_timeout",
            FaultKind::SubmitDbError => "submit_db_error",
            FaultKind::PricingNoAnswer => "pricing_no_answer",
            FaultKind::PricingAfterChange => "pricing_after_change",
            FaultKind::PricedOrderDropped => "priced_order_dropped",
            FaultKind::PricedOrderReturned => "priced_order_returned",
            FaultKind::WorkOrderDropped => "work_order_dropped",
            FaultKind::WorkOrderUnacked => "work_order_unacked",
            FaultKind::OperatorNeverStarted => "operator_never_started",
            FaultKind::Completion500 => "completion_500",
            FaultKind::CompletionLost => "completion_lost",
            FaultKind::PackagingNotRecorded => "packaging_not_recorded",
            FaultKind::PackagingSkipped => "packaging_skipped",
            FaultKind::ShippingUnavailable => "shipping_unavailable",
            FaultKind::CarrierWebhookLost => "carrier_webhook_lost",
        }
    }

    /// Whether `--faults` can ask for the kind. `duplicate_order` cannot: it is the second
    /// order of a `session_hung` pair.
    pub fn injectable(self) -> bool {
        self != FaultKind::DuplicateOrder
    }

    /// The `detection`, `step` and `service` columns of the fault table.
    pub fn table_row(self) -> (Detection, Status, Service) {
        use Detection as D;
        use FaultKind as K;
        use Status as S;
        match self {
            K::SessionHung => (D::Stuck, S::FileUploaded, Service::Shop),
            K::DuplicateOrder => (D::PossibleDuplicate, S::Initiated, Service::Shop),
            K::CreatedNotSaved => (D::Vanished, S::FileUploaded, Service::Shop),
            K::UploadStorageFull | K::UploadTimeout => {
                (D::FailedStep, S::FileUploaded, Service::Shop)
            }
            K::SubmitDbError => (D::FailedStep, S::Submitted, Service::Shop),
            K::PricingNoAnswer | K::PricingAfterChange => {
                (D::FailedStep, S::PriceCalculated, Service::Mes)
            }
            K::PricedOrderDropped => (D::LostInTransit, S::ManufacturingApproved, Service::Crm),
            K::PricedOrderReturned => (D::FailedStep, S::ManufacturingApproved, Service::Queue),
            K::WorkOrderDropped | K::WorkOrderUnacked => {
                (D::LostInTransit, S::ManufacturingStarted, Service::Mes)
            }
            K::OperatorNeverStarted => (D::Stuck, S::ManufacturingStarted, Service::Mes),
            K::Completion500 => (D::FailedStep, S::ManufacturingCompleted, Service::Mes),
            K::CompletionLost => (D::Backwards, S::ManufacturingCompleted, Service::Mes),
            K::PackagingNotRecorded => (D::Stuck, S::Packaging, Service::Mes),
            K::PackagingSkipped => (D::Skipped, S::Packaging, Service::Mes),
            K::ShippingUnavailable => (D::FailedStep, S::Shipped, Service::Mes),
            K::CarrierWebhookLost => (D::Stuck, S::Closed, Service::Crm),
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| FaultSpecError::UnknownKind(s.to_owned()))
    }
}

/// A `--faults` value that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FaultSpecError {
    #[error("unknown fault kind {0:?}; see the fault table in docs/contracts.md")]
    UnknownKind(String),
    #[error("fault entry {0:?} is not kind=rate (e.g. upload_timeout=0.05 or all=0.05)")]
    Syntax(String),
    #[error("fault rate {0:?} must be a number from 0 to 1")]
    Rate(String),
    #[error("duplicate_order cannot be asked for: it is the second order of a session_hung pair")]
    NotInjectable,
    #[error("fault rates add up to {0}, more than 1 (an order gets at most one fault)")]
    Total(f64),
}

/// Per-kind fault rates. Each order draws at most one fault: kind k with probability
/// `rate(k)`, none with the rest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSpec {
    rates: Vec<(FaultKind, f64)>,
}

impl FaultSpec {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// The rate of one kind.
    pub fn rate(&self, kind: FaultKind) -> f64 {
        self.rates
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0.0, |(_, r)| *r)
    }

    /// Draws the fault of one order (or none).
    pub fn pick(&self, rng: &mut impl Rng) -> Option<FaultKind> {
        let mut u: f64 = rng.random();
        for &(kind, rate) in &self.rates {
            if u < rate {
                return Some(kind);
            }
            u -= rate;
        }
        None
    }

    fn set(&mut self, kind: FaultKind, rate: f64) {
        self.rates.retain(|(k, _)| *k != kind);
        if rate > 0.0 {
            self.rates.push((kind, rate));
            self.rates.sort_by_key(|(k, _)| *k);
        }
    }
}

impl FromStr for FaultSpec {
    type Err = FaultSpecError;

    /// `kind=rate,…`; `all=rate` sets every injectable kind, later entries override it;
    /// `none` or an empty string means no faults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = FaultSpec::none();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "none" {
                continue;
            }
            let (name, rate) = entry
                .split_once('=')
                .ok_or_else(|| FaultSpecError::Syntax(entry.to_owned()))?;
            let rate: f64 = rate
                .trim()
                .parse()
                .ok()
                .filter(|r: &f64| (0.0..=1.0).contains(r))
                .ok_or_else(|| FaultSpecError::Rate(rate.to_owned()))?;
            match name.trim() {
                "all" => {
                    for kind in FaultKind::ALL.into_iter().filter(|k| k.injectable()) {
                        spec.set(kind, rate);
                    }
                }
                other => {
                    let kind: FaultKind = other.parse()?;
                    if !kind.injectable() {
                        return Err(FaultSpecError::NotInjectable);
                    }
                    spec.set(kind, rate);
                }
            }
        }
        let total: f64 = spec.rates.iter().map(|(_, r)| r).sum();
        if total > 1.0 + 1e-9 {
            return Err(FaultSpecError::Total(total));
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn names_parse_back() {
        for kind in FaultKind::ALL {
            assert_eq!(kind.as_str().parse::<FaultKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
    }

    #[test]
    fn all_sets_every_injectable_kind_and_later_entries_override() {
        let spec: FaultSpec = "all=0.05, upload_timeout=0.1".parse().unwrap();
        assert_eq!(spec.rate(FaultKind::UploadTimeout), 0.1);
        assert_eq!(spec.rate(FaultKind::CarrierWebhookLost), 0.05);
        assert_eq!(spec.rate(FaultKind::DuplicateOrder), 0.0);
        assert_eq!("".parse::<FaultSpec>(), Ok(FaultSpec::none()));
        assert_eq!("none".parse::<FaultSpec>(), Ok(FaultSpec::none()));
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            "all=0.1".parse::<FaultSpec>(),
            Err(FaultSpecError::Total(_))
        ));
        assert!(matches!(
            "foo=0.1".parse::<FaultSpec>(),
            Err(FaultSpecError::UnknownKind(_))
        ));
        assert!(matches!(
            "upload_timeout".parse::<FaultSpec>(),
            Err(FaultSpecError::Syntax(_))
        ));
        assert!(matches!(
            "upload_timeout=2".parse::<FaultSpec>(),
            Err(FaultSpecError::Rate(_))
        ));
        assert_eq!(
            "duplicate_order=0.1".parse::<FaultSpec>(),
            Err(FaultSpecError::NotInjectable)
        );
    }

    #[test]
    fn pick_follows_the_rates() {
        let spec: FaultSpec = "completion_500=0.25".parse().unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let hits = (0..4000).filter(|_| spec.pick(&mut rng).is_some()).count();
        assert!((800..1200).contains(&hits), "{hits}");
        let full: FaultSpec = "all=0.05555555556".parse().unwrap();
        assert!((0..1000).all(|_| full.pick(&mut rng).is_some()));
    }
}
