//! HTTP/1.1 heads as bytes on the wire: header lines in order (duplicates kept) and the request
//! and response heads that clients and upstreams parse with `httparse`.

/// Header lines in wire order, names as sent; lookups are case-insensitive (RFC 9110 §5.1).
#[derive(Debug, Clone, Default)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// Every line's value for `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first line's value for `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Whether any line carries `name`.
    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// The comma-separated list over all lines of `name`, trimmed, empty elements dropped
    /// (RFC 9110 §5.6.1).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// [`Headers::list`] lower-cased: for token headers such as `Connection` and `Upgrade`.
    pub fn tokens(&self, name: &str) -> Vec<String> {
        self.list(name)
            .into_iter()
            .map(|t| t.to_ascii_lowercase())
            .collect()
    }

    /// Lower-cased names of every line.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.to_ascii_lowercase()).collect()
    }
}

/// A request head as an upstream saw it.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (origin form: path and query).
    pub target: String,
    pub headers: Headers,
}

/// A response head as the client saw it.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    pub headers: Headers,
}

fn header_pairs(headers: &[httparse::Header<'_>]) -> Headers {
    Headers(
        headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
    )
}

/// Parses a complete request head (through the blank line).
pub fn parse_request_head(raw: &[u8]) -> Result<RequestHead, String> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(raw) {
        Ok(httparse::Status::Complete(_)) => Ok(RequestHead {
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            headers: header_pairs(req.headers),
        }),
        Ok(httparse::Status::Partial) => Err("partial request head".to_string()),
        Err(e) => Err(format!("bad request head: {e}")),
    }
}

/// Parses a complete response head (through the blank line).
pub fn parse_response_head(raw: &[u8]) -> Result<ResponseHead, String> {
    let mut slots = [httparse::EMPTY_HEADER; 256];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(raw) {
        Ok(httparse::Status::Complete(_)) => Ok(ResponseHead {
            status: resp.code.unwrap_or_default(),
            headers: header_pairs(resp.headers),
        }),
        Ok(httparse::Status::Partial) => Err("partial response head".to_string()),
        Err(e) => Err(format!("bad response head: {e}")),
    }
}
