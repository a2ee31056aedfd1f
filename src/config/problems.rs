//! The problems a config file has, each at its key path: collected by every check, reported
//! together.

use super::locate::Seg;

/// One thing wrong with the file, at a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: Vec<Seg>,
    pub message: String,
}

#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: &[Seg], message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_vec(),
            message: message.into(),
        });
    }
}

pub(super) fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

pub(super) fn with(path: &[Seg], seg: Seg) -> Vec<Seg> {
    let mut p = path.to_vec();
    p.push(seg);
    p
}
