use super::*;
use crate::spans::{AttrValue, SpanKind, SpanStatus};

fn env(pairs: &[(&str, &str)]) -> OtelEnv {
    OtelEnv::from_pairs(pairs.iter().copied())
}

/// The agent's reading of `pairs` over `config`: the warnings, or the error.
fn agent_env(config: &mut ExportConfig, pairs: &[(&str, &str)]) -> Result<Vec<String>, String> {
    config.apply_env(&env(pairs), None, ExportUse::Agent)
}

fn otlp(kind: ExportKind) -> ExportConfig {
    ExportConfig {
        kind,
        ..ExportConfig::default()
    }
}

#[test]
fn endpoints_get_defaults_and_the_traces_path() {
    assert_eq!(
        otlp(ExportKind::OtlpGrpc).endpoint_url().unwrap(),
        "http://localhost:4317"
    );
    assert_eq!(
        otlp(ExportKind::OtlpHttp).endpoint_url().unwrap(),
        "http://localhost:4318/v1/traces"
    );
    let with = |kind, e: &str| {
        ExportConfig {
            endpoint: Some(e.into()),
            ..otlp(kind)
        }
        .endpoint_url()
    };
    assert_eq!(
        with(ExportKind::OtlpHttp, "https://c.example:4318/").unwrap(),
        "https://c.example:4318/v1/traces"
    );
    assert_eq!(
        with(ExportKind::OtlpHttp, "https://c.example/otlp/traces").unwrap(),
        "https://c.example/otlp/traces"
    );
    assert_eq!(
        with(ExportKind::OtlpGrpc, "http://[::1]:4317").unwrap(),
        "http://[::1]:4317"
    );
}

#[test]
fn plain_http_off_the_host_needs_insecure() {
    let remote = ExportConfig {
        endpoint: Some("http://collector.example:4317".into()),
        ..otlp(ExportKind::OtlpGrpc)
    };
    assert!(remote.validate().unwrap_err().contains("insecure = true"));
    assert!(
        ExportConfig {
            insecure: true,
            ..remote.clone()
        }
        .validate()
        .is_ok()
    );
    let ftp = ExportConfig {
        endpoint: Some("ftp://x".into()),
        ..otlp(ExportKind::OtlpGrpc)
    };
    assert!(ftp.validate().unwrap_err().contains("ftp"));
    let ca_on_http = ExportConfig {
        ca_file: Some("/x.pem".into()),
        ..otlp(ExportKind::OtlpGrpc)
    };
    assert!(ca_on_http.validate().unwrap_err().contains("https"));
}

#[test]
fn standard_variables_override_the_file() {
    let mut config = otlp(ExportKind::OtlpGrpc);
    config.headers.insert("x-file".into(), "1".into());
    agent_env(
        &mut config,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector.example:4318/",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Bearer%20abc, x-tenant = shop",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1"),
        ],
    )
    .unwrap();
    assert_eq!(config.kind, ExportKind::OtlpHttp);
    assert_eq!(
        config.endpoint_url().unwrap(),
        "https://collector.example:4318/v1/traces"
    );
    assert_eq!(config.headers["authorization"], "Bearer abc");
    assert_eq!(config.headers["x-tenant"], "shop");
    assert_eq!(config.headers["x-file"], "1");
    assert_eq!(config.timeout_ms, 2500, "the traces-specific variable wins");

    let mut config = otlp(ExportKind::OtlpHttp);
    agent_env(
        &mut config,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://ignored.example"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://c.example/custom",
            ),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
        ],
    )
    .unwrap();
    assert_eq!(config.endpoint_url().unwrap(), "https://c.example/custom");
    assert_eq!(
        config.ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
}

