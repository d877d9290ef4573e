//! The capture task: drains the ring buffer when it becomes readable, rescans /proc on a
//! timer, and hands batches to the consumer through a bounded queue (full → dropped and
//! counted: the kernel side must never wait for us, and memory must not grow).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracer_common::POLL_INTERVAL_MS;

use super::counters::UserCounters;
use super::decode::{Decoded, decode};
use super::event::CaptureEvent;
use super::procfs::{self, TableCache};
use super::tables::KernelTables;
use super::targets::Targets;
use super::tls::Attacher;

/// Events per batch handed to the consumer, and payload bytes: with `queue_batches` this
/// bounds what a slow consumer can make the agent hold.
const MAX_BATCH: usize = 1024;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Entries read before the scan timer gets a turn, so a flood cannot starve discovery.
const MAX_DRAIN: usize = 65536;

pub struct Worker {
    pub ring: AsyncFd<RingBuf<MapData>>,
    pub sink: Sink,
    pub scan_every: Duration,
}

/// Everything but the ring: split so the ring can be borrowed while the rest is updated.
pub struct Sink {
    pub tables: KernelTables,
    pub targets: Targets,
    pub tx: mpsc::Sender<Vec<CaptureEvent>>,
    pub counters: Arc<UserCounters>,
    pub tables_cache: TableCache,
    /// `None` with `[capture] tls = false` or when the kernel refused the TLS probes.
    pub tls: Option<Attacher>,
    /// Declared last: the links above are released before the programs.
    pub ebpf: aya::Ebpf,
}

impl Worker {
    pub async fn run(mut self) {
        let mut scans = spawn_scanner(self.scan_every);
        let mut poll = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let open = tokio::select! {
                procs = scans.recv() => match procs {
                    Some(procs) => self.sink.scan(procs),
                    None => false,
                },
                // Data events below the wake-up threshold do not wake this task.
                _ = poll.tick() => {
                    let (open, _) = self.sink.drain(self.ring.get_mut());
                    open
                }
                ready = self.ring.readable_mut() => match ready {
                    Ok(mut guard) => {
                        let (open, drained) = self.sink.drain(guard.get_inner_mut());
                        if drained {
                            guard.clear_ready();
                        }
                        open
                    }
                    Err(e) => {
                        tracing::error!("capture stopped: cannot poll the ring buffer: {e}");
                        false
                    }
                },
            };
            if !open {
                return;
            }
        }
    }
}

/// Reads /proc on the blocking pool every `every`: on a busy host a full scan takes long
/// enough that doing it on the draining task would let the ring fill. One scan in flight at a
/// time; the drain loop applies each as it arrives.
fn spawn_scanner(every: Duration) -> mpsc::Receiver<Vec<procfs::ProcInfo>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(procs) = tokio::task::spawn_blocking(procfs::processes).await else {
                return;
            };
            if tx.send(procs).await.is_err() {
                return;
            }
        }
    });
    rx
}

