use super::*;
use crate::spans::fixtures::{ExchangeFixture, exchange};
use crate::spans::{order_root_span_id, order_trace_id};

const OFFSET: i128 = 1_700_000_000_000_000_000;

fn builder() -> SpanBuilder {
    let rules = RuleSet::compile(&crate::config::Config::embedded_default().services).unwrap();
    SpanBuilder::new(rules, Redactor::default(), "host-1".into(), OFFSET)
}

fn attr<'s>(span: &'s SpanRecord, key: &str) -> Option<&'s AttrValue> {
    span.attributes.get(key)
}

fn s(value: &str) -> Option<AttrValue> {
    Some(AttrValue::Str(value.into()))
}

#[test]
fn server_span_carries_the_contract_attributes() {
    let ex = exchange(
        "shop-api",
        Role::Server,
        "POST",
        "/api/v1/orders/SO-1/submit?utm=x",
    )
    .respond(200, "{}");
    let (outcome, span) = builder().build(&ex);
    let span = span.unwrap();
    assert_eq!(outcome, MatchOutcome::Order);
    assert_eq!(span.trace_id, order_trace_id("SO-1"));
    assert_eq!(span.parent_span_id, Some(order_root_span_id("SO-1")));
    assert_eq!(span.name, "POST /api/v1/orders/{order_id}/submit");
    assert_eq!(span.kind, SpanKind::Server);
    assert_eq!(span.status, SpanStatus::Unset);
    assert_eq!(span.start_unix_nano as i128, 1_000_000_000 + OFFSET);
    assert_eq!(span.end_unix_nano - span.start_unix_nano, 1_000_000);
    assert_eq!(span.resource.get("service.name").cloned(), s("shop-api"));
    assert_eq!(
        span.resource.get("process.pid"),
        Some(&AttrValue::Int(4242))
    );
    assert_eq!(span.resource.get("host.name").cloned(), s("host-1"));
    let expected = [
        ("http.request.method", s("POST")),
        ("url.path", s("/api/v1/orders/SO-1/submit")),
        ("http.route", s("/api/v1/orders/{order_id}/submit")),
        ("http.response.status_code", Some(AttrValue::Int(200))),
        ("server.address", s("127.0.0.1")),
        ("server.port", Some(AttrValue::Int(18080))),
        ("client.address", s("127.0.0.1")),
        ("client.port", Some(AttrValue::Int(40001))),
        ("network.peer.address", s("127.0.0.1")),
        ("network.peer.port", Some(AttrValue::Int(40001))),
        ("order.id", s("SO-1")),
        ("order.rule", s("shop.submit")),
        ("order.owner", s("shop-api")),
        ("order.step", s("SUBMITTED")),
        ("order.status", s("SUBMITTED")),
        ("error.type", None),
        ("peer.service", None),
        ("order.lookup", None),
    ];
    for (key, value) in expected {
        assert_eq!(attr(&span, key).cloned(), value, "{key}");
    }
}

