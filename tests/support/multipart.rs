//! A strict RFC 7578 `multipart/form-data` parser, to check upload bodies byte for byte.

/// One part of a `multipart/form-data` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// `name` from `Content-Disposition`.
    pub name: String,
    /// `filename` from `Content-Disposition`, as written on the wire (still quoted-escaped).
    pub filename: Option<String>,
    /// The part's `Content-Type`.
    pub content_type: Option<String>,
    /// The part's bytes.
    pub body: Vec<u8>,
}

/// The boundary of a `multipart/form-data; boundary=...` content type.
pub fn boundary_of(content_type: &str) -> String {
    let rest = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("not a multipart content type: {content_type:?}"));
    assert!(!rest.is_empty(), "empty boundary");
    rest.trim_matches('"').to_string()
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(&haystack[from..], needle).map(|at| at + from)
}

/// A strict RFC 7578 parser: no preamble, CRLF everywhere, a closing delimiter followed by
/// CRLF and nothing else. Panics on anything malformed.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = boundary_of(content_type);
    let opening = format!("--{boundary}\r\n");
    let delimiter = format!("\r\n--{boundary}");
    assert!(
        body.starts_with(opening.as_bytes()),
        "body must start with the first boundary"
    );
    let mut parts = Vec::new();
    let mut at = opening.len();
    loop {
        let headers_end = find(body, b"\r\n\r\n", at).expect("end of part headers");
        let head = std::str::from_utf8(&body[at..headers_end]).expect("UTF-8 part headers");
        let mut name = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let (key, value) = line.split_once(": ").expect("header line");
            match key.to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    let mut params = value.split("; ");
                    assert_eq!(params.next(), Some("form-data"));
                    for param in params {
                        let (k, v) = param.split_once('=').expect("parameter");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("quoted parameter");
                        match k {
                            "name" => name = Some(v.to_string()),
                            "filename" => filename = Some(v.to_string()),
                            other => panic!("unexpected parameter {other}"),
                        }
                    }
                }
                "content-type" => content_type = Some(value.to_string()),
                other => panic!("unexpected part header {other}"),
            }
        }
        let content_start = headers_end + 4;
        let content_end =
            find(body, delimiter.as_bytes(), content_start).expect("delimiter after part");
        parts.push(Part {
            name: name.expect("part name"),
            filename,
            content_type,
            body: body[content_start..content_end].to_vec(),
        });
        let after = content_end + delimiter.len();
        match &body[after..] {
            b"--\r\n" => return parts,
            rest if rest.starts_with(b"\r\n") => at = after + 2,
            rest => panic!(
                "bad bytes after a delimiter: {:?}",
                String::from_utf8_lossy(&rest[..rest.len().min(20)])
            ),
        }
    }
}
