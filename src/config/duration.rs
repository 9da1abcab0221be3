//! Duration strings (SPEC §2): the `humantime` forms such as `"250ms"`, `"10s"`, `"5m"`, `"1h"`,
//! `"1m30s"`. A number without a unit is refused: `"10"` could mean seconds or milliseconds, and
//! guessing wrong turns a timeout into a hang or an outage.

use std::time::Duration;

/// Parses one duration string; the error says what is wrong and quotes the input.
pub(super) fn parse(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write a number with a unit, such as \"10s\"".to_owned());
    }
    if trimmed.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "duration {text:?} has no unit; write e.g. \"{trimmed}s\" or \"{trimmed}ms\""
        ));
    }
    humantime::parse_duration(trimmed).map_err(|err| {
        format!("malformed duration {text:?} ({err}); use forms such as \"250ms\", \"10s\", \"5m\", \"1m30s\"")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        let rows = [
            ("250ms", Duration::from_millis(250)),
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in rows {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn refused_forms_quote_the_input() {
        for text in ["10", "1.5", "", "10 parsecs", "s", "ten seconds", "-5s"] {
            let err = parse(text).expect_err(text);
            assert!(
                err.contains(&format!("{text:?}")) || text.is_empty(),
                "{text}: {err}"
            );
        }
    }
}
