//! End to end, as root: the testbed runs with faults, RabbitMQ between its MES and CRM, while
//! `tracer agent` traces it from the kernel and exports over OTLP/gRPC to a receiver built
//! from opentelemetry-proto. Every exchange of the testbed's own request log, and every
//! message of its message log, must arrive as one span with the right order, service, side,
//! route (or exchange and routing key) and outcome; an order's spans share its trace id;
//! healthy orders show all ten statuses accepted by their owners; faulted ones stop where the
//! truth says.

#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;
#[path = "support/spans_vs_logs.rs"]
mod spans_vs_logs;
#[path = "support/testbed_run.rs"]
mod testbed_run;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use otlp_receiver::OtlpReceiver;
use spans_vs_logs::SPAN_KIND_SERVER;
use testbed::messagelog::{MessageSide, read_message_log};
use testbed::requestlog::read_request_log;
use testbed::truth::read_truth;
use testbed::{FaultKind, Service, Status};
use testbed_run::{Run, bin_dir, free_base_port, scratch};

/// `tracer agent`, exporting to the receiver, its stderr in a file.
struct Agent {
    child: Child,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(receiver: &OtlpReceiver, dir: &std::path::Path) -> Agent {
        let log = dir.join("agent.log");
        let child = Command::new(bin_dir().join("tracer"))
            // The endpoint alone switches the embedded default (stdout) to OTLP/gRPC.
            .args(["agent"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.grpc_endpoint())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start tracer agent");
        let agent = Agent { child, log };
        // Attached once it waits for (or traces) its three targets.
        agent.wait_for_log(|log| log.matches("waiting for target").count() >= 3);
        agent
    }

    fn log(&self) -> String {
        let mut text = String::new();
        std::fs::File::open(&self.log)
            .and_then(|mut f| f.read_to_string(&mut text))
            .unwrap();
        text
    }

    fn wait_for_log(&self, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.log()) {
            assert!(
                Instant::now() < deadline,
                "the agent did not get ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGINT, then the counters line it prints on exit.
    fn stop(mut self) -> serde_json::Value {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "agent exited with {status}:\n{log}");
        let line = log
            .lines()
            .rev()
            .find(|l| l.starts_with("{\"event\":\"counters\""))
            .unwrap_or_else(|| panic!("no counters line in the agent's log:\n{log}"));
        serde_json::from_str(line).unwrap()
    }
}

fn owner(status: Status) -> Service {
    match status {
        Status::Initiated | Status::FileUploaded | Status::Submitted => Service::Shop,
        Status::ManufacturingApproved | Status::Closed => Service::Crm,
        _ => Service::Mes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_testbed_exchange_becomes_an_order_span() {
    let dir = scratch("e2e-agent");
    let receiver = OtlpReceiver::start().await;
    let agent = Agent::start(&receiver, &dir);

    let run = Run {
        orders: 80,
        rate: 20.0,
        faults: "all=0.03",
        seed: 42,
        base_port: free_base_port(),
        dir: &dir,
        tls: false,
    };
    tokio::task::block_in_place(|| run.run());

    let log = read_request_log(run.request_log()).unwrap();
    let messages = read_message_log(run.message_log()).unwrap();
    let expected = spans_vs_logs::expected(&log, &messages);
    assert!(
        messages.iter().any(|m| m.side == MessageSide::Consume),
        "no message went through the broker"
    );
    assert!(
        expected.len() > 500,
        "too little traffic: {}",
        expected.len()
    );
    // The agent traces every process of the testbed's executables on this machine: other
    // runs (other tests, other sessions) may be traced too. This run's orders are its own.
    let truth = read_truth(run.truth()).unwrap();
    let ours: BTreeSet<&str> = truth.iter().map(|o| o.order_id.as_str()).collect();
    let our_spans = || spans_vs_logs::of_orders(receiver.spans(), &ours);
    // Deliveries never acknowledged are given up by the agent after its ack timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    while our_spans().len() < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A moment more, so spans beyond the expected count show as a mismatch below.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let spans = our_spans();
    let counters = agent.stop();

    // Every exchange is exactly one span, and nothing else is.
    if let Some(differences) = spans_vs_logs::differences(&expected, &spans) {
        panic!("{differences}\ncounters: {counters}");
    }

    // One trace per order, with the documented id and the root span as parent.
    for span in &spans {
        let order = span.attr("order.id").expect("order.id");
        assert_eq!(span.span.trace_id, tracer::spans::order_trace_id(&order));
        assert_eq!(
            span.span.parent_span_id,
            tracer::spans::order_root_span_id(&order)
        );
        assert!(span.attr("order.rule").is_some());
        if span.attr("messaging.system").is_none() {
            assert!(span.attr("http.route").is_some());
        }
    }

    // Healthy orders: all ten statuses, each accepted by the service that owns it. Faulted
    // orders: the last status accepted is the one the systems really reached, but where the
    // wire cannot show it (a save lost after a 2xx: the monitor's lookups catch that).
    let mut accepted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for span in spans.iter().filter(|s| s.span.kind == SPAN_KIND_SERVER) {
        if let (Some(order), Some(status)) = (span.attr("order.id"), span.attr("order.status")) {
            let service = span.resource_attr("service.name").unwrap();
            let owned = Status::ALL
                .iter()
                .any(|s| s.as_str() == status && owner(*s).as_str() == service);
            if owned {
                accepted.entry(order).or_default().insert(status);
            }
        }
    }
    let mut healthy = 0;
    for order in &truth {
        let seen = accepted.get(&order.order_id).cloned().unwrap_or_default();
        if order.faults.is_empty() {
            healthy += 1;
            let all: BTreeSet<String> =
                Status::ALL.iter().map(|s| s.as_str().to_string()).collect();
            assert_eq!(seen, all, "healthy order {} lacks statuses", order.order_id);
        } else if !order
            .faults
            .iter()
            .any(|f| f.kind == FaultKind::CompletionLost)
        {
            let last = Status::ALL
                .iter()
                .rev()
                .find(|s| seen.contains(s.as_str()))
                .copied();
            assert_eq!(
                last, order.final_status,
                "faulted order {} ({:?}) stops elsewhere on the wire",
                order.order_id, order.faults
            );
        }
    }
    assert!(healthy > 5, "too few healthy orders to judge: {healthy}");

    // Nothing was lost or misread on the way.
    assert_eq!(counters["capture"]["ring_full"], 0, "{counters}");
    assert_eq!(counters["streams"]["parse_errors"], 0, "{counters}");
    assert_eq!(counters["export"]["dropped_queue_full"], 0, "{counters}");
    let _ = std::fs::remove_dir_all(&dir);
}
