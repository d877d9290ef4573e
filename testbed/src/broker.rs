//! A RabbitMQ node of the testbed's own: started from Debian's `rabbitmq-server` with its own
//! node name, ports, data directory and Erlang port mapper (`epmd`, on a port of its own, so
//! concurrent testbeds and anything else on the host never share one), and stopped by PID.
//! Also the shop's topology on it (exchanges, queues, bindings) and the AMQP address clients
//! use.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

/// Where Debian installs the server's scripts.
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const EPMD: &str = "/usr/bin/epmd";

/// Exchange of priced orders (MES → CRM), a topic exchange keyed `priced.<region>`.
pub const PRICED_EXCHANGE: &str = "shop.priced-orders";
/// Exchange of approved work orders (CRM → MES), a direct exchange keyed by plant.
pub const WORK_EXCHANGE: &str = "shop.work-orders";
/// The CRM's queue of priced orders.
pub const CRM_QUEUE: &str = "crm.priced-orders";
/// The MES's queue of work orders.
pub const MES_QUEUE: &str = "mes.work-orders";
/// The MES's rush line, whose worker is overloaded: what reaches it is never acknowledged.
pub const MES_RUSH_QUEUE: &str = "mes.work-orders.rush";

/// Routing keys: the normal ones, and those the faults take (see `testbed/README.md`).
pub mod keys {
    /// Priced orders of the shop's region.
    pub const PRICED: &str = "priced.eu";
    /// A region whose queue keeps messages for no time (`x-message-ttl` 0, no consumer): the
    /// broker drops them.
    pub const PRICED_EXPIRED: &str = "priced.apac";
    /// A region nothing is bound to: published as mandatory, the broker returns it.
    pub const PRICED_UNROUTED: &str = "priced.latam";
    /// Work orders of the main plant.
    pub const WORK: &str = "plant-1";
    /// A plant whose queue holds nothing (`x-max-length` 0): the broker drops them.
    pub const WORK_OVER_LIMIT: &str = "plant-2";
    /// Rush orders, for the MES's overloaded rush line.
    pub const WORK_RUSH: &str = "rush";
}

/// The ports of one node: AMQP, Erlang distribution, and its port mapper.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub amqp: u16,
    pub dist: u16,
    pub epmd: u16,
}

/// `amqp://` address of a node on loopback (RabbitMQ's default user, allowed off loopback
/// by the node's config, which only listens on loopback anyway).
pub fn amqp_url(port: u16) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

/// A running node; stopped (and its directory removed) when dropped.
pub struct Broker {
    pub ports: Ports,
    dir: PathBuf,
    server: Child,
    epmd: Child,
}

/// Children die with the thread that started them, even when the parent is killed.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Broker {
    /// Starts a node named `name` under `dir` (created, and removed at the end). Returns once
    /// it accepts AMQP connections (10–20 s).
    pub async fn start(name: &str, ports: Ports, dir: &Path) -> anyhow::Result<Broker> {
        if !Path::new(SERVER).exists() {
            bail!(
                "{SERVER} not found: install RabbitMQ (`apt-get install rabbitmq-server`, or \
                 `cargo xtask prereqs`)"
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{}\nloopback_users = none\n\
                 log.console = false\nlog.file.level = warning\n",
                ports.amqp
            ),
        )?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        // Our own port mapper, in the foreground: its PID is ours to stop.
        let mut epmd = Command::new(EPMD);
        epmd.args(["-port", &ports.epmd.to_string(), "-address", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut epmd);
        let epmd = epmd
            .spawn()
            .with_context(|| format!("cannot start {EPMD}"))?;
        let mut server = Command::new(SERVER);
        server
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", format!("{name}@localhost"))
            .env("RABBITMQ_NODE_PORT", ports.amqp.to_string())
            .env("RABBITMQ_DIST_PORT", ports.dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", ports.epmd.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut server);
        let server = server
            .spawn()
            .with_context(|| format!("cannot start {SERVER}"))?;
        let mut broker = Broker {
            ports,
            dir: dir.to_path_buf(),
            server,
            epmd,
        };
        broker.wait_ready(Duration::from_secs(90)).await?;
        Ok(broker)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.server.try_wait()? {
                bail!(
                    "rabbitmq-server exited ({status}) while starting; see {}",
                    self.dir.join("server.log").display()
                );
            }
            let url = amqp_url(self.ports.amqp);
            if let Ok(conn) = Connection::connect(&url, ConnectionProperties::default()).await {
                let _ = conn.close(200, "ready").await;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "rabbitmq-server did not accept AMQP on port {} within {within:?}; see {}",
                    self.ports.amqp,
                    self.dir.join("server.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops the node (SIGTERM, which the server script turns into a clean stop through the
    /// port mapper; SIGKILL after a while), then the Erlang VM by the PID it wrote, should it
    /// outlive the script, then the port mapper; removes the directory.
    pub fn stop(&mut self) {
        let vm = std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok());
        stop_child(&mut self.server, Duration::from_secs(15));
        if let Some(vm) = vm {
            // SAFETY: kill(2) on the VM our server script started (its PID file is ours).
            let alive = || unsafe { libc::kill(vm, 0) } == 0;
            unsafe { libc::kill(vm, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if alive() {
                unsafe { libc::kill(vm, libc::SIGKILL) };
            }
        }
        stop_child(&mut self.epmd, Duration::from_secs(2));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGTERM, then SIGKILL after `grace`; reaped either way.
fn stop_child(child: &mut Child, grace: Duration) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Declares the shop's exchanges, queues and bindings (idempotent).
pub async fn declare_topology(url: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .context("cannot connect to the broker to declare the topology")?;
    let ch = conn.create_channel().await?;
    let exchange = |name, kind| {
        ch.exchange_declare(
            name,
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
    };
    exchange(PRICED_EXCHANGE, ExchangeKind::Topic).await?;
    exchange(WORK_EXCHANGE, ExchangeKind::Direct).await?;
    let limited = |arg: &str, value: i32| {
        let mut args = FieldTable::default();
        args.insert(arg.into(), AMQPValue::LongInt(value));
        args
    };
    let queues = [
        (
            CRM_QUEUE,
            FieldTable::default(),
            PRICED_EXCHANGE,
            keys::PRICED,
        ),
        (
            "crm.priced-orders.apac",
            limited("x-message-ttl", 0),
            PRICED_EXCHANGE,
            keys::PRICED_EXPIRED,
        ),
        (MES_QUEUE, FieldTable::default(), WORK_EXCHANGE, keys::WORK),
        (
            MES_RUSH_QUEUE,
            FieldTable::default(),
            WORK_EXCHANGE,
            keys::WORK_RUSH,
        ),
        (
            "mes.work-orders.plant-2",
            limited("x-max-length", 0),
            WORK_EXCHANGE,
            keys::WORK_OVER_LIMIT,
        ),
    ];
    for (queue, args, exchange, key) in queues {
        ch.queue_declare(queue, QueueDeclareOptions::default(), args)
            .await
            .with_context(|| format!("cannot declare queue {queue}"))?;
        ch.queue_bind(
            queue,
            exchange,
            key,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let _ = conn.close(200, "topology declared").await;
    Ok(())
}