#[test]
fn client_span_names_the_callee() {
    let ex = exchange(
        "shop-api",
        Role::Client,
        "POST",
        "/mes/api/pricing-requests",
    )
    .request_body(r#"{"orderRef":"SO-1"}"#)
    .respond(200, r#"{"orderRef":"SO-1","state":"PRICED"}"#);
    let span = builder().build(&ex).1.unwrap();
    assert_eq!(span.kind, SpanKind::Client);
    assert_eq!(attr(&span, "server.port"), Some(&AttrValue::Int(18081)));
    assert_eq!(attr(&span, "client.port"), Some(&AttrValue::Int(40000)));
    assert_eq!(attr(&span, "peer.service").cloned(), s("mes-api"));
    assert_eq!(attr(&span, "order.owner").cloned(), s("mes-api"));
    assert_eq!(span.resource.get("service.name").cloned(), s("shop-api"));
}

#[test]
fn message_spans_follow_the_messaging_conventions_and_link_consumer_to_producer() {
    use crate::amqp::{Operation, Settlement};
    use crate::spans::fixtures::{TransferFixture, message};
    let mut b = builder();
    let priced = |service, operation, queue| {
        message(service, operation, "shop.priced-orders", "priced.eu", queue)
            .properties(&[("correlation-id", "SO-1"), ("message-id", "m-1")], &[])
            .body(r#"{"orderRef":"SO-1"}"#)
    };
    let producer = b
        .build(&priced("mes-api", Operation::Publish, None))
        .1
        .unwrap();
    assert_eq!(
        (producer.kind, producer.name.as_str()),
        (SpanKind::Producer, "send shop.priced-orders")
    );
    assert_eq!(producer.trace_id, order_trace_id("SO-1"));
    let expected = [
        ("messaging.system", s("rabbitmq")),
        ("messaging.operation.type", s("send")),
        ("messaging.destination.name", s("shop.priced-orders")),
        ("messaging.rabbitmq.destination.routing_key", s("priced.eu")),
        ("messaging.message.id", s("m-1")),
        ("messaging.message.conversation_id", s("SO-1")),
        ("messaging.message.body.size", Some(AttrValue::Int(19))),
        ("server.port", Some(AttrValue::Int(5672))),
        ("order.id", s("SO-1")),
        ("order.rule", s("queue.publish_priced")),
        ("peer.service", s("order-queue")),
        ("error.type", None),
    ];
    for (key, value) in expected {
        assert_eq!(attr(&producer, key).cloned(), value, "{key}");
    }
    let consumer = b
        .build(&priced(
            "crm-api",
            Operation::Deliver,
            Some("crm.priced-orders"),
        ))
        .1
        .unwrap();
    assert_eq!(
        (consumer.kind, consumer.name.as_str()),
        (SpanKind::Consumer, "process crm.priced-orders")
    );
    assert_eq!(
        attr(&consumer, "messaging.destination.subscription.name").cloned(),
        s("crm.priced-orders")
    );
    assert_eq!(
        attr(&consumer, "messaging.rabbitmq.message.delivery_tag"),
        Some(&AttrValue::Int(1))
    );
    assert_eq!(
        consumer.links,
        vec![SpanLink {
            trace_id: producer.trace_id,
            span_id: producer.span_id
        }]
    );
    assert_eq!(consumer.parent_span_id, Some(order_root_span_id("SO-1")));
    // Settled otherwise than wanted: error.type and status.
    for (settlement, error) in [
        (Settlement::Nacked { requeue: false }, "nack"),
        (Settlement::Returned { reply_code: 312 }, "returned"),
        (Settlement::Rejected { requeue: false }, "reject"),
        (Settlement::Timeout, "timeout"),
    ] {
        let span = b
            .build(&priced("mes-api", Operation::Publish, None).settled(settlement))
            .1
            .unwrap();
        assert_eq!(attr(&span, "error.type").cloned(), s(error));
        assert_eq!(span.status, SpanStatus::Error);
    }
}

#[test]
fn failures_set_error_type_and_status() {
    let mut b = builder();
    let submit = |role| exchange("shop-api", role, "POST", "/api/v1/orders/SO-1/submit");
    let cases = [
        (submit(Role::Server).respond(500, "{}"), Some("500")),
        (submit(Role::Server).respond(409, "{}"), None),
        (submit(Role::Client).respond(409, "{}"), Some("409")),
        (submit(Role::Server).outcome(Outcome::Reset), Some("reset")),
        (
            submit(Role::Client).outcome(Outcome::Timeout),
            Some("timeout"),
        ),
        (
            submit(Role::Server).outcome(Outcome::Complete),
            Some("no_response"),
        ),
    ];
    for (ex, error_type) in cases {
        let span = b.build(&ex).1.unwrap();
        assert_eq!(attr(&span, "error.type").cloned(), error_type.and_then(s));
        let want = if error_type.is_some() {
            SpanStatus::Error
        } else {
            SpanStatus::Unset
        };
        assert_eq!(span.status, want, "{error_type:?}");
        assert_eq!(attr(&span, "order.status"), None);
        assert_eq!(attr(&span, "order.step").cloned(), s("SUBMITTED"));
    }
}

#[test]
fn personal_looking_segments_are_redacted_but_not_the_order_id() {
    let r = Redactor::default();
    assert_eq!(
        r.path("/u/jane.doe%40mail.example/cart?email=x@y", None),
        "/u/{redacted}/cart"
    );
    assert_eq!(r.path("/u/jane@mail.example", None), "/u/{redacted}");
    assert_eq!(
        r.path("/phone/+4915112345678/x", None),
        "/phone/{redacted}/x"
    );
    assert_eq!(
        r.path("/orders/SO-123456789012", Some("SO-123456789012")),
        "/orders/SO-123456789012"
    );
    assert_eq!(r.path("/orders/12345678", None), "/orders/12345678");
    assert_eq!(
        r.path(&format!("/{}", "a".repeat(4000)), None).len(),
        MAX_URL_PATH
    );
    assert_eq!(
        Redactor::new::<&str>(&[])
            .unwrap()
            .path("/a@b/1234567890", None),
        "/a@b/1234567890"
    );
    assert!(
        Redactor::new(&["("])
            .unwrap_err()
            .contains("regular expression")
    );
}

#[test]
fn traceparent_becomes_a_link() {
    let mut b = builder();
    let mut with = |value: &str| {
        let ex = exchange(
            "shop-api",
            Role::Server,
            "POST",
            "/api/v1/orders/SO-1/submit",
        )
        .request_header("traceparent", value)
        .respond(200, "{}");
        b.build(&ex).1.unwrap().links
    };
    let links = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    assert_eq!(links.len(), 1);
    assert_eq!(
        hex::encode(links[0].trace_id),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(hex::encode(links[0].span_id), "00f067aa0ba902b7");
    for bad in [
        "",
        "00-xyz-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ] {
        assert!(with(bad).is_empty(), "{bad}");
    }
}

#[test]
fn unmatched_exchanges_make_spans_only_when_configured() {
    let ex = exchange("shop-api", Role::Server, "GET", "/health").respond(200, "ok");
    assert_eq!(builder().build(&ex), (MatchOutcome::Unmatched, None));
    let config = "[[service]]\nname = \"shop-api\"\nunmatched = \"span\"\n";
    let rules =
        RuleSet::compile(&crate::config::Config::parse(config, "t").unwrap().services).unwrap();
    let mut b = SpanBuilder::new(rules, Redactor::default(), "h".into(), 0);
    let (outcome, span) = b.build(&ex);
    let span = span.unwrap();
    assert_eq!(outcome, MatchOutcome::Unmatched);
    assert_eq!((span.name.as_str(), span.parent_span_id), ("GET", None));
    assert!(attr(&span, "order.id").is_none() && attr(&span, "http.route").is_none());
}

#[test]
fn lookup_spans_report_observed_status() {
    let ex = exchange("crm-api", Role::Server, "GET", "/crm/v1/deals/SO-1").respond(
        200,
        r#"{"deal":{"order":{"id":"SO-1","status":"SHIPPED"}}}"#,
    );
    let span = builder().build(&ex).1.unwrap();
    assert_eq!(attr(&span, "order.observed_status").cloned(), s("SHIPPED"));
    assert_eq!(attr(&span, "order.lookup").cloned(), s("found"));
    assert_eq!(attr(&span, "order.status"), None);
}

#[test]
fn only_what_the_client_chose_is_checked_for_redaction() {
    // A literal segment of the matching template is configuration: never redacted, even
    // when a pattern would match it.
    let r = Redactor::new(&["^orders$", "^x@y$"]).unwrap();
    let literal = |i: usize| i == 2;
    assert_eq!(
        r.path_with("/api/v1/orders/x@y", None, literal),
        "/api/v1/orders/{redacted}"
    );
    assert_eq!(
        r.path("/api/v1/orders/x@y", None),
        "/api/v1/{redacted}/{redacted}"
    );
    assert_eq!(
        r.path("x@y/a", None),
        "{redacted}/a",
        "a target not starting with '/' is checked whole"
    );
}

proptest::proptest! {
    /// Whatever a client sends, classifying and building never panic and exported paths stay
    /// bounded.
    #[test]
    fn arbitrary_requests_never_panic(
        target in "(/[a-zA-Z0-9%@._{}*?=&-]{0,12}){0,8}",
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        json in r#"\{"(orderRef|to|order_id)":("[A-Z_-]{0,10}"|[0-9]{1,3}|\{\}|null)\}"#,
        status in 100u16..600,
        role in 0u8..3,
    ) {
        let mut b = builder();
        let role = [Role::Server, Role::Client, Role::Unknown][role as usize];
        for service in ["shop-api", "mes-api", "crm-api", "other"] {
            for method in ["GET", "POST", "PUT"] {
                let mut ex = exchange(service, role, method, &target).request_body(&json).respond(status, &json);
                let (_, span) = b.build(&ex);
                if let Some(span) = span {
                    proptest::prop_assert!(matches!(span.attributes.get("url.path"), Some(AttrValue::Str(p)) if p.len() <= MAX_URL_PATH));
                }
                ex.request.body = bytes::Bytes::from(body.clone());
                let _ = b.build(&ex);
            }
        }
    }
}

#[test]
fn the_parser_keeps_the_headers_rules_and_links_read() {
    let config = crate::config::Config::embedded_default();
    let mut services = config.services.clone();
    let rule = &mut services[0].rules[0];
    rule.header = Some(crate::orders::HeaderMatch {
        name: "X-Tenant".into(),
        value: None,
    });
    let rules = RuleSet::compile(&services).unwrap();
    let b = SpanBuilder::new(rules, Redactor::default(), "h".into(), 0);
    let filter = b.headers_read();
    assert!(filter.keeps(b"x-tenant") && filter.keeps(b"TraceParent"));
    assert!(!filter.keeps(b"content-type") && !filter.keeps(b"host"));
}

#[test]
fn addresses_read_as_the_standard_library_writes_them() {
    for ip in [
        "0.0.0.0",
        "127.0.0.1",
        "10.20.30.40",
        "255.255.255.255",
        "1.99.100.9",
        "::1",
    ] {
        let addr = SocketAddr::new(ip.parse().unwrap(), 80);
        assert_eq!(ip_text(addr), addr.ip().to_string());
    }
}
