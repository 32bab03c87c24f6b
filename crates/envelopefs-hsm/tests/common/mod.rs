//! The tests' shared SoftHSM2 directory: the module reads SOFTHSM2_CONF and finds its tokens
//! once per process (C_Initialize), so every token the tests of a binary use is made, each
//! with its own label, before the first is opened.

use std::sync::{Arc, OnceLock};

use envelopefs_hsm::softhsm::{TestToken, USER_PIN};
use envelopefs_hsm::{Pin, Token};

/// The tokens made in the directory, one per test.
const LABELS: &[&str] = &[
    "wrap-unwrap",
    "destroyed",
    "ks-secret",
    "reconnect",
    "suite",
    "keystore-file",
];

/// The directory, or `None` when SoftHSM2 is not installed (the test then returns early).
pub fn dir() -> Option<&'static TestToken> {
    static DIR: OnceLock<Option<TestToken>> = OnceLock::new();
    DIR.get_or_init(|| {
        let t = TestToken::new("envelopefs-test-first")?;
        for label in LABELS {
            t.init_token(label);
        }
        t.use_in_this_process();
        Some(t)
    })
    .as_ref()
}

/// A fresh token labelled `label` in the shared directory, logged in as its user.
pub fn token(label: &str) -> Option<(&'static TestToken, Arc<Token>)> {
    assert!(
        LABELS.contains(&label),
        "add {label:?} to tests/common.rs LABELS"
    );
    let dir = dir()?;
    let t = Token::open(&dir.module, label, pin(USER_PIN)).expect("open the test token");
    Some((dir, Arc::new(t)))
}

/// A PIN from text.
pub fn pin(s: &str) -> Pin {
    Pin::from_bytes(zeroize::Zeroizing::new(s.as_bytes().to_vec())).unwrap()
}
