//! The walk of one order: the customer, the seller, the MES operator, the carrier and the
//! operators' status screens, each step after a think time, with the order's fault played.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::faults::{FAULT_HEADER, FaultKind, FaultSpec};
use crate::queue::{Delivery, PRICED_ORDERS, WORK_ORDERS};
use crate::service::{Endpoints, Service};
use crate::status::Status;
use crate::timings::Timings;
use crate::truth::{FaultRecord, TruthRecord};

/// Smallest and largest model file a customer uploads.
const MODEL_BYTES: (usize, usize) = (200 << 10, 4 << 20);
/// How often the driver asks the queue whether a message went through.
const DELIVERY_POLL: Duration = Duration::from_millis(20);
/// Share of orders the seller closes by hand instead of the carrier's webhook.
const CLOSED_BY_HAND: f64 = 0.2;
const CARRIERS: [&str; 3] = ["DHL", "UPS", "FedEx"];
const SKUS: [&str; 5] = [
    "RING-SOLITAIRE",
    "RING-BAND",
    "PENDANT-HEART",
    "EARRING-HOOP",
    "BRACELET-LINK",
];

/// What the driver shares between the walks of one run.
pub struct Walker {
    client: reqwest::Client,
    endpoints: Endpoints,
    timings: Timings,
    seed: u64,
    faults: FaultSpec,
    /// One model file; each upload sends a prefix of it, without copying.
    model: Bytes,
}

/// The end of one order's walk: its truth record(s) (two for a hung session), and what
/// went wrong if the systems did not behave as the walk expected.
pub struct WalkOutcome {
    pub records: Vec<TruthRecord>,
    pub error: Option<String>,
}

impl Walker {
    pub fn new(
        client: reqwest::Client,
        endpoints: Endpoints,
        timings: Timings,
        seed: u64,
        faults: FaultSpec,
    ) -> Self {
        let mut model = vec![0u8; MODEL_BYTES.1];
        ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut model);
        Walker {
            client,
            endpoints,
            timings,
            seed,
            faults,
            model: Bytes::from(model),
        }
    }

    /// Walks order number `index` of the run. Deterministic per (seed, index).
    pub async fn walk(&self, index: u64) -> WalkOutcome {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(index);
        let fault = self.faults.pick(&mut rng);
        let customer_id = format!("C-{index:06}");
        let cart_id = format!("CART-{:08x}-{index:06}", self.seed as u32);
        let items: Vec<Value> = (0..rng.random_range(1..=3))
            .map(|_| json!({ "sku": SKUS[rng.random_range(0..SKUS.len())], "quantity": rng.random_range(1..=2) }))
            .collect();
        let create = json!({ "customer_id": customer_id, "items": items, "cart_id": cart_id });
        let mut order = OrderWalk {
            w: self,
            rng,
            id: String::new(),
            reached: None,
            fault: None,
        };
        order.think().await;
        if fault == Some(FaultKind::SessionHung) {
            return order.hung_session(create).await;
        }
        let result = order.create(&create, fault).await;
        let result = match result {
            Ok(()) => order.after_create(fault).await,
            Err(e) => Err(e),
        };
        WalkOutcome {
            records: vec![order.record()],
            error: result.err(),
        }
    }

    fn url(&self, of: Service, path: &str) -> String {
        self.endpoints.url(of, path)
    }
}

#[derive(Deserialize)]
struct Created {
    order_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MesAnswer {
    state: String,
}

#[derive(Deserialize)]
struct QueueAnswer {
    state: Delivery,
}

/// Whether a phase of the walk left the order to go on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    GoOn,
    Stop,
}

struct OrderWalk<'a> {
    w: &'a Walker,
    rng: ChaCha8Rng,
    id: String,
    reached: Option<Status>,
    fault: Option<FaultRecord>,
}

