//! The extensions an upstream accepted in its 101 (`Sec-WebSocket-Extensions`, RFC 6455 §9.1),
//! reduced to what an inspected tunnel needs: which RSV bits its frames may set (SPEC §9).
//!
//! Extensions are negotiated end to end (the client's offer passes through, SPEC §4), so the
//! upstream's answer is what both peers use. The gateway only reads it; it never changes it.

use http::HeaderMap;
use http::header::SEC_WEBSOCKET_EXTENSIONS;

use super::tokens::trim_ows;
use crate::tunnel::Extensions;

/// RFC 7692 §7: the extension whose compressed messages set RSV1.
const PERMESSAGE_DEFLATE: &[u8] = b"permessage-deflate";

/// What the 101's `Sec-WebSocket-Extensions` lines accept.
///
/// RFC 6455 §9.1: `extension-list = 1#extension`, `extension = extension-token *( ";"
/// extension-param )`, a param value possibly a quoted-string. RFC 6455 §5.2: RSV1-3 "MUST be 0
/// unless an extension is negotiated that defines meanings for non-zero values", so any
/// accepted extension makes RSV2/RSV3 legal (we cannot know what an unknown one defines), and
/// RSV1 is legal with `permessage-deflate` (RFC 7692 §6) or any other extension. Names compare
/// ASCII case-insensitively: a peer that spells one differently still uses it, and refusing its
/// frames would break a working conversation.
pub(crate) fn accepted_extensions(headers: &HeaderMap) -> Extensions {
    let mut found = Extensions::default();
    for line in headers.get_all(SEC_WEBSOCKET_EXTENSIONS) {
        for element in elements(line.as_bytes()) {
            let name = trim_ows(element.split(|b| *b == b';').next().unwrap_or(element));
            if name.is_empty() {
                continue;
            }
            found.any = true;
            if name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
                found.permessage_deflate = true;
            }
        }
    }
    found
}

/// The comma-separated elements of one header line, commas inside a quoted-string (RFC 9110
/// §5.6.4, backslash escapes included) not splitting.
fn elements(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in s.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(s)
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn parse(lines: &[&str]) -> Extensions {
        let mut h = HeaderMap::new();
        for line in lines {
            h.append(
                SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(line).unwrap(),
            );
        }
        accepted_extensions(&h)
    }

    #[test]
    fn accepted_extension_rows() {
        const NONE: Extensions = Extensions {
            permessage_deflate: false,
            any: false,
        };
        const DEFLATE: Extensions = Extensions {
            permessage_deflate: true,
            any: true,
        };
        const OTHER: Extensions = Extensions {
            permessage_deflate: false,
            any: true,
        };
        #[rustfmt::skip]
        let rows: &[(&[&str], Extensions)] = &[
            (&[], NONE),
            (&[""], NONE),
            (&[" , ,"], NONE),
            (&["permessage-deflate"], DEFLATE),
            (&["Permessage-Deflate"], DEFLATE),
            (&["permessage-deflate; server_no_context_takeover; client_max_window_bits=10"], DEFLATE),
            (&["  permessage-deflate  ;client_max_window_bits"], DEFLATE),
            (&["x-webkit-deflate-frame"], OTHER),
            (&["permessage-deflater"], OTHER),
            (&["x-foo; p=\"permessage-deflate\""], OTHER),
            // A comma inside a quoted parameter value splits nothing.
            (&["x-foo; p=\"a, permessage-deflate\""], OTHER),
            (&["x-foo; p=\"a\\\", permessage-deflate\""], OTHER),
            (&["x-foo, permessage-deflate"], DEFLATE),
            (&["x-foo", "permessage-deflate"], DEFLATE),
            (&[";", "x-bar"], OTHER),
        ];
        for (lines, want) in rows {
            assert_eq!(parse(lines), *want, "{lines:?}");
        }
    }
}
