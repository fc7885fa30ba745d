//! A streaming `multipart/form-data` scanner: bytes go in chunk by chunk, and for each part it
//! keeps only the name, filename, byte count and a running hash. Memory stays bounded by one
//! chunk plus a delimiter's length, whatever the size of the files.

use memchr::memmem;

use super::state::Fnv64;

/// Longest header block accepted for one part.
const MAX_PART_HEADERS: usize = 16 * 1024;

/// What the scanner learned about one part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartSummary {
    pub(crate) name: String,
    pub(crate) filename: Option<String>,
    pub(crate) len: u64,
    pub(crate) hash: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Preamble,
    AfterDelimiter,
    Headers,
    Body,
    Done,
}

pub(crate) struct Scanner {
    /// `\r\n--<boundary>`.
    delimiter: Vec<u8>,
    finder: memmem::Finder<'static>,
    buf: Vec<u8>,
    state: State,
    current: Option<(String, Option<String>, u64, Fnv64)>,
    parts: Vec<PartSummary>,
}

/// Extracts the boundary from a `multipart/form-data; boundary=...` content type.
pub(crate) fn boundary(content_type: &str) -> Option<String> {
    let mut pieces = content_type.split(';');
    let mime = pieces.next()?.trim();
    if !mime.eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    for piece in pieces {
        let (key, value) = piece.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("boundary") {
            let value = value.trim().trim_matches('"');
            if !value.is_empty() && value.len() <= 200 {
                return Some(value.to_owned());
            }
        }
    }
    None
}

impl Scanner {
    pub(crate) fn new(boundary: &str) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let finder = memmem::Finder::new(&delimiter).into_owned();
        Scanner {
            delimiter,
            finder,
            // The first delimiter may start the body without a preceding CRLF.
            buf: b"\r\n".to_vec(),
            state: State::Preamble,
            current: None,
            parts: Vec::new(),
        }
    }

    /// Feeds the next chunk; part data is hashed, counted and discarded before returning.
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.buf.extend_from_slice(chunk);
        loop {
            match self.state {
                State::Done => {
                    self.buf.clear();
                    return Ok(());
                }
                State::Preamble => match self.finder.find(&self.buf) {
                    Some(at) => {
                        self.buf.drain(..at + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        self.keep_tail();
                        return Ok(());
                    }
                },
                State::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        return Ok(());
                    }
                    if self.buf.starts_with(b"--") {
                        self.state = State::Done;
                        continue;
                    }
                    match memmem::find(&self.buf, b"\r\n") {
                        Some(at) => {
                            // Anything before the CRLF is transport padding.
                            self.buf.drain(..at + 2);
                            self.state = State::Headers;
                        }
                        None if self.buf.len() > 1024 => {
                            return Err("malformed multipart delimiter line".into())
                        }
                        None => return Ok(()),
                    }
                }
                State::Headers => {
                    let end = if self.buf.starts_with(b"\r\n") {
                        Some((0, 2))
                    } else {
                        memmem::find(&self.buf, b"\r\n\r\n").map(|at| (at, at + 4))
                    };
                    match end {
                        Some((at, skip)) => {
                            let headers = String::from_utf8_lossy(&self.buf[..at]).into_owned();
                            self.buf.drain(..skip);
                            let (name, filename) = parse_part_headers(&headers);
                            self.current = Some((name, filename, 0, Fnv64::default()));
                            self.state = State::Body;
                        }
                        None if self.buf.len() > MAX_PART_HEADERS => {
                            return Err("multipart part headers too large".into())
                        }
                        None => return Ok(()),
                    }
                }
                State::Body => match self.finder.find(&self.buf) {
                    Some(at) => {
                        self.consume(at);
                        self.buf.drain(..self.delimiter.len());
                        if let Some((name, filename, len, hash)) = self.current.take() {
                            self.parts.push(PartSummary {
                                name,
                                filename,
                                len,
                                hash: hash.hex(),
                            });
                        }
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        // The tail might be the start of a delimiter split across chunks.
                        let safe = self.buf.len().saturating_sub(self.delimiter.len() - 1);
                        self.consume(safe);
                        return Ok(());
                    }
                },
            }
        }
    }

    /// Hashes and counts the first `n` buffered bytes as part data, then discards them.
    fn consume(&mut self, n: usize) {
        if let Some((_, _, len, hash)) = self.current.as_mut() {
            hash.update(&self.buf[..n]);
            *len += n as u64;
        }
        self.buf.drain(..n);
    }

    fn keep_tail(&mut self) {
        let keep = self.delimiter.len() - 1;
        if self.buf.len() > keep {
            let cut = self.buf.len() - keep;
            self.buf.drain(..cut);
        }
    }

    /// The parts seen, once the closing delimiter arrived.
    pub(crate) fn finish(self) -> Result<Vec<PartSummary>, String> {
        if self.state == State::Done {
            Ok(self.parts)
        } else {
            Err("multipart body ended before its closing boundary".into())
        }
    }
}

/// `(name, filename)` from a part's `Content-Disposition` header.
fn parse_part_headers(headers: &str) -> (String, Option<String>) {
    let mut name = String::new();
    let mut filename = None;
    for line in headers.split("\r\n") {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        for param in split_params(value) {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            let v = unquote(v.trim());
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = v,
                "filename" => filename = Some(v),
                _ => {}
            }
        }
    }
    (name, filename)
}

/// Splits on `;` outside double quotes.
fn split_params(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => v.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a;b.mp4\"\r\nContent-Type: video/mp4\r\n\r\n");
        b.extend_from_slice(&[7u8; 1000]);
        b.extend_from_slice(b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n--XyZ--\r\n");
        b
    }

    #[test]
    fn parses_every_chunking_the_same() {
        let whole = body();
        let mut expected_hash = Fnv64::default();
        expected_hash.update(&[7u8; 1000]);
        for chunk in [1usize, 2, 3, 7, 9, 64, 5000] {
            let mut s = Scanner::new("XyZ");
            for piece in whole.chunks(chunk) {
                s.feed(piece).unwrap();
            }
            let parts = s.finish().unwrap();
            assert_eq!(parts.len(), 2, "chunk {chunk}");
            assert_eq!(parts[0].name, "files");
            assert_eq!(parts[0].filename.as_deref(), Some("a;b.mp4"));
            assert_eq!(parts[0].len, 1000);
            assert_eq!(parts[0].hash, expected_hash.hex());
            assert_eq!(parts[1].name, "note");
            assert_eq!(parts[1].len, 5);
        }
    }

    #[test]
    fn truncated_body_is_an_error() {
        let whole = body();
        let mut s = Scanner::new("XyZ");
        s.feed(&whole[..whole.len() - 10]).unwrap();
        assert!(s.finish().is_err());
    }

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(boundary("application/json"), None);
    }
}
