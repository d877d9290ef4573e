//! `tracer monitor` as a child process of a test: free ports, start, wait until healthy, kill.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback address (bound, then released for the child to take).
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A child process, killed (SIGKILL) when dropped, however the test ends.
pub struct Process(pub Child);

impl Process {
    /// SIGKILL now: what a crash or the OOM killer does.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The listening addresses of one `tracer monitor`.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub api: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl Ports {
    pub fn free() -> Self {
        Self {
            api: free_port(),
            grpc: free_port(),
            http: free_port(),
        }
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.api)
    }

    pub fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }
}

/// `tracer monitor --config CONFIG` on `ports`, anonymous loopback access, plus `extra`
/// arguments; stderr goes to the test's.
pub fn spawn_monitor(config: &Path, ports: &Ports, extra: &[&str]) -> Process {
    let child = Command::new(env!("CARGO_BIN_EXE_tracer"))
        .args(["monitor", "--config"])
        .arg(config)
        .args(["--listen", &ports.api.to_string()])
        .args(["--otlp-grpc", &ports.grpc.to_string()])
        .args(["--otlp-http", &ports.http.to_string()])
        .arg("--allow-anonymous-loopback")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the tracer binary starts");
    Process(child)
}

/// Waits until `GET {api}/healthz` answers 200.
pub async fn wait_healthy(client: &reqwest::Client, api: &str) {
    super::wait_for(Duration::from_secs(20), "monitor up", || async {
        let r = client.get(format!("{api}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

/// Posts spans to an OTLP/HTTP receiver as protobuf; the answer's status and body.
pub async fn post_spans(
    client: &reqwest::Client,
    url: &str,
    spans: &[tracer::spans::SpanRecord],
) -> (u16, Vec<u8>) {
    let body = prost::Message::encode_to_vec(&tracer::receiver::otlp_from_spans(spans));
    let response = client
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}
