//! Wire bytes of typical testbed traffic (docs/contracts.md) for the parser, stream and
//! pipeline tests: one conversation is the writes of one connection, in order.

use super::Kind;

/// One write on a connection: which way it goes, and its bytes.
pub(crate) type Write = (Kind, Vec<u8>);

fn request(head: &str, body: &[u8]) -> Write {
    let mut bytes = head.replace('\n', "\r\n").into_bytes();
    bytes.extend_from_slice(body);
    (Kind::Request, bytes)
}

fn response(head: &str, body: &[u8]) -> Write {
    let mut bytes = head.replace('\n', "\r\n").into_bytes();
    bytes.extend_from_slice(body);
    (Kind::Response, bytes)
}

/// A JSON request with its Content-Length.
pub(crate) fn json_request(method: &str, target: &str, json: &str) -> Write {
    request(
        &format!(
            "{method} {target} HTTP/1.1\nhost: 127.0.0.1:18080\ncontent-type: application/json\n\
             content-length: {}\n\n",
            json.len()
        ),
        json.as_bytes(),
    )
}

/// A JSON response with its Content-Length.
pub(crate) fn json_response(status: &str, json: &str) -> Write {
    response(
        &format!(
            "HTTP/1.1 {status}\ncontent-type: application/json\ncontent-length: {}\n\
             date: Thu, 26 Nov 2026 10:00:00 GMT\n\n",
            json.len()
        ),
        json.as_bytes(),
    )
}

/// Model bytes that look like nothing HTTP (no `HTTP/1.` inside).
pub(crate) fn model(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

/// `PUT` of a model file as the shop's customer sends it.
pub(crate) fn upload(order: &str, len: usize) -> Write {
    request(
        &format!(
            "PUT /api/v1/orders/{order}/model HTTP/1.1\nhost: 127.0.0.1:18080\n\
             content-type: application/octet-stream\ncontent-length: {len}\n\n"
        ),
        &model(len),
    )
}

/// A JSON body sent chunked (with a chunk extension and a trailer), as the CRM's lookups.
pub(crate) fn chunked_response(json: &str) -> Write {
    let (a, b) = json.split_at(json.len() / 2);
    let body = format!(
        "{:x};src=crm\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nx-checksum: 1f\r\n\r\n",
        a.len(),
        b.len()
    );
    response(
        "HTTP/1.1 200 OK\ncontent-type: application/json\ntransfer-encoding: chunked\n\n",
        body.as_bytes(),
    )
}

pub(crate) const CREATED: &str = r#"{"order_id":"SO-000123","status":"INITIATED"}"#;

/// One keep-alive connection through the shapes the parser must know: JSON POST, upload,
/// chunked response, pipelining, HEAD, 204, 304 and `Expect: 100-continue`.
pub(crate) fn keep_alive_conversation(upload_len: usize) -> Vec<Write> {
    let deal = r#"{"deal":{"order":{"id":"SO-000123","status":"MANUFACTURING_APPROVED"}}}"#;
    let lookup = "GET /api/v1/orders/SO-000123 HTTP/1.1\nhost: 127.0.0.1:18080\n\n";
    let found = r#"{"order_id":"SO-000123","status":"SUBMITTED"}"#;
    let mut pipelined = request(lookup, b"").1;
    pipelined.extend(request("GET /api/v1/orders/SO-404 HTTP/1.1\nhost: a\n\n", b"").1);
    let mut answers = json_response("200 OK", found).1;
    answers.extend(json_response("404 Not Found", r#"{"error":"no such order"}"#).1);
    vec![
        json_request(
            "POST",
            "/api/v1/orders",
            r#"{"customer_id":"C-17","items":[{"sku":"RING-01","qty":1}],"cart_id":"K-9"}"#,
        ),
        json_response("201 Created", CREATED),
        upload("SO-000123", upload_len),
        json_response(
            "200 OK",
            &format!(
                r#"{{"order_id":"SO-000123","status":"FILE_UPLOADED","size_bytes":{upload_len}}}"#
            ),
        ),
        request(
            "GET /crm/v1/deals/SO-000123 HTTP/1.1\nhost: 127.0.0.1:18082\n\n",
            b"",
        ),
        chunked_response(deal),
        (Kind::Request, pipelined),
        (Kind::Response, answers),
        request("HEAD /api/v1/orders/SO-000123 HTTP/1.1\nhost: a\n\n", b""),
        response(
            "HTTP/1.1 200 OK\ncontent-type: application/json\ncontent-length: 45\n\n",
            b"",
        ),
        json_request(
            "POST",
            "/mes/api/work-orders/SO-000123/transitions",
            r#"{"to":"PACKING"}"#,
        ),
        response("HTTP/1.1 204 No Content\n\n", b""),
        request(
            "GET /api/v1/orders/SO-000123 HTTP/1.1\nif-none-match: \"v7\"\n\n",
            b"",
        ),
        response("HTTP/1.1 304 Not Modified\netag: \"v7\"\n\n", b""),
        request(
            "PUT /api/v1/orders/SO-000123/model HTTP/1.1\nexpect: 100-continue\n\
             content-type: application/octet-stream\ncontent-length: 300\n\n",
            b"",
        ),
        response("HTTP/1.1 100 Continue\n\n", b""),
        (Kind::Request, model(300)),
        json_response(
            "200 OK",
            r#"{"order_id":"SO-000123","status":"FILE_UPLOADED"}"#,
        ),
    ]
}

/// HTTP/1.0 without Content-Length: the response body ends when the connection closes.
pub(crate) fn http10_conversation() -> Vec<Write> {
    vec![
        request(
            "GET /api/v1/orders/SO-000123 HTTP/1.0\nhost: 127.0.0.1:18080\n\n",
            b"",
        ),
        response(
            "HTTP/1.0 200 OK\ncontent-type: application/json\n\n",
            CREATED.as_bytes(),
        ),
    ]
}
