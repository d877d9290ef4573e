//! The ten canonical statuses of an order, in lifecycle order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A canonical order status. The derived order is the lifecycle order, so `a < b` means
/// `a` comes before `b` in the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Initiated,
    FileUploaded,
    Submitted,
    PriceCalculated,
    ManufacturingApproved,
    ManufacturingStarted,
    ManufacturingCompleted,
    Packaging,
    Shipped,
    Closed,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 10] = [
        Status::Initiated,
        Status::FileUploaded,
        Status::Submitted,
        Status::PriceCalculated,
        Status::ManufacturingApproved,
        Status::ManufacturingStarted,
        Status::ManufacturingCompleted,
        Status::Packaging,
        Status::Shipped,
        Status::Closed,
    ];

    /// The canonical name, as it appears on the wire and in the truth file.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Initiated => "INITIATED",
            Status::FileUploaded => "FILE_UPLOADED",
            Status::Submitted => "SUBMITTED",
            Status::PriceCalculated => "PRICE_CALCULATED",
            Status::ManufacturingApproved => "MANUFACTURING_APPROVED",
            Status::ManufacturingStarted => "MANUFACTURING_STARTED",
            Status::ManufacturingCompleted => "MANUFACTURING_COMPLETED",
            Status::Packaging => "PACKAGING",
            Status::Shipped => "SHIPPED",
            Status::Closed => "CLOSED",
        }
    }

    /// The canonical status a MES state name stands for (`QUEUED` stands for none).
    pub fn from_mes_state(state: &str) -> Option<Status> {
        match state {
            "PRICED" => Some(Status::PriceCalculated),
            "IN_WORK" => Some(Status::ManufacturingStarted),
            "DONE" => Some(Status::ManufacturingCompleted),
            "PACKING" => Some(Status::Packaging),
            "DISPATCHED" => Some(Status::Shipped),
            "CLOSED" => Some(Status::Closed),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the ten canonical statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?}: expected one of INITIATED … CLOSED")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_str_and_serde() {
        for st in Status::ALL {
            assert_eq!(st.as_str().parse::<Status>(), Ok(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
        }
        assert!("SHIPPING".parse::<Status>().is_err());
    }

    #[test]
    fn lifecycle_order_is_the_walk() {
        assert!(Status::ALL.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            Status::from_mes_state("DONE"),
            Some(Status::ManufacturingCompleted)
        );
        assert_eq!(Status::from_mes_state("CLOSED"), Some(Status::Closed));
        assert_eq!(Status::from_mes_state("QUEUED"), None);
    }
}
