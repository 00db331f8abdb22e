//! A small blocking HTTP/1.1 client with keep-alive, for tests, the CLI and examples (no
//! dependency on a full HTTP client stack). Bounded: headers up to 64 KiB, bodies up to 256 MiB.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const MAX_HEADER_BYTES: usize = 64 << 10;
const MAX_BODY_BYTES: usize = 256 << 20;

#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> std::io::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).map_err(|e| bad(&format!("the response is not JSON ({e}): {}", self.text())))
    }
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// One keep-alive connection to `host:port` (reconnects when the server closed it).
pub struct HttpClient {
    addr: String,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    pub fn new(addr: impl Into<String>) -> Self {
        let addr: String = addr.into();
        let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
        HttpClient { addr, timeout: Duration::from_secs(120), conn: None }
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<HttpResponse> {
        self.request("GET", path, &[], b"")
    }

    pub fn post_json(&mut self, path: &str, body: &serde_json::Value) -> std::io::Result<HttpResponse> {
        self.request("POST", path, &[("content-type", "application/json")], body.to_string().as_bytes())
    }

    /// Sends a request; a connection the server closed while idle is reopened once.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpResponse> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, headers, body) {
            Err(_) if reused => {
                self.conn = None;
                self.try_request(method, path, headers, body)
            }
            r => r,
        }
    }

    fn try_request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> std::io::Result<HttpResponse> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n", self.addr, body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        if let Err(e) = conn.get_mut().write_all(&msg) {
            // A server may answer before it read the whole body (a 413 for a body over its
            // limit) and close: read what it answered, as curl does, else report the write.
            use std::io::ErrorKind::{BrokenPipe, ConnectionReset};
            if !matches!(e.kind(), BrokenPipe | ConnectionReset) {
                return Err(e);
            }
            let early = read_response(conn, method == "HEAD");
            self.conn = None;
            return early.map_err(|_| e);
        }
        let r = read_response(conn, method == "HEAD");
        if r.as_ref().map_or(true, |r| r.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"))) {
            self.conn = None;
        }
        r
    }
}

fn read_line(r: &mut BufReader<TcpStream>, budget: &mut usize) -> std::io::Result<String> {
    let mut line = String::new();
    let n = r.by_ref().take(*budget as u64 + 1).read_line(&mut line)?;
    if n == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
    }
    if n > *budget {
        return Err(bad("the response headers are too large"));
    }
    *budget -= n;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn read_response(r: &mut BufReader<TcpStream>, head_only: bool) -> std::io::Result<HttpResponse> {
    let mut budget = MAX_HEADER_BYTES;
    let status_line = read_line(r, &mut budget)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("not an HTTP status line: {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(r, &mut budget)?;
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 {
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let mut b = MAX_HEADER_BYTES;
            let size_line = read_line(r, &mut b)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad(&format!("bad chunk size {size_line:?}")))?;
            if size == 0 {
                // Trailers end with a blank line.
                while !read_line(r, &mut b)?.is_empty() {}
                break;
            }
            if body.len() + size > MAX_BODY_BYTES {
                return Err(bad("the response body is too large"));
            }
            let at = body.len();
            body.resize(at + size, 0);
            r.read_exact(&mut body[at..])?;
            read_line(r, &mut b)?;
        }
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        if len > MAX_BODY_BYTES {
            return Err(bad("the response body is too large"));
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.by_ref().take(MAX_BODY_BYTES as u64).read_to_end(&mut body)?;
        headers.push(("connection".into(), "close".into()));
    }
    Ok(HttpResponse { status, headers, body })
}
