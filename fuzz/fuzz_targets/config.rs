//! The config loader (`config::load`: TOML -> raw -> validated, errors located by line and
//! key). Input: the file's text (non-UTF-8 input is skipped: `load` reports it as unreadable).
//!
//! Checked: never a panic; a failure lists at least one problem, each placed by a line or a
//! key and described on one non-empty line (what `check` prints).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::fuzzing::config_load;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    // Certificate paths are read: keep the fuzzer away from endless device files.
    if ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    if let Err(problems) = config_load(text) {
        assert!(!problems.is_empty());
        for p in &problems {
            assert!(p.line.is_some() || p.key.is_some(), "unplaced: {p:?}");
            assert!(!p.problem.is_empty() && !p.problem.contains('\n'), "{p:?}");
            if let Some(key) = &p.key {
                assert!(!key.is_empty(), "{p:?}");
            }
        }
    }
});