#[test]
fn an_endpoint_alone_switches_stdout_to_otlp_grpc() {
    let mut config = ExportConfig::default();
    assert_eq!(config.kind, ExportKind::Stdout);
    let warnings = agent_env(
        &mut config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")],
    )
    .unwrap();
    assert_eq!(config.kind, ExportKind::OtlpGrpc);
    assert_eq!(config.endpoint_url().unwrap(), "http://localhost:4317");
    assert!(warnings.is_empty(), "{warnings:?}");
    // The traces-specific endpoint does the same; the protocol variable picks HTTP.
    let mut config = ExportConfig::default();
    agent_env(
        &mut config,
        &[
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    )
    .unwrap();
    assert_eq!(config.kind, ExportKind::OtlpHttp);
    // A file that says HTTP keeps HTTP when only the endpoint is set.
    let mut config = otlp(ExportKind::OtlpHttp);
    agent_env(
        &mut config,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")],
    )
    .unwrap();
    assert_eq!(
        config.endpoint_url().unwrap(),
        "http://localhost:4318/v1/traces"
    );
}

#[test]
fn traces_exporter_and_the_flag_win_over_the_endpoint_with_a_warning() {
    let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317");
    let mut config = ExportConfig::default();
    let warnings = agent_env(
        &mut config,
        &[endpoint, ("OTEL_TRACES_EXPORTER", "console")],
    )
    .unwrap();
    assert_eq!(config.kind, ExportKind::Stdout);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT is set") && w.contains("stdout")),
        "{warnings:?}"
    );
    let mut config = ExportConfig::default();
    agent_env(&mut config, &[("OTEL_TRACES_EXPORTER", "otlp")]).unwrap();
    assert_eq!(
        config.kind,
        ExportKind::OtlpGrpc,
        "otlp means gRPC by default"
    );
    let mut config = otlp(ExportKind::OtlpGrpc);
    agent_env(&mut config, &[("OTEL_TRACES_EXPORTER", "none")]).unwrap();
    assert_eq!(config.kind, ExportKind::None);
    // --export beats both variables; each one it overrides is named.
    let mut config = ExportConfig::default();
    let warnings = config
        .apply_env(
            &env(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")]),
            Some(ExportKind::None),
            ExportUse::Agent,
        )
        .unwrap();
    assert_eq!(config.kind, ExportKind::None);
    for name in ["OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"] {
        assert!(
            warnings.iter().any(|w| w.starts_with(name)),
            "{name}: {warnings:?}"
        );
    }
    let mut config = ExportConfig::default();
    let warnings = config
        .apply_env(
            &env(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            Some(ExportKind::OtlpGrpc),
            ExportUse::Agent,
        )
        .unwrap();
    assert_eq!(config.kind, ExportKind::OtlpGrpc);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL")),
        "{warnings:?}"
    );
}

#[test]
fn variables_without_effect_are_named() {
    let mut config = otlp(ExportKind::OtlpGrpc);
    let warnings = agent_env(
        &mut config,
        &[
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("OTEL_SERVICE_NAME", "tracer"),
            ("NOT_OTEL", "x"),
        ],
    )
    .unwrap();
    for name in [
        "OTEL_METRICS_EXPORTER",
        "OTEL_TRACES_SAMPLER",
        "OTEL_SERVICE_NAME",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(name)),
            "{name}: {warnings:?}"
        );
    }
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert_eq!(
        config.service_name, None,
        "the agent has no spans of its own to name"
    );
    // The central monitor has no exporter: the OTLP variables do nothing there.
    let mut config = ExportConfig::default();
    let warnings = config
        .apply_env(
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")]),
            None,
            ExportUse::Forwarding,
        )
        .unwrap();
    assert!(warnings[0].contains("--forward-to"), "{warnings:?}");
    assert_eq!(config.kind, ExportKind::Stdout);
}

