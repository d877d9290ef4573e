//! Synthetic exchange spans per docs/contracts.md §2, and the walk of one order (§1) bent by
//! each fault of the table. Shared by the lifecycle's unit tests and the monitor's
//! integration tests (included with `#[path]`); the includer imports `SpanRecord`,
//! `SpanKind`, `SpanStatus`, `AttrValue`, `Attributes`, `order_trace_id` and
//! `order_root_span_id`.

use super::*;

/// Every fault kind of the table, with the detection it must yield (kind, step, service).
/// `session_hung` and `duplicate_order` are a pair of orders: see [`hung_pair`].
pub const FAULTS: [(&str, &str, &str, &str); 17] = [
    ("created_not_saved", "vanished", "FILE_UPLOADED", "shop-api"),
    (
        "upload_storage_full",
        "failed_step",
        "FILE_UPLOADED",
        "shop-api",
    ),
    ("upload_timeout", "failed_step", "FILE_UPLOADED", "shop-api"),
    ("submit_db_error", "failed_step", "SUBMITTED", "shop-api"),
    (
        "pricing_no_answer",
        "failed_step",
        "PRICE_CALCULATED",
        "mes-api",
    ),
    (
        "pricing_after_change",
        "failed_step",
        "PRICE_CALCULATED",
        "mes-api",
    ),
    (
        "priced_order_dropped",
        "lost_in_transit",
        "MANUFACTURING_APPROVED",
        "crm-api",
    ),
    (
        "work_order_dropped",
        "lost_in_transit",
        "MANUFACTURING_STARTED",
        "mes-api",
    ),
    (
        "priced_order_returned",
        "failed_step",
        "MANUFACTURING_APPROVED",
        "order-queue",
    ),
    (
        "work_order_unacked",
        "lost_in_transit",
        "MANUFACTURING_STARTED",
        "mes-api",
    ),
    (
        "operator_never_started",
        "stuck",
        "MANUFACTURING_STARTED",
        "mes-api",
    ),
    (
        "completion_500",
        "failed_step",
        "MANUFACTURING_COMPLETED",
        "mes-api",
    ),
    (
        "completion_lost",
        "backwards",
        "MANUFACTURING_COMPLETED",
        "mes-api",
    ),
    ("packaging_not_recorded", "stuck", "PACKAGING", "mes-api"),
    ("packaging_skipped", "skipped", "PACKAGING", "mes-api"),
    ("shipping_unavailable", "failed_step", "SHIPPED", "mes-api"),
    ("carrier_webhook_lost", "stuck", "CLOSED", "crm-api"),
];

/// The `session_hung` / `duplicate_order` pair: the first creation hangs 4 s, the customer
/// creates the second order 2.1 s after the first (same key) and goes on to CLOSED.
pub fn hung_pair(first: &str, second: &str, base: u64) -> Vec<SpanRecord> {
    let mut spans = walk(first, Some("session_hung"), base);
    let mut retry = walk(second, None, base + 2_100_000_000);
    // Same customer, same cart: the same duplicate key.
    retry[0].attributes.insert(
        "order.key".into(),
        AttrValue::Str(format!("key-of-{first}")),
    );
    spans.extend(retry);
    spans
}

pub struct Span(pub SpanRecord, u64);

