//! Library log messages. Silent unless a host installs a sink (the C ABI's log callback does).
//! The sink may be called from internal threads.

use parking_lot::RwLock;

/// Severity of a log message (values are part of the C ABI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(i32)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

type Sink = Box<dyn Fn(Level, &str) + Send + Sync>;

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Installs (or with `None` removes) the function that receives log messages.
pub fn set_sink(sink: Option<Sink>) {
    *SINK.write() = sink;
}

/// Sends a message to the sink, if any. The message is built only when someone listens.
pub fn log(level: Level, message: impl FnOnce() -> String) {
    if let Some(sink) = SINK.read().as_ref() {
        sink(level, &message());
    }
}