impl Sink {
    /// Applies one /proc scan to the kernel tables. Returns false once the consumer is gone.
    fn scan(&mut self, mut procs: Vec<procfs::ProcInfo>) -> bool {
        let kernel_pids: Vec<u32> = self.tables.targets.keys().filter_map(Result::ok).collect();
        // The kernel adds targets at exec, possibly after the scan read /proc: read those few
        // again, so they are judged on what they are now rather than taken for gone.
        for pid in &kernel_pids {
            if !procs.iter().any(|p| p.pid == *pid)
                && let Some(info) = procfs::process(*pid)
            {
                procs.push(info);
            }
        }
        let changes = self.targets.update(&procs);
        self.tables.reassert_bits(&kernel_pids);
        let mut batch = Vec::new();
        for pid in kernel_pids {
            // Added by the kernel at exec, but the full matchers say no (or it is gone).
            if !self.targets.is_tracked(pid) && !changes.removed.iter().any(|(p, _)| *p == pid) {
                let service = self.tables.targets.get(&pid, 0).map_or(0, |t| t.service);
                let name = self.service_name(service);
                self.tables.remove(pid, &name, &mut batch);
            }
        }
        for (pid, service) in changes.removed {
            let name = self.service_name(service);
            self.tables.remove(pid, &name, &mut batch);
            if let Some(tls) = &mut self.tls {
                tls.forget(pid);
            }
            tracing::info!("stopped tracing pid {pid} ({name}): exited or changed program");
        }
        for (pid, service) in changes.added {
            let name = self.service_name(service);
            match self
                .tables
                .add(pid, self.targets.entry(service), &name, &mut batch)
            {
                Ok(()) => tracing::info!("tracing pid {pid} as {name}"),
                Err(e) => tracing::warn!("cannot trace pid {pid} ({name}): {e}"),
            }
        }
        self.counters.targets.store(
            self.targets.tracked() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.scan_tls();
        self.send(batch)
    }

    /// Every target's mappings, for TLS libraries loaded since the last scan.
    fn scan_tls(&mut self) {
        let Some(tls) = &mut self.tls else {
            return;
        };
        let services = self.targets.services();
        for (pid, service) in self.targets.tracked_pids() {
            let name = services.get(service as usize).map_or("unknown", |s| &**s);
            tls.scan(&mut self.ebpf, pid, name);
        }
        tls.publish(&self.counters);
    }

    /// Reads up to `MAX_DRAIN` entries. Returns (consumer still there, ring emptied).
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> (bool, bool) {
        let mut batch = Vec::with_capacity(64);
        let mut bytes = 0;
        for _ in 0..MAX_DRAIN {
            let Some(item) = ring.next() else {
                let open = self.send(batch);
                // After the send: whoever reads this time finds the batch queued.
                self.counters
                    .drained_at
                    .store(crate::clock::monotonic_now_ns(), Ordering::Release);
                return (open, true);
            };
            let decoded = decode(&item, self.targets.services());
            drop(item);
            match decoded {
                Ok(Decoded::Event(event)) => {
                    if let CaptureEvent::Data(data) = &event {
                        bytes += data.payload.len();
                    }
                    batch.push(event);
                }
                Ok(Decoded::Exit(pid, service)) => self.exited(pid, service, &mut batch),
                Err(_) => UserCounters::add(&self.counters.decode_errors, 1),
            }
            if batch.len() >= MAX_BATCH || bytes >= MAX_BATCH_BYTES {
                bytes = 0;
                if !self.send(std::mem::take(&mut batch)) {
                    return (false, false);
                }
            }
        }
        (self.send(batch), false)
    }

    fn exited(&mut self, pid: u32, service: u32, batch: &mut Vec<CaptureEvent>) {
        let name = self.service_name(service);
        self.tables.remove(pid, &name, batch);
        if self.targets.forget(pid).is_some() {
            tracing::info!("stopped tracing pid {pid} ({name}): exited");
        }
        if let Some(tls) = &mut self.tls {
            tls.forget(pid);
            tls.publish(&self.counters);
        }
        self.counters.targets.store(
            self.targets.tracked() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn service_name(&self, service: u32) -> Arc<str> {
        let services = self.targets.services();
        services
            .get(service as usize)
            .or(services.first())
            .cloned()
            .unwrap_or_else(|| Arc::from("unknown"))
    }

    /// Fills in local addresses and queues the batch. Returns false once the consumer is gone.
    fn send(&mut self, mut batch: Vec<CaptureEvent>) -> bool {
        if batch.is_empty() {
            return !self.tx.is_closed();
        }
        self.tables_cache.clear();
        for event in &mut batch {
            if let CaptureEvent::Open(open) = event
                && open.local.is_none()
            {
                open.local = self
                    .tables_cache
                    .local_addr(open.conn.pid, open.conn.fd, open.peer);
            }
        }
        let n = batch.len() as u64;
        match self.tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                UserCounters::add(&self.counters.queue_full, n);
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}
