#!/usr/bin/env python3
"""TCP peer for the capture tests: moves known bytes through one syscall family.

  capture_peer.py server FAMILY METHOD REQ_LEN RESP_LEN EARLY [TAG]
  capture_peer.py client FAMILY METHOD PORT REQ_LEN RESP_LEN EARLY [TAG]
  capture_peer.py flood  PORT COUNT [TAG]
  capture_peer.py buffers PORT COUNT
  capture_peer.py sink

FAMILY is 4 or 6; METHOD is rw (write/read), send (sendto/recvfrom), msg (sendmsg/recvmsg)
or vec (writev/readv). Nothing touches the network before a "go" line arrives on stdin
(EARLY=1: the connection is made first, then "go" is awaited), so the test can make sure
the agent traces the process first. Bytes are pattern(n, seed): (i * seed + seed) % 251.
TAG is ignored: it makes the command line unique for cmdline targets.
"""
import os
import socket
import sys

REQ_SEED, RESP_SEED = 7, 13


def pattern(n, seed):
    return bytes((i * seed + seed) % 251 for i in range(n))


def say(*words):
    print(*words, flush=True)


def wait_go():
    line = sys.stdin.readline()
    if line.strip() != "go":
        sys.exit(0)


def send_all(sock, method, data):
    view = memoryview(data)
    while view:
        if method == "rw":
            n = os.write(sock.fileno(), view[:16000])
        elif method == "send":
            n = sock.send(view[:16000])
        elif method == "msg":
            n = sock.sendmsg([view[:100], view[100:1100], view[1100:16000]])
        else:
            n = os.writev(sock.fileno(), [view[:50], view[50:2050], view[2050:16000]])
        view = view[n:]


def recv_exact(sock, method, total):
    out = bytearray()
    while len(out) < total:
        left = total - len(out)
        if method == "rw":
            chunk = os.read(sock.fileno(), min(left, 4096))
        elif method == "send":
            chunk, _ = sock.recvfrom(min(left, 4096))
        elif method == "msg":
            bufs = [bytearray(min(left, 64)), bytearray(max(min(left - 64, 8000), 1))]
            n = sock.recvmsg_into(bufs)[0]
            chunk = b"".join(bufs)[:n]
        else:
            bufs = [bytearray(min(left, 32)), bytearray(max(min(left - 32, 3000), 1))]
            n = os.readv(sock.fileno(), bufs)
            chunk = b"".join(bufs)[:n]
        if not chunk:
            raise SystemExit("peer closed early")
        out += chunk
    return bytes(out)


def family_of(arg):
    return (socket.AF_INET, "127.0.0.1") if arg == "4" else (socket.AF_INET6, "::1")


def server(family, method, req_len, resp_len, early):
    af, host = family_of(family)
    listener = socket.socket(af, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(1)
    say("port", listener.getsockname()[1])
    if early:
        conn, _ = listener.accept()
        wait_go()
    else:
        wait_go()
        conn, _ = listener.accept()
    request = recv_exact(conn, method, req_len)
    assert request == pattern(req_len, REQ_SEED), "request corrupted"
    send_all(conn, method, pattern(resp_len, RESP_SEED))
    conn.recv(1)  # the client closes first
    conn.close()
    say("done")


def client(family, method, port, req_len, resp_len, early):
    af, host = family_of(family)
    say("ready")
    if not early:
        wait_go()
    sock = socket.socket(af, socket.SOCK_STREAM)
    sock.connect((host, port))
    say("local", sock.getsockname()[1])
    if early:
        wait_go()
    send_all(sock, method, pattern(req_len, REQ_SEED))
    response = recv_exact(sock, method, resp_len)
    assert response == pattern(resp_len, RESP_SEED), "response corrupted"
    sock.close()
    say("done")


def flood(port, count):
    say("ready")
    wait_go()
    sock = socket.create_connection(("127.0.0.1", port))
    for _ in range(count):
        sock.send(b"x")
    sock.sendall(b"END-OF-FLOOD")
    sock.close()
    say("done")


def many_buffers(port, count):
    """One sendmsg of `count` 10-byte buffers: b"0000000000", b"1111111111", …"""
    say("ready")
    wait_go()
    sock = socket.create_connection(("127.0.0.1", port))
    parts = [str(i % 10).encode() * 10 for i in range(count)]
    sent = sock.sendmsg(parts)
    assert sent == 10 * count, sent
    sock.close()
    say("done")


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "server":
        server(args[0], args[1], int(args[2]), int(args[3]), args[4] == "1")
    elif mode == "client":
        client(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5] == "1")
    elif mode == "flood":
        flood(int(args[0]), int(args[1]))
    elif mode == "buffers":
        many_buffers(int(args[0]), int(args[1]))
    elif mode == "sink":
        # Listens, prints the port, reads everything of one connection.
        listener = socket.create_server(("127.0.0.1", 0))
        say("port", listener.getsockname()[1])
        conn, _ = listener.accept()
        while conn.recv(65536):
            pass
        say("done")


if __name__ == "__main__":
    main()
