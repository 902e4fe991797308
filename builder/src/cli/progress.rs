//! The fetch `Reporter` for people and for logs: a progress bar (bytes, packages, ETA) when
//! stderr is a terminal, plain lines otherwise, nothing but notes with `--json`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicUsize, Ordering};

use hyve::fetch::Reporter;
use indicatif::{ProgressBar, ProgressStyle};

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
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:>14} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
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
}
