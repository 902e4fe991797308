//! The `Reporter` for people and for logs: on a terminal a progress bar for the downloads and
//! for each build phase (bytes, rate, ETA) and a line as each phase ends; plain lines
//! otherwise; nothing but notes with `--json`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyve::report::{Phase, Reporter};
use indicatif::{ProgressBar, ProgressStyle};

/// A bar with a known length in bytes.
const BYTES_BAR: &str = "{spinner} {prefix:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}";
/// A step of unknown length.
const SPINNER: &str = "{spinner} {prefix:>10} {elapsed} {msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("valid template").progress_chars("=> ")
}

pub enum Progress {
    Bar { bar: ProgressBar, items: AtomicUsize, total: AtomicUsize },
    Lines,
    Quiet,
}

impl Progress {
    pub fn new(json: bool) -> Self {
        if json {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::hidden();
            bar.set_style(style(BYTES_BAR));
            bar.set_prefix("download");
            Progress::Bar { bar, items: AtomicUsize::new(0), total: AtomicUsize::new(0) }
        } else {
            Progress::Lines
        }
    }

    pub fn finish(&self) {
        if let Progress::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

impl Reporter for Progress {
    fn batch(&self, items: usize, bytes: u64) {
        if let Progress::Bar { bar, items: done, total } = self {
            done.store(0, Ordering::Relaxed);
            total.store(items, Ordering::Relaxed);
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(style(BYTES_BAR));
            bar.set_length(bytes);
            bar.set_position(0);
            bar.set_message(format!("0/{items} pkgs"));
        }
    }

    fn bytes(&self, n: u64) {
        if let Progress::Bar { bar, .. } = self {
            bar.inc(n);
        }
    }

    fn done(&self, what: &str, cached: bool) {
        match self {
            Progress::Bar { bar, items, total } => {
                let n = items.fetch_add(1, Ordering::Relaxed) + 1;
                bar.set_message(format!("{n}/{} pkgs", total.load(Ordering::Relaxed)));
            }
            Progress::Lines => eprintln!("{} {what}", if cached { "cached " } else { "fetched" }),
            Progress::Quiet => {}
        }
    }

    fn note(&self, message: &str) {
        match self {
            Progress::Bar { bar, .. } => bar.println(format!("note: {message}")),
            _ => eprintln!("note: {message}"),
        }
    }

    fn phase_start(&self, phase: Phase, total: u64) {
        match self {
            Progress::Bar { bar, .. } => {
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_length(total);
                bar.reset();
                bar.set_prefix(phase.name());
                bar.set_message("");
                bar.set_style(style(if total > 0 { BYTES_BAR } else { SPINNER }));
                bar.enable_steady_tick(Duration::from_millis(120));
                // Drawn at once, so a phase shorter than the refresh interval shows too.
                bar.tick();
            }
            Progress::Lines => eprintln!("{}...", phase.name()),
            Progress::Quiet => {}
        }
    }

    fn phase_advance(&self, n: u64) {
        if let Progress::Bar { bar, .. } = self {
            bar.inc(n);
        }
    }

    fn phase_end(&self, phase: Phase, took: Duration) {
        match self {
            Progress::Bar { bar, .. } => {
                bar.disable_steady_tick();
                bar.println(format!("  {:>10} done in {:.1} s", phase.name(), took.as_secs_f64()));
            }
            Progress::Lines => eprintln!("{} done in {:.1} s", phase.name(), took.as_secs_f64()),
            Progress::Quiet => {}
        }
    }
}
