//! The testbed as its users see it: whole runs end where the truth file says, in every
//! service's own state, and bad input gets proper 4xx answers.

mod common;

use std::collections::HashMap;

use common::{Testbed, free_base_port, one_broker_at_a_time};
use testbed::driver::{ServiceStates, expected_states, observe};
use testbed::mes::MesState;
use testbed::messagelog::{MessageOutcome, MessageSide, read_message_log};
use testbed::requestlog::{RequestLogRecord, Side};
use testbed::service::Scheme;
use testbed::{FaultKind, Service, Status, TruthRecord, read_request_log, read_truth};

#[tokio::test(flavor = "multi_thread")]
async fn without_faults_every_order_is_closed_in_every_service() {
    let bed = Testbed::serve("clean");
    let truth = bed.path("truth.jsonl");
    let out = bed.run(&["--orders", "300", "--rate", "60", "--seed", "11"], &truth);
    assert!(out.status.success());
    let records = read_truth(&truth).unwrap();
    assert_eq!(records.len(), 300);
    let client = bed.client();
    for record in &records {
        assert_eq!(record.final_status, Some(Status::Closed), "{record:?}");
        assert!(record.faults.is_empty());
        // The CRM's close reached the shop and the MES too.
        let seen = observe(&client, bed.endpoints(), &record.order_id)
            .await
            .unwrap();
        let closed = ServiceStates {
            shop: Some(Status::Closed),
            mes: Some(MesState::Closed),
            crm: Some(Status::Closed),
        };
        assert_eq!(seen, closed, "{}", record.order_id);
    }
    // One close notification per order to each of the shop and the MES, both sides logged.
    let log = read_request_log(bed.path("requests.jsonl")).unwrap();
    for route in [
        "/api/v1/orders/{order_id}/status",
        "/mes/api/work-orders/{orderRef}/transitions",
    ] {
        let from_crm = log
            .iter()
            .filter(|r| r.service == Service::Crm && r.route.as_deref() == Some(route))
            .inspect(|r| assert_eq!(r.status_code, Some(200), "{r:?}"))
            .count();
        assert_eq!(from_crm, records.len(), "{route}");
    }
    assert_calls_logged_on_both_sides(&log);
    // Every priced order and work order went through the broker: published, confirmed,
    // consumed and acknowledged once.
    let messages = read_message_log(bed.path("messages.jsonl")).unwrap();
    for (service, side) in [
        (Service::Mes, MessageSide::Publish),
        (Service::Crm, MessageSide::Consume),
        (Service::Crm, MessageSide::Publish),
        (Service::Mes, MessageSide::Consume),
    ] {
        let n = messages
            .iter()
            .filter(|m| m.service == service && m.side == side)
            .inspect(|m| assert_eq!(m.outcome, MessageOutcome::Acked, "{m:?}"))
            .count();
        assert_eq!(n, records.len(), "{service} {side:?}");
    }
}

/// Every call a traced service made to another traced one is in the log from both sides,
/// with the same path, order and outcome (a pricing call cut off by the shop's timeout has
/// no status code on either side).
fn assert_calls_logged_on_both_sides(log: &[RequestLogRecord]) {
    let key = |r: &RequestLogRecord| (r.path.clone(), r.order_id.clone(), r.status_code);
    let mut served: HashMap<_, usize> = HashMap::new();
    for r in log.iter().filter(|r| r.side == Side::Server) {
        *served.entry(key(r)).or_default() += 1;
    }
    // The broker is not traced: its side of the publishes is nowhere.
    let calls = log
        .iter()
        .filter(|r| r.side == Side::Client && !r.path.starts_with("/queue/"));
    for call in calls {
        match served.get_mut(&key(call)) {
            Some(n) if *n > 0 => *n -= 1,
            _ => panic!("{call:?} is not in the log of the service it called"),
        }
    }
}

