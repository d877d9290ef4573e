//! As root, against a real RabbitMQ node of the test's own: a third-party client (Python's
//! pika) publishes with confirms and consumes with manual acks while `tracer agent` traces
//! it from the kernel. Each message becomes a producer span and a consumer span with the
//! right exchange, routing key, queue, message id and order id (taken from the correlation
//! id, a header and the JSON body), the consumer span linked to the producer's.

#[path = "support/testbed_run.rs"]
mod testbed_run;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::broker::{Broker, Ports};
use testbed_run::{bin_dir, free_port, scratch};

fn config(tag: &str) -> String {
    let ids = r#"[{ from = "property", name = "correlation-id" }, { from = "header", name = "x-order-id" }, { from = "body.json", path = "orderRef" }]"#;
    format!(
        r#"
[[capture.target]]
service = "pika-client"
cmdline = "amqp_pika\\.py [0-9]+ {tag}"

[[service]]
name = "rabbitmq"

[[service.rule]]
name = "test.publish"
protocol = "amqp"
exchange = "shop.test-orders"
routing_key = "orders.*"
side = "client"
kind = "reference"
order_id = {ids}

[[service]]
name = "pika-client"

[[service.rule]]
name = "test.consume"
protocol = "amqp"
queue = "pika.test-orders"
side = "server"
kind = "reference"
order_id = {ids}

[export]
kind = "stdout"
"#
    )
}

fn wait_for(what: &str, log: &std::path::Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pika_publishes_and_consumes_become_linked_message_spans() {
    let dir = scratch("amqp-pika");
    let ports = Ports {
        amqp: free_port(),
        dist: free_port(),
        epmd: free_port(),
    };
    let name = format!("pika{}", std::process::id());
    let broker = Broker::start(&name, ports, &dir.join("rabbitmq"))
        .await
        .expect("a RabbitMQ node (cargo xtask prereqs installs rabbitmq-server)");

    let tag = format!("t{}", std::process::id());
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, config(&tag)).unwrap();
    let agent_log = dir.join("agent.log");
    let spans_path = dir.join("spans.jsonl");
    let mut agent = Command::new(bin_dir().join("tracer"))
        .args(["agent", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&spans_path).unwrap())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .expect("start tracer agent");
    wait_for("the agent did not start", &agent_log, "waiting for target");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/amqp_pika.py");
    let mut client = Command::new("/usr/bin/python3")
        .args([script, &ports.amqp.to_string(), &tag])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3 with pika (Debian python3-pika)");
    wait_for(
        "the agent did not trace the client",
        &agent_log,
        "as pika-client",
    );
    writeln!(client.stdin.as_mut().unwrap(), "go").unwrap();
    let mut line = String::new();
    tokio::task::block_in_place(|| {
        BufReader::new(client.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap()
    });
    assert_eq!(line.trim(), "done", "the pika client failed");
    assert!(client.wait().unwrap().success());
    tokio::time::sleep(Duration::from_secs(2)).await;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    assert!(agent.wait().unwrap().success());
    drop(broker);

    let spans: Vec<serde_json::Value> = std::fs::read_to_string(&spans_path)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let attr =
        |span: &serde_json::Value, key: &str| span["attributes"][key].as_str().map(str::to_string);
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        let mut list: Vec<_> = spans.iter().filter(|s| s["kind"] == kind).collect();
        list.sort_by_key(|s| attr(s, "order.id"));
        list
    };
    let (producers, consumers) = (of_kind("producer"), of_kind("consumer"));
    let log = std::fs::read_to_string(&agent_log).unwrap();
    assert_eq!(producers.len(), 3, "{spans:#?}\n{log}");
    assert_eq!(consumers.len(), 3, "{spans:#?}\n{log}");
    for (i, (producer, consumer)) in producers.iter().zip(&consumers).enumerate() {
        let order = format!("SO-P{}", i + 1);
        let message_id = format!("m-{}", i + 1);
        for span in [producer, consumer] {
            assert_eq!(attr(span, "order.id"), Some(order.clone()), "{span}");
            assert_eq!(attr(span, "messaging.system").as_deref(), Some("rabbitmq"));
            assert_eq!(
                attr(span, "messaging.destination.name").as_deref(),
                Some("shop.test-orders")
            );
            assert_eq!(
                attr(span, "messaging.rabbitmq.destination.routing_key").as_deref(),
                Some("orders.eu")
            );
            assert_eq!(attr(span, "messaging.message.id"), Some(message_id.clone()));
            assert!(attr(span, "error.type").is_none(), "{span}");
            assert_eq!(
                span["trace_id"].as_str(),
                Some(hex::encode(tracer::spans::order_trace_id(&order)).as_str())
            );
        }
        assert_eq!(
            attr(producer, "order.rule").as_deref(),
            Some("test.publish")
        );
        assert_eq!(attr(producer, "peer.service").as_deref(), Some("rabbitmq"));
        assert_eq!(
            attr(consumer, "order.rule").as_deref(),
            Some("test.consume")
        );
        assert_eq!(
            attr(consumer, "messaging.destination.subscription.name").as_deref(),
            Some("pika.test-orders")
        );
        assert_eq!(
            consumer["links"][0]["span_id"], producer["span_id"],
            "{consumer}"
        );
    }
    let operations: Vec<_> = consumers
        .iter()
        .map(|s| attr(s, "messaging.operation.type").unwrap())
        .collect();
    assert_eq!(operations.iter().filter(|o| *o == "receive").count(), 1);
    assert_eq!(operations.iter().filter(|o| *o == "process").count(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
