//! The rules' extraction from JSON bodies: the testbed's rules (embedded default config) see
//! exchanges whose request and response bodies are the input, on routes whose rules read the
//! order id and status from JSON.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tracer::capture::{Direction, Role};
use tracer::orders::RuleSet;
use tracer::protocol::Record;
use tracer_fuzz::{Feed, conn};

const ROUTES: [(&str, &str, &str); 4] = [
    ("shop-api", "POST", "/api/v1/orders"),
    ("mes-api", "POST", "/mes/api/pricing-requests"),
    ("mes-api", "POST", "/mes/api/work-orders/SO-1/transitions"),
    ("crm-api", "POST", "/crm/v1/webhooks/carrier"),
];

fn rules() -> &'static RuleSet {
    static RULES: OnceLock<RuleSet> = OnceLock::new();
    RULES.get_or_init(|| {
        RuleSet::compile(&tracer::config::Config::embedded_default().services)
            .expect("the embedded rules compile")
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&pick, rest)) = input.split_first() else {
        return;
    };
    let split = rest.len() / 2;
    let (request_body, response_body) = rest.split_at(split);
    let (service, method, path) = ROUTES[usize::from(pick) % ROUTES.len()];
    let request = [
        format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", request_body.len()).as_bytes(),
        request_body,
    ]
    .concat();
    let response = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            response_body.len()
        )
        .as_bytes(),
        response_body,
    ]
    .concat();
    let mut feed = Feed::new(service);
    let key = conn(3);
    feed.open(key, Role::Server);
    feed.data(key, Direction::Recv, 10, &request, request.len() as u64);
    feed.data(key, Direction::Send, 20, &response, response.len() as u64);
    feed.close(key, 30);
    for record in &feed.out {
        if let Record::Http(exchange) = record {
            let _ = rules().classify(exchange);
        }
    }
});
