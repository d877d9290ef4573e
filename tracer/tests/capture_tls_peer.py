"""Third-party TLS peers for tracer/tests/capture_tls.rs, on Python's ssl module (the system
OpenSSL, dynamically linked).

server CERT KEY [--late-ssl]: a keep-alive HTTPS server, one thread per connection.
  GET /len/N answers N bytes (byte i = i % 251) with a Content-Length. Prints "port P".
  With --late-ssl it prints "plain PID", waits for "go" on stdin and only then imports
  ssl (which loads libssl: a dlopen after start).
client PORT THREADS REQUESTS [--wait]: THREADS connections at once, each sending REQUESTS
  requests two at a time in one write (one TLS record), reading the answers 100 bytes at a
  time (most reads are served from OpenSSL's buffer). Prints "ok". With --wait it prints
  "ready" and connects only after a line on stdin.
"""
import sys


def body(n):
    return bytes(i % 251 for i in range(n))


def serve(cert, key, late):
    if late:
        # Nothing imported yet has loaded libssl (http.server would, through http.client).
        print("plain", flush=True)
        sys.stdin.readline()
    import http.server, socketserver, ssl

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(200)
            self.send_header("content-length", str(n))
            self.end_headers()
            self.wfile.write(body(n))

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = Server(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print("port", server.server_address[1], flush=True)
    server.serve_forever()


def read_response(conn, pending):
    """One response from `conn` (HTTP/1.1, Content-Length), 100 bytes per read."""
    while b"\r\n\r\n" not in pending:
        pending += recv(conn)
    head, rest = pending.split(b"\r\n\r\n", 1)
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(rest) < length:
        rest += recv(conn)
    return head, rest[:length], rest[length:]


def recv(conn):
    data = conn.recv(100)
    if not data:
        raise RuntimeError("connection closed early")
    return data


def client(port, threads, requests, wait):
    import socket, ssl, threading

    if wait:
        print("ready", flush=True)
        sys.stdin.readline()

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    errors = []

    def one(t):
        try:
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with context.wrap_socket(raw) as conn:
                    pending = b""
                    for i in range(0, requests, 2):
                        sizes = [10 + 1000 * t + i, 10 + 1000 * t + i + 1][: requests - i]
                        conn.sendall(b"".join(
                            b"GET /len/%d HTTP/1.1\r\nhost: x\r\n\r\n" % n for n in sizes))
                        for n in sizes:
                            _, got, pending = read_response(conn, pending)
                            if got != body(n):
                                errors.append("thread %d: body of /len/%d differs" % (t, n))
        except Exception as e:  # reported below
            errors.append("thread %d: %r" % (t, e))

    workers = [threading.Thread(target=one, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        print("\n".join(errors), file=sys.stderr)
        sys.exit(1)
    print("ok", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], sys.argv[3], "--late-ssl" in sys.argv)
    else:
        client(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), "--wait" in sys.argv)