impl OrderWalk<'_> {
    fn record(&self) -> TruthRecord {
        TruthRecord {
            order_id: self.id.clone(),
            final_status: self.reached,
            faults: self.fault.clone().into_iter().collect(),
        }
    }

    fn played(&mut self, kind: FaultKind) {
        self.fault = Some(FaultRecord::new(kind, OffsetDateTime::now_utc()));
    }

    async fn think(&mut self) {
        let t = &self.w.timings;
        let secs = self
            .rng
            .random_range(t.think_min().as_secs_f64()..=t.think_max().as_secs_f64());
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }

    /// Sends one request of the walk; `want` is the answer the step expects.
    async fn send(
        &self,
        step: &str,
        req: reqwest::RequestBuilder,
        want: StatusCode,
    ) -> Result<Bytes, String> {
        let req = req.timeout(self.w.timings.request_timeout());
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{step} of {}: no answer: {e}", self.id))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{step} of {}: body cut off: {e}", self.id))?;
        if status != want {
            return Err(format!(
                "{step} of {}: expected {want}, got {status}",
                self.id
            ));
        }
        Ok(body)
    }

    fn with_fault(
        req: reqwest::RequestBuilder,
        fault: Option<FaultKind>,
    ) -> reqwest::RequestBuilder {
        match fault {
            Some(kind) => req.header(FAULT_HEADER, kind.as_str()),
            None => req,
        }
    }

    /// Step 1 and the operator's look at the new order.
    async fn create(&mut self, body: &Value, fault: Option<FaultKind>) -> Result<(), String> {
        let w = self.w;
        let header_fault = fault.filter(|k| *k == FaultKind::CreatedNotSaved);
        let req = Self::with_fault(
            w.client
                .post(w.url(Service::Shop, "/api/v1/orders"))
                .json(body),
            header_fault,
        );
        let created: Created =
            serde_json::from_slice(&self.send("create", req, StatusCode::CREATED).await?)
                .map_err(|e| format!("create: answer without order_id: {e}"))?;
        self.id = created.order_id;
        self.reached = Some(Status::Initiated);
        self.think().await;
        let lookup = w
            .client
            .get(w.url(Service::Shop, &format!("/api/v1/orders/{}", self.id)));
        if fault == Some(FaultKind::CreatedNotSaved) {
            self.played(FaultKind::CreatedNotSaved);
            return self
                .send("shop lookup", lookup, StatusCode::NOT_FOUND)
                .await
                .map(drop);
        }
        self.send("shop lookup", lookup, StatusCode::OK)
            .await
            .map(drop)
    }

    /// A create answered only after the customer gave up; the customer tries again with the
    /// same cart, and that second order goes on.
    async fn hung_session(mut self, body: Value) -> WalkOutcome {
        let w = self.w;
        let first_req = Self::with_fault(
            w.client
                .post(w.url(Service::Shop, "/api/v1/orders"))
                .json(&body),
            Some(FaultKind::SessionHung),
        )
        .timeout(w.timings.request_timeout());
        let at = OffsetDateTime::now_utc();
        let mut first = tokio::spawn(async move {
            let resp = first_req
                .send()
                .await
                .map_err(|e| format!("hung create: no answer: {e}"))?;
            resp.json::<Created>()
                .await
                .map_err(|e| format!("hung create: bad answer: {e}"))
        });
        // The customer's patience; the shop answers after twice that.
        let gave_up = tokio::time::timeout(w.timings.create_timeout(), &mut first)
            .await
            .is_err();
        self.fault = Some(FaultRecord::new(
            FaultKind::DuplicateOrder,
            OffsetDateTime::now_utc(),
        ));
        let mut result = self.create(&body, None).await;
        if result.is_ok() {
            result = self.after_create(None).await;
        }
        let first_record = match first.await {
            Ok(Ok(created)) => Ok(TruthRecord {
                order_id: created.order_id,
                final_status: Some(Status::Initiated),
                faults: vec![FaultRecord::new(FaultKind::SessionHung, at)],
            }),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("hung create: {e}")),
        };
        let mut records = Vec::new();
        let mut error = result.err();
        match first_record {
            Ok(record) => records.push(record),
            Err(e) => error = Some(e),
        }
        if !gave_up {
            error = Some("hung create was answered before the customer gave up".into());
        }
        records.push(self.record());
        WalkOutcome { records, error }
    }

    /// Steps 2 to 14, phase by phase, until the order's fault stops it.
    async fn after_create(&mut self, fault: Option<FaultKind>) -> Result<(), String> {
        if fault == Some(FaultKind::CreatedNotSaved)
            || self.shop_steps(fault).await? == Flow::Stop
            || self.sales_steps(fault).await? == Flow::Stop
            || self.factory_steps(fault).await? == Flow::Stop
        {
            return Ok(());
        }
        self.delivery_steps(fault).await
    }

    /// The customer uploads and submits; the shop gets the price from the MES.
    async fn shop_steps(&mut self, fault: Option<FaultKind>) -> Result<Flow, String> {
        use FaultKind as K;
        let w = self.w;
        let id = self.id.clone();
        let shop = |path: &str| w.url(Service::Shop, &format!("/api/v1/orders/{id}{path}"));

        self.think().await;
        let size = self.rng.random_range(MODEL_BYTES.0..=MODEL_BYTES.1);
        let upload_fault = fault.filter(|k| matches!(k, K::UploadStorageFull | K::UploadTimeout));
        let req = w
            .client
            .put(shop("/model"))
            .header("content-type", "application/octet-stream")
            .body(w.model.slice(..size));
        let req = Self::with_fault(req, upload_fault);
        if let Some(kind) = upload_fault {
            self.played(kind);
            let want = if kind == K::UploadStorageFull {
                StatusCode::INSUFFICIENT_STORAGE
            } else {
                StatusCode::GATEWAY_TIMEOUT
            };
            return self.send("upload", req, want).await.map(|_| Flow::Stop);
        }
        self.send("upload", req, StatusCode::OK).await?;
        self.reached = Some(Status::FileUploaded);

        self.think().await;
        let submit_fault = fault.filter(|k| {
            matches!(
                k,
                K::SubmitDbError
                    | K::PricingNoAnswer
                    | K::PricingAfterChange
                    | K::PricedOrderDropped
                    | K::PricedOrderReturned
            )
        });
        let req = Self::with_fault(w.client.post(shop("/submit")), submit_fault);
        if fault == Some(K::SubmitDbError) {
            self.played(K::SubmitDbError);
            return self
                .send("submit", req, StatusCode::INTERNAL_SERVER_ERROR)
                .await
                .map(|_| Flow::Stop);
        }
        self.send("submit", req, StatusCode::OK).await?;
        self.reached = Some(Status::Submitted);
        match fault {
            Some(kind @ (K::PricingNoAnswer | K::PricingAfterChange)) => {
                self.played(kind);
                // Let the shop's pricing call end (by its timeout) while the services run.
                let wait = if kind == K::PricingNoAnswer {
                    w.timings.pricing_timeout()
                } else {
                    Duration::ZERO
                };
                tokio::time::sleep(wait + w.timings.think_max()).await;
                return Ok(Flow::Stop);
            }
            Some(kind @ (K::PricedOrderDropped | K::PricedOrderReturned)) => {
                // Dropped: the broker confirmed it and no consumer ever sees it.
                let seen = if kind == K::PricedOrderDropped {
                    Delivery::Confirmed
                } else {
                    Delivery::Returned
                };
                self.await_delivery(PRICED_ORDERS, seen).await?;
                self.reached = Some(Status::PriceCalculated);
                self.played(kind);
                return Ok(Flow::Stop);
            }
            _ => {}
        }
        self.await_delivery(PRICED_ORDERS, Delivery::Delivered)
            .await?;
        self.reached = Some(Status::PriceCalculated);
        Ok(Flow::GoOn)
    }

    /// The seller approves the deal; the CRM sends the work order to the MES.
    async fn sales_steps(&mut self, fault: Option<FaultKind>) -> Result<Flow, String> {
        use FaultKind as K;
        let w = self.w;
        let id = self.id.clone();
        self.think().await;
        let approve_fault =
            fault.filter(|k| matches!(k, K::WorkOrderDropped | K::WorkOrderUnacked));
        let crm_deal = |path: &str| w.url(Service::Crm, &format!("/crm/v1/deals/{id}{path}"));
        let req = Self::with_fault(w.client.post(crm_deal("/approve")), approve_fault);
        self.send("approve", req, StatusCode::OK).await?;
        self.reached = Some(Status::ManufacturingApproved);
        if let Some(kind @ (K::WorkOrderDropped | K::WorkOrderUnacked)) = fault {
            // Dropped: confirmed, never delivered; unacked: delivered, never handled.
            let seen = if kind == K::WorkOrderDropped {
                Delivery::Confirmed
            } else {
                Delivery::Held
            };
            self.await_delivery(WORK_ORDERS, seen).await?;
            self.played(kind);
            return Ok(Flow::Stop);
        }
        self.await_delivery(WORK_ORDERS, Delivery::Delivered)
            .await?;
        Ok(Flow::GoOn)
    }

    /// The MES operator starts, completes (and checks), packs and ships the order.
    async fn factory_steps(&mut self, fault: Option<FaultKind>) -> Result<Flow, String> {
        use FaultKind as K;
        let w = self.w;
        self.think().await;
        if fault == Some(K::OperatorNeverStarted) {
            self.played(K::OperatorNeverStarted);
            return Ok(Flow::Stop);
        }
        self.transition("start", json!({ "to": "IN_WORK" }), None, StatusCode::OK)
            .await?;
        self.reached = Some(Status::ManufacturingStarted);

        self.think().await;
        let done_fault = fault.filter(|k| matches!(k, K::Completion500 | K::CompletionLost));
        if fault == Some(K::Completion500) {
            self.played(K::Completion500);
            let want = StatusCode::INTERNAL_SERVER_ERROR;
            return self
                .transition("complete", json!({ "to": "DONE" }), done_fault, want)
                .await
                .map(|()| Flow::Stop);
        }
        self.transition(
            "complete",
            json!({ "to": "DONE" }),
            done_fault,
            StatusCode::OK,
        )
        .await?;
        self.think().await;
        let lookup = w
            .client
            .get(w.url(Service::Mes, &format!("/mes/api/work-orders/{}", self.id)));
        let seen: MesAnswer =
            serde_json::from_slice(&self.send("MES lookup", lookup, StatusCode::OK).await?)
                .map_err(|e| format!("MES lookup of {}: bad answer: {e}", self.id))?;
        if fault == Some(K::CompletionLost) {
            self.played(K::CompletionLost);
            return match seen.state.as_str() {
                "IN_WORK" => Ok(Flow::Stop),
                other => Err(format!(
                    "MES lookup of {} after a lost completion: {other}",
                    self.id
                )),
            };
        }
        if seen.state != "DONE" {
            return Err(format!(
                "MES lookup of {} after DONE says {}",
                self.id, seen.state
            ));
        }
        self.reached = Some(Status::ManufacturingCompleted);

        self.think().await;
        match fault {
            Some(K::PackagingNotRecorded) => {
                self.played(K::PackagingNotRecorded);
                return Ok(Flow::Stop);
            }
            Some(K::PackagingSkipped) => self.played(K::PackagingSkipped),
            _ => {
                self.transition("package", json!({ "to": "PACKING" }), None, StatusCode::OK)
                    .await?;
                self.reached = Some(Status::Packaging);
                self.think().await;
            }
        }
        let carrier = CARRIERS[self.rng.random_range(0..CARRIERS.len())];
        let dispatch = json!({ "to": "DISPATCHED", "carrier": carrier });
        if fault == Some(K::ShippingUnavailable) {
            self.played(K::ShippingUnavailable);
            let want = StatusCode::SERVICE_UNAVAILABLE;
            return self
                .transition("ship", dispatch, fault, want)
                .await
                .map(|()| Flow::Stop);
        }
        self.transition("ship", dispatch, None, StatusCode::OK)
            .await?;
        self.reached = Some(Status::Shipped);
        Ok(Flow::GoOn)
    }

    /// Delivery closes the deal: the carrier's webhook, or the seller by hand.
    async fn delivery_steps(&mut self, fault: Option<FaultKind>) -> Result<(), String> {
        let w = self.w;
        let id = self.id.clone();
        let crm_deal = |path: &str| w.url(Service::Crm, &format!("/crm/v1/deals/{id}{path}"));
        self.think().await;
        if fault == Some(FaultKind::CarrierWebhookLost) {
            self.played(FaultKind::CarrierWebhookLost);
            return Ok(());
        }
        let req = if self.rng.random_bool(CLOSED_BY_HAND) {
            w.client.post(crm_deal("/close"))
        } else {
            let event = json!({ "shipment": { "order_ref": self.id, "event": "DELIVERED" } });
            w.client
                .post(w.url(Service::Crm, "/crm/v1/webhooks/carrier"))
                .json(&event)
        };
        self.send("close", req, StatusCode::OK).await?;
        self.reached = Some(Status::Closed);
        self.think().await;
        self.send("CRM lookup", w.client.get(crm_deal("")), StatusCode::OK)
            .await
            .map(drop)
    }

    async fn transition(
        &self,
        step: &str,
        body: Value,
        fault: Option<FaultKind>,
        want: StatusCode,
    ) -> Result<(), String> {
        let w = self.w;
        let url = w.url(
            Service::Mes,
            &format!("/mes/api/work-orders/{}/transitions", self.id),
        );
        let req = Self::with_fault(w.client.post(url).json(&body), fault);
        self.send(step, req, want).await.map(drop)
    }

    /// Waits until the queue process reports `want` for this order's message on `topic`
    /// (what the publisher and the consumer told it). It is not traced, so this adds nothing
    /// to the traced wire.
    async fn await_delivery(&self, topic: &str, want: Delivery) -> Result<(), String> {
        let w = self.w;
        let url = w.url(
            Service::Queue,
            &format!("/queue/v1/topics/{topic}/deliveries/{}", self.id),
        );
        let deadline = tokio::time::Instant::now() + w.timings.delivery_deadline();
        // Whether the publisher's confirm came tells a publisher that never reported from a
        // consumer that never got the message.
        let mut confirmed = false;
        loop {
            let resp = w
                .client
                .get(&url)
                .timeout(w.timings.request_timeout())
                .send()
                .await;
            if let Ok(resp) = resp
                && resp.status() == StatusCode::OK
                && let Ok(answer) = resp.json::<QueueAnswer>().await
            {
                if answer.state == want {
                    return Ok(());
                }
                // Only a confirm may still be followed by the consumer's word.
                confirmed = answer.state == Delivery::Confirmed;
                if !confirmed {
                    return Err(format!(
                        "{topic} message of {}: {:?}, expected {want:?}",
                        self.id, answer.state
                    ));
                }
            }
            if tokio::time::Instant::now() > deadline {
                let stuck = if confirmed {
                    "the broker confirmed it, its consumer reported nothing"
                } else {
                    "neither its publisher nor its consumer reported"
                };
                return Err(format!(
                    "{topic} message of {} never went through the queue ({stuck})",
                    self.id
                ));
            }
            tokio::time::sleep(DELIVERY_POLL).await;
        }
    }
}
