//! The heap allocator of every scopegate process: mimalloc instead of glibc's malloc. A Check
//! allocates and frees many small, short-lived buffers (h2 frames, prost messages, header maps,
//! the decision-log line), often on another thread than the one that allocated them; under
//! callgrind mimalloc cut the instructions per cached check by ~10 % (docs/benchmarks-envoy.md).
//!
//! A library cannot choose the allocator for its binaries; each one (the `scopegate` binary,
//! the benchmarks that measure its memory and CPU, and the no-op floor they compare with)
//! declares `#[global_allocator] static ALLOCATOR: Allocator = Allocator;`.

/// The allocator to declare as `#[global_allocator]` (a unit struct: type and value).
pub use mimalloc::MiMalloc as Allocator;
