//! `--check`: what each service should say about an order, given the truth, and whether it
//! does (asked through the services' own status lookups).

use axum::http::StatusCode;
use serde::Deserialize;

use crate::faults::FaultKind;
use crate::mes::MesState;
use crate::service::{Endpoints, Service};
use crate::status::Status;
use crate::truth::TruthRecord;

/// What the three traced services answer to an order's lookup (`None`: `404`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceStates {
    pub shop: Option<Status>,
    pub mes: Option<MesState>,
    pub crm: Option<Status>,
}

/// What each service must hold for an order that really reached `record.final_status`.
/// Each system knows its own part of the walk: the shop up to the price, the MES up to
/// dispatch, the CRM from the deal's approval to its close; the CRM's close reaches all three.
pub fn expected_states(record: &TruthRecord) -> ServiceStates {
    use Status as S;
    let kind = record.faults.first().map(|f| f.kind);
    let Some(reached) = record
        .final_status
        .filter(|_| kind != Some(FaultKind::CreatedNotSaved))
    else {
        return ServiceStates {
            shop: None,
            mes: None,
            crm: None,
        };
    };
    let mes = match reached {
        S::Initiated | S::FileUploaded | S::Submitted => None,
        S::PriceCalculated => Some(MesState::Priced),
        S::ManufacturingApproved if kind == Some(FaultKind::OperatorNeverStarted) => {
            Some(MesState::Queued)
        }
        S::ManufacturingApproved => Some(MesState::Priced),
        S::ManufacturingStarted => Some(MesState::InWork),
        S::ManufacturingCompleted => Some(MesState::Done),
        S::Packaging => Some(MesState::Packing),
        S::Shipped => Some(MesState::Dispatched),
        S::Closed => Some(MesState::Closed),
    };
    let crm = match reached {
        S::Closed => Some(S::Closed),
        r if r >= S::ManufacturingApproved => Some(S::ManufacturingApproved),
        _ => None,
    };
    ServiceStates {
        shop: Some(match reached {
            S::Closed => S::Closed,
            r => r.min(S::PriceCalculated),
        }),
        mes,
        crm,
    }
}

#[derive(Deserialize)]
struct ShopAnswer {
    status: Status,
}

#[derive(Deserialize)]
struct MesAnswer {
    state: MesState,
}

#[derive(Deserialize)]
struct CrmAnswer {
    deal: CrmDeal,
}

#[derive(Deserialize)]
struct CrmDeal {
    order: CrmOrder,
}

#[derive(Deserialize)]
struct CrmOrder {
    status: Status,
}

async fn lookup<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: String,
) -> Result<Option<T>, String> {
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    match resp.status() {
        StatusCode::NOT_FOUND => Ok(None),
        StatusCode::OK => resp
            .json()
            .await
            .map(Some)
            .map_err(|e| format!("GET {url}: {e}")),
        other => Err(format!("GET {url}: {other}")),
    }
}

/// Asks the three services about one order.
pub async fn observe(
    client: &reqwest::Client,
    endpoints: Endpoints,
    id: &str,
) -> Result<ServiceStates, String> {
    let shop: Option<ShopAnswer> = lookup(
        client,
        endpoints.url(Service::Shop, &format!("/api/v1/orders/{id}")),
    )
    .await?;
    let mes: Option<MesAnswer> = lookup(
        client,
        endpoints.url(Service::Mes, &format!("/mes/api/work-orders/{id}")),
    )
    .await?;
    let crm: Option<CrmAnswer> = lookup(
        client,
        endpoints.url(Service::Crm, &format!("/crm/v1/deals/{id}")),
    )
    .await?;
    Ok(ServiceStates {
        shop: shop.map(|a| a.status),
        mes: mes.map(|a| a.state),
        crm: crm.map(|a| a.deal.order.status),
    })
}

/// Compares every order's truth with the services' answers; returns one line per mismatch.
pub async fn check(
    client: &reqwest::Client,
    endpoints: Endpoints,
    records: &[TruthRecord],
) -> Vec<String> {
    let mut mismatches = Vec::new();
    for record in records {
        let want = expected_states(record);
        match observe(client, endpoints, &record.order_id).await {
            Ok(seen) if seen == want => {}
            Ok(seen) => mismatches.push(format!(
                "{}: truth {:?} (fault {:?}) wants {want:?}, services say {seen:?}",
                record.order_id,
                record.final_status,
                record.faults.first().map(|f| f.kind)
            )),
            Err(e) => mismatches.push(format!("{}: {e}", record.order_id)),
        }
    }
    mismatches
}