#[test]
fn service_name_and_resource_attributes_join_every_resource() {
    let mut config = ExportConfig::default();
    config
        .resource_attributes
        .insert("team".into(), "file".into());
    let warnings = config
        .apply_env(
            &env(&[
                ("OTEL_SERVICE_NAME", "shop-order-lifecycle"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod, team=ops%20east,service.name=ignored,host.name=h",
                ),
            ]),
            None,
            ExportUse::AllInOne,
        )
        .unwrap();
    assert_eq!(
        config.service_name.as_deref(),
        Some("shop-order-lifecycle"),
        "OTEL_SERVICE_NAME wins"
    );
    assert_eq!(config.resource_attributes["deployment.environment"], "prod");
    assert_eq!(
        config.resource_attributes["team"], "ops east",
        "the variable wins over the file"
    );
    assert!(!config.resource_attributes.contains_key("host.name"));
    assert!(
        warnings.iter().any(|w| w.contains("sets host.name")),
        "{warnings:?}"
    );
    // service.name from the attributes names the tracer's own spans when OTEL_SERVICE_NAME is absent.
    let mut config = ExportConfig::default();
    config
        .apply_env(
            &env(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=own")]),
            None,
            ExportUse::Forwarding,
        )
        .unwrap();
    assert_eq!(config.service_name.as_deref(), Some("own"));
    // A malformed value is dropped whole, with a warning.
    let mut config = ExportConfig::default();
    let warnings = agent_env(&mut config, &[("OTEL_RESOURCE_ATTRIBUTES", "a=1,broken")]).unwrap();
    assert!(config.resource_attributes.is_empty());
    assert!(
        warnings[0].starts_with("OTEL_RESOURCE_ATTRIBUTES is not used"),
        "{warnings:?}"
    );
}

/// A writer the test keeps reading after the exporter took its clone.
#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_exporter_adds_resource_attributes_without_replacing_the_spans_own() {
    let out = SharedBuf::default();
    let mut config = ExportConfig::default();
    config
        .resource_attributes
        .insert("deployment.environment".into(), "prod".into());
    config
        .resource_attributes
        .insert("service.name".into(), "never".into());
    let exporter = Exporter::start_lines(&config, Box::new(out.clone()));
    exporter.handle().submit(record("a", "1"));
    exporter.shutdown(Duration::from_secs(5)).await;
    let line: serde_json::Value = serde_json::from_slice(&out.0.lock().unwrap()).unwrap();
    assert_eq!(line["resource"]["deployment.environment"], "prod");
    assert_eq!(line["resource"]["service.name"], "a");
}