/// Where an order with each fault really stops (the fault table, read independently of the
/// driver's code).
fn stops_at(kind: FaultKind) -> Status {
    use FaultKind as K;
    use Status as S;
    match kind {
        K::SessionHung | K::CreatedNotSaved | K::UploadStorageFull | K::UploadTimeout => {
            S::Initiated
        }
        K::SubmitDbError => S::FileUploaded,
        K::PricingNoAnswer | K::PricingAfterChange => S::Submitted,
        K::PricedOrderDropped | K::PricedOrderReturned => S::PriceCalculated,
        K::WorkOrderDropped | K::WorkOrderUnacked | K::OperatorNeverStarted => {
            S::ManufacturingApproved
        }
        K::Completion500 | K::CompletionLost => S::ManufacturingStarted,
        K::PackagingNotRecorded => S::ManufacturingCompleted,
        K::ShippingUnavailable => S::Packaging,
        K::CarrierWebhookLost => S::Shipped,
        K::DuplicateOrder | K::PackagingSkipped => S::Closed,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_faulted_order_stops_where_the_truth_says() {
    let bed = Testbed::serve("faults");
    let truth = bed.path("truth.jsonl");
    // 18 injectable kinds at 1/18 each: every order gets a fault.
    let args = [
        "--orders",
        "180",
        "--rate",
        "40",
        "--seed",
        "5",
        "--faults",
        "all=0.05555555556",
    ];
    let out = bed.run(&args, &truth);
    assert!(out.status.success());
    let records = read_truth(&truth).unwrap();
    let kinds = assert_faults_played(&bed, &records).await;
    for kind in FaultKind::ALL {
        assert!(kinds.contains_key(&kind), "no order with {kind}");
    }
    let hung = records
        .iter()
        .filter(|r| r.faults[0].kind == FaultKind::SessionHung)
        .count();
    assert_eq!(hung, kinds[&FaultKind::DuplicateOrder]);
}

/// Every order of a run with one fault each stops where the fault table says, in every
/// service's own state, and the request log has each call from both sides (pricing calls
/// cut off by the shop's timeout included). Returns the orders per fault kind.
async fn assert_faults_played(bed: &Testbed, records: &[TruthRecord]) -> HashMap<FaultKind, usize> {
    let client = bed.client();
    let mut kinds = HashMap::new();
    for record in records {
        assert_eq!(record.faults.len(), 1, "{record:?}");
        let fault = &record.faults[0];
        *kinds.entry(fault.kind).or_insert(0) += 1;
        assert_eq!(
            record.final_status,
            Some(stops_at(fault.kind)),
            "{record:?}"
        );
        assert_eq!(
            (fault.detection, fault.step, fault.service),
            fault.kind.table_row()
        );
        let seen = observe(&client, bed.endpoints(), &record.order_id)
            .await
            .unwrap();
        assert_eq!(seen, expected_states(record), "{record:?}");
    }
    let log = read_request_log(bed.path("requests.jsonl")).unwrap();
    let pricing = |side| {
        let mut calls: Vec<_> = log
            .iter()
            .filter(|r| r.side == side && r.path == "/mes/api/pricing-requests")
            .map(|r| (r.order_id.clone(), r.status_code))
            .collect();
        calls.sort();
        calls
    };
    assert_eq!(pricing(Side::Client), pricing(Side::Server));
    assert!(pricing(Side::Client).iter().any(|(_, code)| code.is_none()));
    assert_calls_logged_on_both_sides(&log);
    kinds
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_400_and_unknown_orders_are_404() {
    let bed = Testbed::serve("api");
    let client = bed.client();
    let post = |service, path: &str, body: &'static str| {
        client
            .post(bed.url(service, path))
            .header("content-type", "application/json")
            .body(body)
    };
    let malformed = [
        (Service::Shop, "/api/v1/orders"),
        (Service::Mes, "/mes/api/pricing-requests"),
        (Service::Mes, "/mes/api/work-orders/SO-1/transitions"),
        (Service::Crm, "/crm/v1/webhooks/carrier"),
        (Service::Shop, "/api/v1/orders/SO-1/status"),
    ];
    for (service, path) in malformed {
        for body in ["{\"customer_id\":", "[1,2", "{}", "not json"] {
            let resp = post(service, path, body)
                .header("x-order-id", "SO-1")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 400, "{service} {path} {body}");
            let err: serde_json::Value = resp.json().await.unwrap();
            assert!(err["error"].is_string());
        }
    }

    let lookups = [
        (Service::Shop, "/api/v1/orders/SO-nope"),
        (Service::Mes, "/mes/api/work-orders/SO-nope"),
        (Service::Crm, "/crm/v1/deals/SO-nope"),
    ];
    for (service, path) in lookups {
        let resp = client.get(bed.url(service, path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{service} {path}");
    }
    let actions = [
        (Service::Shop, "/api/v1/orders/SO-nope/submit", ""),
        (
            Service::Mes,
            "/mes/api/work-orders/SO-nope/transitions",
            "{\"to\":\"IN_WORK\"}",
        ),
        (
            Service::Shop,
            "/api/v1/orders/SO-nope/status",
            CLOSED_BY_CRM,
        ),
        (
            Service::Mes,
            "/mes/api/work-orders/SO-nope/transitions",
            "{\"to\":\"CLOSED\"}",
        ),
        (Service::Crm, "/crm/v1/deals/SO-nope/approve", ""),
        (Service::Crm, "/crm/v1/deals/SO-nope/close", ""),
        (
            Service::Crm,
            "/crm/v1/webhooks/carrier",
            "{\"shipment\":{\"order_ref\":\"SO-nope\",\"event\":\"DELIVERED\"}}",
        ),
    ];
    for (service, path, body) in actions {
        let resp = post(service, path, body).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{service} {path}");
    }
    let upload = client
        .put(bed.url(Service::Shop, "/api/v1/orders/SO-nope/model"))
        .body(vec![1u8; 1024]);
    assert_eq!(upload.send().await.unwrap().status(), 404);

    // An order in the wrong state is a conflict, not a success.
    let created: serde_json::Value = post(
        Service::Shop,
        "/api/v1/orders",
        r#"{"customer_id":"C-1","items":[{"sku":"RING-BAND","quantity":1}],"cart_id":"CART-1"}"#,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = created["order_id"].as_str().unwrap();
    assert_eq!(created["status"], "INITIATED");
    let submit = client.post(bed.url(Service::Shop, &format!("/api/v1/orders/{id}/submit")));
    assert_eq!(submit.send().await.unwrap().status(), 409);
    let status = format!("/api/v1/orders/{id}/status");
    let early_close = post(Service::Shop, &status, CLOSED_BY_CRM);
    assert_eq!(early_close.send().await.unwrap().status(), 409);
    let not_a_close = post(
        Service::Shop,
        &status,
        r#"{"status":"SHIPPED","source":"crm"}"#,
    );
    assert_eq!(not_a_close.send().await.unwrap().status(), 400);
    // The MES closes only what it dispatched.
    let priced = post(
        Service::Mes,
        "/mes/api/pricing-requests",
        r#"{"orderRef":"SO-7","model":{"sizeBytes":1024}}"#,
    );
    assert_eq!(priced.send().await.unwrap().status(), 200);
    let early_close = post(
        Service::Mes,
        "/mes/api/work-orders/SO-7/transitions",
        r#"{"to":"CLOSED"}"#,
    );
    assert_eq!(early_close.send().await.unwrap().status(), 409);
}

/// The CRM's close notification to the shop.
const CLOSED_BY_CRM: &str = r#"{"status":"CLOSED","source":"crm"}"#;

#[test]
fn run_starts_checks_and_stops_its_own_services() {
    let _one_at_a_time = one_broker_at_a_time();
    let base_port = free_base_port();
    let dir = std::env::temp_dir().join(format!("testbed-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (truth, log) = (dir.join("truth.jsonl"), dir.join("requests.jsonl"));
    let messages = dir.join("messages.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_testbed"))
        .args([
            "run", "--orders", "30", "--rate", "60", "--faults", "all=0.05", "--check",
        ])
        .args([
            "--time-factor",
            "0.5",
            "--seed",
            "9",
            "--base-port",
            &base_port.to_string(),
        ])
        .arg("--truth")
        .arg(&truth)
        .arg("--request-log")
        .arg(&log)
        .arg("--message-log")
        .arg(&messages)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The broker's side of a failed walk is in what the services logged of each message.
    assert!(
        out.status.success(),
        "{stdout}{}\nmessages:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&messages).unwrap_or_default()
    );
    assert!(
        stdout.contains("final status:") && stdout.contains("check: "),
        "{stdout}"
    );
    assert!(read_truth(&truth).unwrap().len() >= 30);
    let log = read_request_log(&log).unwrap();
    for service in [Service::Shop, Service::Mes, Service::Crm] {
        assert!(
            log.iter()
                .any(|r| r.service == service && r.side == Side::Server)
        );
    }
    assert!(log.iter().all(|r| r.service != Service::Queue));
    // Nothing is left listening: every port can be bound again.
    for service in Service::ALL {
        std::net::TcpListener::bind(("127.0.0.1", service.port(base_port))).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `--tls`: the services serve HTTPS and call each other over HTTPS through the system's
/// OpenSSL, with a CA made at start. A third-party client (curl, OpenSSL) trusting that CA
/// walks an order's first step; one that does not, or that speaks plain HTTP, gets nothing.
/// A whole run over HTTPS, every fault kind injected, ends where the truth says.
#[tokio::test(flavor = "multi_thread")]
async fn tls_mode_serves_and_calls_over_https_with_the_system_openssl() {
    let bed = Testbed::serve_with("tls", Scheme::Https);
    let ca = bed.pki().unwrap().ca();
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .args(args)
            .output()
            .unwrap()
    };
    let orders = bed.url(Service::Shop, "/api/v1/orders");
    assert!(orders.starts_with("https://"), "{orders}");
    let created = curl(&[
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"customer_id":"C-1","items":[{"sku":"RING-BAND","quantity":1}],"cart_id":"CART-1"}"#,
        &orders,
    ]);
    assert!(created.status.success(), "{created:?}");
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(created["status"], "INITIATED");
    let id = created["order_id"].as_str().unwrap();
    let lookup = curl(&["--cacert", ca.to_str().unwrap(), &format!("{orders}/{id}")]);
    let lookup: serde_json::Value = serde_json::from_slice(&lookup.stdout).unwrap();
    assert_eq!(lookup["order_id"], id);
    // curl 60: the peer's certificate is not signed by a CA the client knows.
    let untrusted = curl(&[&orders]);
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");
    let plain = curl(&[&orders.replacen("https", "http", 1)]);
    assert!(!plain.status.success(), "plain HTTP answered: {plain:?}");
    // Each process maps the system's libssl: the library the tracer's uprobes read.
    let pids = bed.service_pids();
    assert_eq!(pids.len(), Service::ALL.len(), "{pids:?}");
    for pid in pids {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        assert!(maps.contains("/libssl.so"), "pid {pid} maps no libssl");
    }

    let truth = bed.path("truth.jsonl");
    // 18 kinds at 1/18 each: this seed gives every kind in 54 orders.
    let args = [
        "--orders",
        "54",
        "--rate",
        "40",
        "--seed",
        "3",
        "--faults",
        "all=0.05555555556",
        "--check",
    ];
    let out = bed.run(&args, &truth);
    assert!(out.status.success());
    let records = read_truth(&truth).unwrap();
    let kinds = assert_faults_played(&bed, &records).await;
    assert_eq!(kinds.len(), FaultKind::ALL.len(), "{kinds:?}");
    let log = read_request_log(bed.path("requests.jsonl")).unwrap();
    assert!(
        log.iter()
            .any(|r| r.service == Service::Crm && r.side == Side::Client)
    );
}
