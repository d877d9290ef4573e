use super::*;
use crate::capture::Role;
use crate::http::{Exchange, Outcome};
use crate::spans::fixtures::{ExchangeFixture, exchange};

fn testbed() -> RuleSet {
    RuleSet::compile(&crate::config::Config::embedded_default().services).unwrap()
}

fn order<'r>(set: &'r RuleSet, ex: &Exchange) -> OrderMatch<'r> {
    match set.classify(ex) {
        Classification::Order(m) => m,
        other => panic!(
            "expected an order match for {} {}, got {other:?}",
            ex.request.head.method, ex.request.head.target
        ),
    }
}

#[test]
fn the_testbed_walk_gives_ids_steps_and_statuses() {
    let set = testbed();
    let server = |svc, m, t| exchange(svc, Role::Server, m, t);
    // (exchange, rule, step, status)
    let cases = [
        (
            server("shop-api", "POST", "/api/v1/orders")
                .request_body(r#"{"customer_id":"c1","items":[],"cart_id":"k1"}"#)
                .respond(201, r#"{"order_id":"SO-1","status":"INITIATED"}"#),
            "shop.create",
            Some("INITIATED"),
            Some("INITIATED"),
        ),
        (
            server("shop-api", "PUT", "/api/v1/orders/SO-1/model").respond(200, "{}"),
            "shop.upload",
            Some("FILE_UPLOADED"),
            Some("FILE_UPLOADED"),
        ),
        (
            server("shop-api", "POST", "/api/v1/orders/SO-1/submit").respond(500, "{}"),
            "shop.submit",
            Some("SUBMITTED"),
            None,
        ),
        (
            exchange(
                "shop-api",
                Role::Client,
                "POST",
                "/mes/api/pricing-requests",
            )
            .request_body(r#"{"orderRef":"SO-1","model":{"sizeBytes":5}}"#)
            .outcome(Outcome::Timeout),
            "mes.pricing",
            Some("PRICE_CALCULATED"),
            None,
        ),
        (
            server("crm-api", "POST", "/crm/v1/deals/SO-1/approve").respond(
                200,
                r#"{"order":{"id":"SO-1","status":"MANUFACTURING_APPROVED"}}"#,
            ),
            "crm.approve",
            Some("MANUFACTURING_APPROVED"),
            Some("MANUFACTURING_APPROVED"),
        ),
        (
            server("mes-api", "POST", "/mes/api/work-orders/SO-1/transitions")
                .request_body(r#"{"to":"IN_WORK"}"#)
                .respond(200, r#"{"orderRef":"SO-1","state":"IN_WORK"}"#),
            "mes.transition",
            Some("MANUFACTURING_STARTED"),
            Some("MANUFACTURING_STARTED"),
        ),
        (
            server("mes-api", "POST", "/mes/api/work-orders/SO-1/transitions")
                .request_body(r#"{"to":"DISPATCHED","carrier":"x"}"#)
                .respond(503, r#"{"error":"x"}"#),
            "mes.transition",
            Some("SHIPPED"),
            None,
        ),
        (
            server("crm-api", "POST", "/crm/v1/webhooks/carrier")
                .request_body(r#"{"shipment":{"order_ref":"SO-1","event":"DELIVERED"}}"#)
                .respond(200, r#"{"order":{"id":"SO-1","status":"CLOSED"}}"#),
            "crm.carrier_webhook",
            Some("CLOSED"),
            Some("CLOSED"),
        ),
        (
            server("crm-api", "POST", "/crm/v1/deals/SO-1/close").respond(200, "{}"),
            "crm.close",
            Some("CLOSED"),
            Some("CLOSED"),
        ),
    ];
    for (ex, rule, step, status) in cases {
        let m = order(&set, &ex);
        assert_eq!(&*m.rule.name, rule);
        assert_eq!(m.order_id, "SO-1", "{rule}");
        assert_eq!(m.step, step, "{rule}");
        assert_eq!(m.status, status, "{rule}");
        assert_eq!(m.lookup, None, "{rule}");
    }
}

#[test]
fn client_exchanges_are_owned_by_the_callee() {
    let set = testbed();
    let pricing = |service, role| {
        exchange(service, role, "POST", "/mes/api/pricing-requests")
            .request_body(r#"{"orderRef":"SO-1"}"#)
    };
    let m = order(&set, &pricing("shop-api", Role::Client));
    assert_eq!(&*m.rule.owner, "mes-api");
    assert_eq!(m.side, CallSide::Client);
    // A server exchange is matched only against its own service's rules.
    assert!(matches!(
        set.classify(&pricing("shop-api", Role::Server)),
        Classification::Unmatched
    ));
    let ex =
        exchange("crm-api", Role::Server, "PUT", "/api/v1/orders/SO-1/model").respond(200, "{}");
    assert!(matches!(set.classify(&ex), Classification::Unmatched));
}

#[test]
fn the_testbed_messages_give_their_order_ids() {
    use crate::amqp::{Operation, Settlement};
    use crate::spans::fixtures::{TransferFixture, message};
    let set = testbed();
    let priced = |service, operation, queue| {
        message(service, operation, "shop.priced-orders", "priced.eu", queue)
            .properties(
                &[
                    ("correlation-id", "SO-1"),
                    ("message-id", "priced-orders-SO-1"),
                ],
                &[],
            )
            .body(r#"{"orderRef":"SO-1","price":{"amount":80.0}}"#)
    };
    let work = |service, operation, key, queue| {
        message(service, operation, "shop.work-orders", key, queue)
            .properties(&[("message-id", "SO-1")], &[("x-order-id", "SO-1")])
            .body(r#"{"workOrder":{"plant":"plant-1"}}"#)
    };
    let cases = [
        (
            priced("mes-api", Operation::Publish, None),
            "queue.publish_priced",
            CallSide::Client,
        ),
        (
            priced("crm-api", Operation::Deliver, Some("crm.priced-orders")),
            "crm.receive_deal",
            CallSide::Server,
        ),
        (
            work("crm-api", Operation::Publish, "plant-1", None),
            "queue.publish_work_order",
            CallSide::Client,
        ),
        (
            work(
                "mes-api",
                Operation::Deliver,
                "rush",
                Some("mes.work-orders.rush"),
            ),
            "mes.receive_work_order",
            CallSide::Server,
        ),
    ];
    for (transfer, rule, side) in cases {
        let Classification::Order(m) = set.classify(&transfer) else {
            panic!("{rule}: no order match");
        };
        assert_eq!(
            (&*m.rule.name, m.side, m.order_id.as_str()),
            (rule, side, "SO-1")
        );
        assert_eq!((m.step, m.status), (None, None));
    }
    // A delivery is matched only against the consuming service's own rules; a publish rule
    // (client-only) never claims a delivery.
    let elsewhere = priced("mes-api", Operation::Deliver, Some("crm.priced-orders"));
    assert!(matches!(
        set.classify(&elsewhere),
        Classification::Unmatched
    ));
    let no_queue = priced("crm-api", Operation::Deliver, None);
    assert!(matches!(set.classify(&no_queue), Classification::Unmatched));
    // Without the id where the rule looks: the rule matched, no order.
    let anonymous = message(
        "mes-api",
        Operation::Publish,
        "shop.priced-orders",
        "priced.eu",
        None,
    )
    .body("not json")
    .settled(Settlement::Nacked { requeue: false });
    assert!(matches!(
        set.classify(&anonymous),
        Classification::NoOrderId { .. }
    ));
}

#[test]
fn lookups_report_what_the_system_said() {
    let set = testbed();
    let ex = exchange("mes-api", Role::Server, "GET", "/mes/api/work-orders/SO-1")
        .respond(200, r#"{"orderRef":"SO-1","state":"IN_WORK"}"#);
    let m = order(&set, &ex);
    assert_eq!(
        (m.lookup, m.observed_status, m.status, m.step),
        (
            Some(LookupResult::Found),
            Some("MANUFACTURING_STARTED"),
            None,
            None
        )
    );
    let ex = exchange("shop-api", Role::Server, "GET", "/api/v1/orders/SO-1")
        .respond(404, r#"{"error":"no"}"#);
    let m = order(&set, &ex);
    assert_eq!(
        (m.lookup, m.observed_status),
        (Some(LookupResult::NotFound), None)
    );
    let ex = exchange("crm-api", Role::Server, "GET", "/crm/v1/deals/SO-1").respond(
        200,
        r#"{"deal":{"order":{"id":"SO-1","status":"SHIPPED"}}}"#,
    );
    assert_eq!(order(&set, &ex).observed_status, Some("SHIPPED"));
}

#[test]
fn duplicate_key_is_a_hash_of_the_key_fields() {
    let set = testbed();
    let create = |customer: &str, order_id: &str| {
        exchange("shop-api", Role::Server, "POST", "/api/v1/orders")
            .request_body(&format!(
                r#"{{"customer_id":"{customer}","items":[1],"cart_id":"k"}}"#
            ))
            .respond(
                201,
                &format!(r#"{{"order_id":"{order_id}","status":"INITIATED"}}"#),
            )
    };
    let (a, b, c) = (
        create("c1", "SO-1"),
        create("c1", "SO-2"),
        create("c2", "SO-3"),
    );
    let (ka, kb, kc) = (
        order(&set, &a).key.unwrap(),
        order(&set, &b).key.unwrap(),
        order(&set, &c).key.unwrap(),
    );
    assert_eq!(ka, kb);
    assert_ne!(ka, kc);
    assert!(!ka.contains("c1"));
}

#[test]
fn no_id_means_no_order() {
    let set = testbed();
    // The create call that never got its answer has no id anywhere.
    let ex = exchange("shop-api", Role::Server, "POST", "/api/v1/orders")
        .request_body(r#"{"customer_id":"c1"}"#)
        .outcome(Outcome::Timeout);
    assert!(matches!(
        set.classify(&ex),
        Classification::NoOrderId { .. }
    ));
    // A truncated JSON body is not read.
    let mut ex = exchange("shop-api", Role::Server, "POST", "/api/v1/orders")
        .respond(201, r#"{"order_id":"SO-1"}"#);
    ex.response.as_mut().unwrap().body_truncated = true;
    assert!(matches!(
        set.classify(&ex),
        Classification::NoOrderId { .. }
    ));
    let ex = exchange("shop-api", Role::Server, "GET", "/health").respond(200, "ok");
    assert!(matches!(set.classify(&ex), Classification::Unmatched));
}

#[test]
fn garbage_bodies_never_panic() {
    let set = testbed();
    let bodies: [&[u8]; 5] = [
        b"",
        b"\xff\xfe",
        b"{",
        b"[1,2,{\"orderRef\":",
        b"{\"orderRef\":{\"x\":[]}}",
    ];
    for body in bodies {
        let mut ex = exchange("mes-api", Role::Server, "POST", "/mes/api/pricing-requests");
        ex.request.body = bytes::Bytes::copy_from_slice(body);
        assert!(!matches!(set.classify(&ex), Classification::Order(_)));
    }
}

#[test]
fn ids_from_queries_and_unknown_roles() {
    let config = r#"
        [[service]]
        name = "legacy"
        unmatched = "span"
        [[service.rule]]
        name = "legacy.status"
        method = "GET"
        path = "/cgi-bin/*"
        host = "erp.example"
        header = { name = "X-Tenant", value = "jewel" }
        order_id = [{ from = "query", param = "order" }]
        step = "SHIPPED"
    "#;
    let services = crate::config::Config::parse(config, "test")
        .unwrap()
        .services;
    let set = RuleSet::compile(&services).unwrap();
    let ex = exchange(
        "legacy",
        Role::Unknown,
        "GET",
        "/cgi-bin/status.pl?order=SO%2D7",
    )
    .request_header("host", "erp.example:8080")
    .request_header("x-tenant", "jewel");
    let m = order(&set, &ex);
    assert_eq!(
        (m.order_id.as_str(), m.side, m.step),
        ("SO-7", CallSide::Server, Some("SHIPPED"))
    );
    let ex = exchange(
        "legacy",
        Role::Server,
        "GET",
        "/cgi-bin/status.pl?order=SO-7",
    )
    .request_header("host", "erp.example");
    assert!(matches!(set.classify(&ex), Classification::Unmatched));
    assert_eq!(set.unmatched_policy("legacy"), Unmatched::Span);
    assert_eq!(set.unmatched_policy("nobody"), Unmatched::Count);
}

#[test]
fn bad_rules_are_refused_with_a_clear_message() {
    let rule = |body: &str| format!("[[service]]\nname = \"s\"\n[[service.rule]]\n{body}\n");
    let ok = "name = \"r\"\nmethod = \"GET\"\npath = \"/o/{id}\"\norder_id = { from = \"path\", param = \"id\" }";
    let cases = [
        (
            rule(&format!("{ok}\nstatus = \"DONE\"")),
            "not a canonical status",
        ),
        (
            rule(&ok.replace("/o/{id}", "/o/x{id}")),
            "parameter must be a whole segment",
        ),
        (
            rule(&ok.replace("name = \"r\"", "name = \"\"")),
            "empty rule name",
        ),
        (
            rule(&ok.replace("param = \"id\"", "param = \"oid\"")),
            "lacks",
        ),
        (rule(&ok.replace("GET", "get")), "upper-case"),
        (
            format!("{}[[service.rule]]\n{ok}\n", rule(ok)),
            "used twice",
        ),
        (
            rule(&format!(
                "{ok}\nstatus = {{ from = \"response.json\", path = \"s\", map = {{ X = \"NOPE\" }} }}"
            )),
            "NOPE",
        ),
        (
            rule(&format!("{ok}\nkind = \"reference\"\nstatus = \"CLOSED\"")),
            "reference",
        ),
        (rule(&format!("{ok}\nkind = \"lookup\"")), "lookup"),
        (
            rule(&ok.replace("from = \"path\"", "from = \"cookie\"")),
            "cookie",
        ),
    ];
    for (text, expected) in cases {
        let err = crate::config::Config::parse(&text, "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "expected {expected:?} in: {err}");
    }
    let twice = format!(
        "{}{}",
        rule(ok),
        rule(ok).replace("name = \"s\"", "name = \"t\"")
    );
    let services = crate::config::Config::parse(&twice, "test")
        .unwrap()
        .services;
    let err = RuleSet::compile(&services).unwrap_err();
    assert!(err.contains("used by services"), "{err}");
}

#[test]
fn the_production_example_is_valid() {
    let text = include_str!("../../../deploy/k8s/agent.toml");
    let config = crate::config::Config::parse(text, "deploy/k8s/agent.toml").unwrap();
    let set = RuleSet::compile(&config.services).unwrap();
    let ex = exchange("mes-gateway", Role::Server, "PATCH", "/v2/jobs/J-77")
        .request_body(r#"{"state":"BOXED"}"#)
        .respond(200, r#"{"job":{"state":"BOXED"}}"#);
    let m = order(&set, &ex);
    assert_eq!(
        (m.order_id.as_str(), m.step, m.status),
        ("J-77", Some("PACKAGING"), Some("PACKAGING"))
    );
}

#[test]
fn close_notices_after_the_crm_closed() {
    let set = testbed();
    let notice = exchange(
        "crm-api",
        Role::Client,
        "POST",
        "/api/v1/orders/SO-1/status",
    )
    .request_body(r#"{"status":"CLOSED","source":"crm"}"#)
    .respond(200, r#"{"order_id":"SO-1","status":"CLOSED"}"#);
    let m = order(&set, &notice);
    assert_eq!(
        (&*m.rule.name, &*m.rule.owner, m.step, m.status),
        ("shop.close_notice", "shop-api", None, None)
    );
    let to_mes = exchange(
        "mes-api",
        Role::Server,
        "POST",
        "/mes/api/work-orders/SO-1/transitions",
    )
    .request_body(r#"{"to":"CLOSED"}"#)
    .respond(200, r#"{"orderRef":"SO-1","state":"CLOSED"}"#);
    let m = order(&set, &to_mes);
    assert_eq!(
        (&*m.rule.name, m.step, m.status),
        ("mes.transition", Some("CLOSED"), Some("CLOSED"))
    );
}

#[test]
fn bodies_are_read_only_where_a_rule_reads_a_json_field() {
    let parse = |text: &str| {
        let config = crate::config::Config::parse(text, "test").unwrap();
        RuleSet::compile(&config.services).unwrap()
    };
    let set = parse(
        r#"
[[service]]
name = "paths-only"
[[service.rule]]
name = "a.submit"
method = "POST"
path = "/orders/{id}/submit"
order_id = { from = "path", param = "id" }
status = "SUBMITTED"

[[service]]
name = "json-server"
[[service.rule]]
name = "b.create"
method = "POST"
path = "/orders"
side = "server"
order_id = { from = "response.json", path = "id" }
status = "INITIATED"
"#,
    );
    assert!(!set.reads_body("paths-only", Role::Server));
    assert!(set.reads_body("json-server", Role::Server));
    // Its rule is server-side only: nobody's client calls need bodies.
    assert!(!set.reads_body("json-server", Role::Client));
    assert!(!set.reads_body("paths-only", Role::Client));
    assert!(set.reads_body("json-server", Role::Unknown));
    assert!(!set.reads_body("not-configured", Role::Server));
    // The testbed reads bodies on both sides (a client rule reads the queue's JSON).
    let testbed = testbed();
    assert!(testbed.reads_body("mes-api", Role::Server));
    assert!(testbed.reads_body("shop-api", Role::Client));
}