#[test]
fn bad_variables_are_errors_that_name_them() {
    for (pairs, expected) in [
        (
            vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
            "http/json",
        ),
        (vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")], "milliseconds"),
        (
            vec![("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
            "name=value",
        ),
        (vec![("OTEL_TRACES_EXPORTER", "zipkin")], "zipkin"),
        (
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector.example:4317",
            )],
            "insecure",
        ),
    ] {
        let err = agent_env(&mut otlp(ExportKind::OtlpGrpc), &pairs).unwrap_err();
        assert!(err.contains(expected), "{expected:?} in {err}");
    }
}

#[test]
fn headers_never_show_in_debug_output() {
    let mut config = otlp(ExportKind::OtlpGrpc);
    config
        .headers
        .insert("authorization".into(), "Bearer secret-token".into());
    let text = format!("{config:?}");
    assert!(
        !text.contains("secret-token") && text.contains("authorization"),
        "{text}"
    );
}

#[test]
fn config_section_parses_and_validates() {
    let parse = |text: &str| crate::config::Config::parse(text, "t").map(|c| c.export);
    let config = parse("[export]\nkind = \"otlp-http\"\nendpoint = \"https://c.example\"\nheaders = { authorization = \"x\" }\nqueue_size = 100\nbatch_size = 10\n").unwrap();
    assert_eq!(
        (config.kind, config.queue_size, config.batch_size),
        (ExportKind::OtlpHttp, 100, 10)
    );
    for (text, expected) in [
        ("[export]\nkind = \"zipkin\"\n", "zipkin"),
        ("[export]\nbatch_size = 0\n", "batch_size"),
        (
            "[export]\nqueue_size = 10\nbatch_size = 20\n",
            "batch_size <= queue_size",
        ),
        ("[export]\nclient_cert = \"c.pem\"\n", "client_key"),
        (
            "[export]\nredact_path_segments = [\"(\"]\n",
            "regular expression",
        ),
        (
            "[export]\nheaders = { \"bad header\" = \"x\" }\n",
            "header name",
        ),
    ] {
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{expected:?} in {err}");
    }
}

#[test]
fn missing_tls_files_are_a_clear_error() {
    let config = ExportConfig {
        endpoint: Some("https://collector.example:4317".into()),
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..otlp(ExportKind::OtlpGrpc)
    };
    let err = otlp::OtlpClient::new(&config).err().unwrap().to_string();
    assert!(
        err.contains("/nonexistent/ca.pem") && err.contains("PEM"),
        "{err}"
    );
    let garbage = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(garbage.path(), "not a certificate").unwrap();
    let config = ExportConfig {
        kind: ExportKind::OtlpHttp,
        ca_file: Some(garbage.path().into()),
        ..config
    };
    let err = otlp::OtlpClient::new(&config).err().unwrap().to_string();
    assert!(err.contains("no certificate"), "{err}");
}

fn record(service: &str, name: &str) -> SpanRecord {
    SpanRecord {
        trace_id: [1; 16],
        span_id: [2; 8],
        parent_span_id: None,
        links: Vec::new(),
        name: name.into(),
        kind: SpanKind::Client,
        start_unix_nano: 10,
        end_unix_nano: 20,
        status: SpanStatus::Error,
        resource: [("service.name".into(), AttrValue::Str(service.into()))].into(),
        attributes: [
            ("n".into(), AttrValue::Double(f64::NAN)),
            ("b".into(), AttrValue::Bool(true)),
        ]
        .into(),
        events: Vec::new(),
    }
}

#[test]
fn a_span_is_estimated_at_least_at_what_its_text_holds() {
    let small = record("a", "1");
    let mut large = small.clone();
    large
        .attributes
        .insert("url.full".into(), AttrValue::Str("u".repeat(10_000)));
    let (small, large) = (size::span_bytes(&small), size::span_bytes(&large));
    assert!(small >= std::mem::size_of::<SpanRecord>());
    assert!(large >= small + 10_000, "{small} {large}");
    assert!(large < small + 10_200, "{small} {large}");
}

#[test]
fn max_queue_bytes_parses_and_must_fit_a_span() {
    let config: ExportConfig = toml::from_str("max_queue_bytes = 1048576\n").unwrap();
    assert_eq!(config.max_queue_bytes, 1 << 20);
    assert_eq!(ExportConfig::default().max_queue_bytes, 32 << 20);
    let tiny = ExportConfig {
        max_queue_bytes: 100,
        ..ExportConfig::default()
    };
    assert!(tiny.validate().unwrap_err().contains("max_queue_bytes"));
}

#[test]
fn requests_group_spans_by_resource() {
    let request = to_request(&[record("a", "1"), record("b", "2"), record("a", "3")]);
    let names: Vec<Vec<&str>> = request
        .resource_spans
        .iter()
        .map(|rs| {
            rs.scope_spans[0]
                .spans
                .iter()
                .map(|s| s.name.as_str())
                .collect()
        })
        .collect();
    assert_eq!(names, [vec!["1", "3"], vec!["2"]]);
    let span = &request.resource_spans[0].scope_spans[0].spans[0];
    assert!(span.parent_span_id.is_empty());
    assert_eq!((span.kind, span.status.as_ref().unwrap().code), (3, 2));
}

#[test]
fn a_line_is_written_even_for_odd_values() {
    let mut out = Vec::new();
    write_line(&mut out, &record("a", "1"));
    let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(line["attributes"]["n"], serde_json::Value::Null);
    assert_eq!(line["parent_span_id"], serde_json::Value::Null);
    assert_eq!(line["kind"], "client");
}

#[tokio::test]
async fn none_and_full_queues_never_block() {
    let exporter = Exporter::start(&ExportConfig {
        kind: ExportKind::None,
        ..ExportConfig::default()
    })
    .unwrap();
    exporter.handle().submit(record("a", "1"));
    assert!(exporter.flush(std::time::Duration::from_secs(1)).await);
    assert_eq!(exporter.handle().counters(), ExportCounters::default());
}

#[tokio::test]
async fn fanout_gives_consumers_everything_and_the_exporter_the_sample() {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let exporter = Exporter::start_lines(&ExportConfig::default(), Box::new(std::io::sink()));
    let sampling = crate::sampling::SamplingConfig {
        default_ratio: 0.0,
        ..Default::default()
    };
    let mut fanout =
        Fanout::new(Sampler::new(sampling), exporter.handle()).with_consumer(Box::new(tx));
    let mut ok = record("a", "ok");
    ok.status = SpanStatus::Unset;
    fanout.submit(ok);
    fanout.submit(record("a", "failed"));
    assert_eq!(rx.recv().await.unwrap().name, "ok");
    assert_eq!(rx.recv().await.unwrap().name, "failed");
    assert_eq!(
        exporter
            .shutdown(std::time::Duration::from_secs(5))
            .await
            .exported,
        1,
        "only the error passed sampling"
    );
}

#[tokio::test]
async fn a_full_consumer_is_counted_not_waited_for() {
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    let exporter = Exporter::start(&ExportConfig {
        kind: ExportKind::None,
        ..ExportConfig::default()
    })
    .unwrap();
    let mut fanout = Fanout::new(Sampler::new(Default::default()), exporter.handle())
        .with_consumer(Box::new(tx));
    for _ in 0..3 {
        fanout.submit(record("a", "x"));
    }
    assert_eq!(fanout.consumer_drops(), 2);
}
