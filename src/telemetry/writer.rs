//! The log writer: every log line (decision-log lines and tracing events alike) is handed to one
//! background thread that writes them to stdout in batches, so a Check never waits on a
//! `write(2)` and, under load, never pays for waking that thread either.
//!
//! Why not `tracing-appender`'s non-blocking writer (used before): its thread parks whenever
//! the channel is empty, so at a few thousand checks per second each line costs a futex wake-up
//! on the request path plus a context switch, a spin and a `writev` on the writer thread:
//! ~15 % of scopegate's CPU in a `perf` profile at 5,000 checks/s (docs/benchmarks-envoy.md).
//! Here the thread, while lines flow, sleeps [`BATCH_INTERVAL`] between drains instead of
//! parking (≤ 50 wake-ups and writes per second, whatever the rate); only after
//! [`IDLE_POLLS`] empty drains does it block on the channel, and then one line wakes it.
//!
//! Not lossy: the channel is bounded and a full channel blocks the sender (backpressure), as
//! an audit log must. Lines are written whole and in order. Dropping the [`FlushGuard`] writes
//! what is queued and stops the thread.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};

/// Time between drains while lines keep coming: the most a line waits before its `write(2)`.
/// Each drain is a timer wake-up and a context switch on a CPU the checks share, and on a VM
/// they are dear: with `scripts/bench-cpu.sh` (its log-thread column) at 20,000 checks/s on 2
/// vCPUs, the log thread cost 1.08–1.33 µs of CPU per check at 1 ms and 0.25–0.33 µs at 20 ms
/// (the rest is the bytes' copy into the page cache; docs/benchmarks-envoy.md). A reader of
/// the log does not notice 20 ms (Envoy's access log flushes every second by default), and
/// the guard writes what is queued at exit.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(20);
/// Empty drains in a row after which the thread blocks until the next line (100 ms idle).
pub const IDLE_POLLS: u32 = 5;
/// Lines queued before senders wait (backpressure, never loss).
const QUEUE_LINES: usize = 128 * 1024;
/// Bytes gathered before a `write(2)`, whatever the batch interval.
const BUFFER_BYTES: usize = 64 * 1024;

enum Message {
    Line(Vec<u8>),
    Shutdown,
}

/// A cheap, cloneable handle: `write` queues one whole line (or tracing event).
#[derive(Debug, Clone)]
pub struct LogWriter {
    lines: Sender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Line(line) => write!(f, "Line({} bytes)", line.len()),
            Message::Shutdown => f.write_str("Shutdown"),
        }
    }
}

/// Writes what is queued and stops the writer thread when dropped.
#[derive(Debug)]
#[must_use = "dropping the guard stops the log writer"]
pub struct FlushGuard {
    lines: Sender<Message>,
    thread: Option<JoinHandle<()>>,
    /// Times the thread went idle (blocked on the queue): observable for tests.
    idle_blocks: Arc<AtomicU64>,
}

impl LogWriter {
    /// Starts the writer thread over `out` (stdout in the binary, a sink in benchmarks).
    pub fn spawn<W: Write + Send + 'static>(out: W) -> std::io::Result<(LogWriter, FlushGuard)> {
        let (lines, queue) = bounded(QUEUE_LINES);
        let idle_blocks = Arc::new(AtomicU64::new(0));
        let counter = idle_blocks.clone();
        let thread = std::thread::Builder::new()
            .name("scopegate-log".into())
            .spawn(move || drain(queue, out, &counter))?;
        let guard = FlushGuard {
            lines: lines.clone(),
            thread: Some(thread),
            idle_blocks,
        };
        Ok((LogWriter { lines }, guard))
    }

    /// Queues one line (bytes as given: the caller ends it with `\n`). Waits only while the
    /// queue is full.
    pub fn write_line(&self, line: Vec<u8>) -> std::io::Result<()> {
        self.lines
            .send(Message::Line(line))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "log writer stopped"))
    }
}

impl Write for LogWriter {
    /// tracing-subscriber's fmt layer formats an event whole, then writes it in one call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_line(buf.to_vec())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl FlushGuard {
    /// How many times the writer thread has gone idle and blocked on the queue.
    pub fn idle_blocks(&self) -> u64 {
        self.idle_blocks.load(Ordering::Relaxed)
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        let _ = self.lines.send(Message::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: drain, write, sleep a batch interval; block when idle.
fn drain<W: Write>(queue: Receiver<Message>, out: W, idle_blocks: &AtomicU64) {
    let mut out = std::io::BufWriter::with_capacity(BUFFER_BYTES, out);
    let mut idle = 0u32;
    // A line received while blocking, written with the next drain.
    let mut pending = false;
    loop {
        let mut wrote = std::mem::take(&mut pending);
        loop {
            match queue.try_recv() {
                // A failing stdout cannot be reported anywhere better; keep draining so that
                // senders never block on a dead writer.
                Ok(Message::Line(line)) => {
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Ok(Message::Shutdown) | Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if wrote {
            let _ = out.flush();
            idle = 0;
        } else {
            idle += 1;
        }
        if idle < IDLE_POLLS {
            std::thread::sleep(BATCH_INTERVAL);
            continue;
        }
        // Idle: block until the next line (one wake-up per idle-to-busy transition). The
        // timeout only bounds how long a missed shutdown could go unnoticed.
        idle_blocks.fetch_add(1, Ordering::Relaxed);
        match queue.recv_timeout(Duration::from_secs(1)) {
            Ok(Message::Line(line)) => {
                let _ = out.write_all(&line);
                pending = true;
                idle = 0;
            }
            Ok(Message::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Captured;

    #[test]
    fn every_line_from_every_thread_is_written_whole_and_the_guard_flushes() {
        let out = Captured::default();
        let (writer, guard) = LogWriter::spawn(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        writer
                            .write_line(format!("{{\"t\":{t},\"i\":{i}}}\n").into_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            // Per sender, in order.
            let mine: Vec<u32> = lines
                .iter()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .filter(|v| v["t"] == t)
                .map(|v| v["i"].as_u64().unwrap() as u32)
                .collect();
            assert_eq!(mine, (0..5_000).collect::<Vec<_>>());
        }
        assert!(writer.write_line(b"late\n".to_vec()).is_err(), "stopped");
    }

    #[test]
    fn an_idle_writer_wakes_for_the_next_line() {
        let out = Captured::default();
        let (writer, guard) = LogWriter::spawn(out.clone()).unwrap();
        writer.write_line(b"first\n".to_vec()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.bytes() != b"first\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "first line never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The thread goes idle and blocks on the queue; the next line must wake it.
        let blocked = guard.idle_blocks();
        while guard.idle_blocks() == blocked {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer never went idle"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        writer.write_line(b"second\n".to_vec()).unwrap();
        while out.bytes() != b"first\nsecond\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "second line never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