impl Span {
    pub fn new(
        order: &str,
        service: &str,
        kind: SpanKind,
        rule: &str,
        owner: &str,
        base: u64,
    ) -> Self {
        let mut attributes = Attributes::new();
        attributes.insert("order.id".into(), AttrValue::Str(order.into()));
        attributes.insert("order.rule".into(), AttrValue::Str(rule.into()));
        attributes.insert("order.owner".into(), AttrValue::Str(owner.into()));
        Span(
            SpanRecord {
                trace_id: order_trace_id(order),
                span_id: [7; 8],
                parent_span_id: Some(order_root_span_id(order)),
                links: Vec::new(),
                name: rule.into(),
                kind,
                start_unix_nano: 0,
                end_unix_nano: 0,
                status: SpanStatus::Unset,
                resource: Attributes::from([(
                    "service.name".into(),
                    AttrValue::Str(service.into()),
                )]),
                attributes,
                events: Vec::new(),
            },
            base,
        )
    }
    pub fn server(order: &str, service: &str, rule: &str, base: u64) -> Self {
        Self::new(order, service, SpanKind::Server, rule, service, base)
    }
    pub fn client(order: &str, service: &str, rule: &str, owner: &str, base: u64) -> Self {
        Self::new(order, service, SpanKind::Client, rule, owner, base)
    }
    /// A message published to the broker (`owner`) and confirmed.
    pub fn producer(order: &str, service: &str, rule: &str, owner: &str, base: u64) -> Self {
        Self::new(order, service, SpanKind::Producer, rule, owner, base)
            .attr("messaging.system", "rabbitmq")
    }
    /// A message consumed by `service` and acknowledged.
    pub fn consumer(order: &str, service: &str, rule: &str, base: u64) -> Self {
        Self::new(order, service, SpanKind::Consumer, rule, service, base)
            .attr("messaging.system", "rabbitmq")
    }
    /// A message settled otherwise than wanted (`nack`, `returned`, `timeout`, …).
    pub fn unsettled(mut self, error_type: &str) -> Self {
        self.0.status = SpanStatus::Error;
        self.attr("error.type", error_type)
    }
    pub fn attr(mut self, key: &str, value: &str) -> Self {
        self.0
            .attributes
            .insert(key.to_string().into(), AttrValue::Str(value.into()));
        self
    }
    pub fn code(mut self, code: i64) -> Self {
        self.0
            .attributes
            .insert("http.response.status_code".into(), AttrValue::Int(code));
        if code >= 500 || (code >= 400 && self.0.kind == SpanKind::Client) {
            self.0.status = SpanStatus::Error;
        }
        if code >= 400 {
            return self.attr("error.type", &code.to_string());
        }
        self
    }
    /// A successful call reaching `status` (order.step and order.status both set).
    pub fn reached(self, status: &str) -> Self {
        self.code(200)
            .attr("order.step", status)
            .attr("order.status", status)
    }
    /// Times the span `secs` after the base, lasting `duration` seconds.
    pub fn at(mut self, secs: f64, duration: f64) -> SpanRecord {
        self.0.start_unix_nano = self.1 + (secs * 1e9) as u64;
        self.0.end_unix_nano = self.0.start_unix_nano + (duration * 1e9) as u64;
        self.0
    }
}

/// The spans of one order's walk (contracts §1), bent by `fault`, starting at `base` (unix ns).
pub fn walk(order: &str, fault: Option<&str>, base: u64) -> Vec<SpanRecord> {
    let f = |kind: &str| fault == Some(kind);
    let mut spans = Vec::new();
    let create = Span::server(order, "shop-api", "shop.create", base)
        .reached("INITIATED")
        .attr("order.key", &format!("key-of-{order}"));
    if f("session_hung") {
        spans.push(create.at(0.0, 4.0));
        return spans;
    }
    spans.push(create.at(0.0, 0.05));
    let lookup_shop =
        Span::server(order, "shop-api", "shop.lookup", base).attr("order.lookup", "found");
    if f("created_not_saved") {
        spans.push(
            Span::server(order, "shop-api", "shop.lookup", base)
                .code(404)
                .attr("order.lookup", "not_found")
                .at(0.5, 0.01),
        );
        return spans;
    }
    let upload = Span::server(order, "shop-api", "shop.upload", base);
    match fault {
        Some("upload_storage_full") => {
            spans.push(
                upload
                    .attr("order.step", "FILE_UPLOADED")
                    .code(507)
                    .at(1.0, 0.3),
            );
            return spans;
        }
        Some("upload_timeout") => {
            spans.push(
                upload
                    .attr("order.step", "FILE_UPLOADED")
                    .code(504)
                    .at(1.0, 1.5),
            );
            return spans;
        }
        _ => spans.push(upload.reached("FILE_UPLOADED").at(1.0, 0.3)),
    }
    let submit = Span::server(order, "shop-api", "shop.submit", base);
    if f("submit_db_error") {
        spans.push(
            submit
                .attr("order.step", "SUBMITTED")
                .code(500)
                .at(2.0, 0.05),
        );
        return spans;
    }
    spans.push(submit.reached("SUBMITTED").at(2.0, 0.05));
    spans.push(
        lookup_shop
            .code(200)
            .attr("order.observed_status", "SUBMITTED")
            .at(2.2, 0.01),
    );
    let pricing_client = Span::client(order, "shop-api", "mes.pricing", "mes-api", base);
    let pricing_server = Span::server(order, "mes-api", "mes.pricing", base);
    match fault {
        Some("pricing_no_answer") => {
            spans.push(
                pricing_client
                    .attr("order.step", "PRICE_CALCULATED")
                    .attr("error.type", "timeout")
                    .at(2.1, 3.0),
            );
            let mut server = pricing_server
                .attr("order.step", "PRICE_CALCULATED")
                .attr("error.type", "reset")
                .at(2.1, 3.0);
            server.status = SpanStatus::Error;
            spans.push(server);
            return spans;
        }
        Some("pricing_after_change") => {
            spans.push(
                pricing_client
                    .attr("order.step", "PRICE_CALCULATED")
                    .code(409)
                    .at(2.1, 0.1),
            );
            spans.push(
                pricing_server
                    .attr("order.step", "PRICE_CALCULATED")
                    .code(409)
                    .at(2.1, 0.1),
            );
            return spans;
        }
        _ => {
            spans.push(pricing_client.reached("PRICE_CALCULATED").at(2.1, 0.2));
            spans.push(pricing_server.reached("PRICE_CALCULATED").at(2.1, 0.19));
        }
    }
    let publish_priced = Span::producer(
        order,
        "mes-api",
        "queue.publish_priced",
        "order-queue",
        base,
    );
    if f("priced_order_returned") {
        spans.push(publish_priced.unsettled("returned").at(2.4, 0.01));
        return spans;
    }
    spans.push(publish_priced.at(2.4, 0.01));
    if f("priced_order_dropped") {
        return spans;
    }
    spans.push(Span::consumer(order, "crm-api", "crm.receive_deal", base).at(2.6, 0.02));
    spans.push(
        Span::server(order, "crm-api", "crm.approve", base)
            .reached("MANUFACTURING_APPROVED")
            .at(3.5, 0.02),
    );
    spans.push(
        Span::producer(
            order,
            "crm-api",
            "queue.publish_work_order",
            "order-queue",
            base,
        )
        .at(3.6, 0.01),
    );
    if f("work_order_dropped") {
        return spans;
    }
    let receive_work_order = Span::consumer(order, "mes-api", "mes.receive_work_order", base);
    if f("work_order_unacked") {
        // Delivered at 3.8 s, never acknowledged: the agent gives up after its ack timeout.
        spans.push(receive_work_order.unsettled("timeout").at(3.8, 3.0));
        return spans;
    }
    spans.push(receive_work_order.at(3.8, 0.02));
    if f("operator_never_started") {
        return spans;
    }
    let transition =
        |to: &str| Span::server(order, "mes-api", "mes.transition", base).attr("order.step", to);
    spans.push(
        transition("MANUFACTURING_STARTED")
            .reached("MANUFACTURING_STARTED")
            .at(4.5, 0.02),
    );
    match fault {
        Some("completion_500") => {
            spans.push(
                transition("MANUFACTURING_COMPLETED")
                    .code(500)
                    .at(5.5, 0.02),
            );
            return spans;
        }
        Some("completion_lost") => {
            spans.push(
                transition("MANUFACTURING_COMPLETED")
                    .reached("MANUFACTURING_COMPLETED")
                    .at(5.5, 0.02),
            );
            spans.push(
                Span::server(order, "mes-api", "mes.lookup", base)
                    .code(200)
                    .attr("order.lookup", "found")
                    .attr("order.observed_status", "MANUFACTURING_STARTED")
                    .at(6.0, 0.01),
            );
            return spans;
        }
        _ => spans.push(
            transition("MANUFACTURING_COMPLETED")
                .reached("MANUFACTURING_COMPLETED")
                .at(5.5, 0.02),
        ),
    }
    if f("packaging_not_recorded") {
        return spans;
    }
    if !f("packaging_skipped") {
        spans.push(transition("PACKAGING").reached("PACKAGING").at(6.5, 0.02));
    }
    if f("shipping_unavailable") {
        spans.push(transition("SHIPPED").code(503).at(7.5, 0.02));
        return spans;
    }
    spans.push(transition("SHIPPED").reached("SHIPPED").at(7.5, 0.02));
    spans.push(
        Span::server(order, "mes-api", "mes.lookup", base)
            .code(200)
            .attr("order.lookup", "found")
            .attr("order.observed_status", "SHIPPED")
            .at(7.7, 0.01),
    );
    if f("carrier_webhook_lost") {
        return spans;
    }
    spans.push(
        Span::server(order, "crm-api", "crm.carrier_webhook", base)
            .reached("CLOSED")
            .at(8.5, 0.02),
    );
    spans
}
