//! The Python programs the fault cases run inside lab nodes (python3 is a test
//! dependency). Each is bounded: it stops on its own after a deadline.

/// Appends `<source address> <payload>` of every UDP datagram received on port
/// argv[1] to the file argv[2]; exits after argv[3] seconds.
pub(super) const UDP_LOG: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.5)
f = open(sys.argv[2], "a")
end = time.time() + float(sys.argv[3])
print("listening", flush=True)
while time.time() < end:
    try:
        d, a = s.recvfrom(4096)
    except socket.timeout:
        continue
    f.write("%s %s\n" % (a[0], d.decode(errors="replace")))
    f.flush()
"#;

/// Sends argv[4] UDP datagrams `<argv[5]>-<n>` to argv[1]:argv[2] with inner
/// source address argv[3], written whole (IP header included) to a raw socket,
/// 10 ms apart.
pub(super) const RAW_UDP: &str = r#"
import socket, struct, sys, time
src, dst, port, n, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2:
        b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
for i in range(n):
    payload = ("%s-%d" % (tag, i)).encode()
    udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i + 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    s.sendto(ip + udp, (dst, 0))
    time.sleep(0.01)
"#;

/// Sends argv[3] UDP datagrams `<argv[4]>-<n>` to argv[1]:argv[2], argv[5]
/// seconds apart.
pub(super) const UDP_SEQ: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    try:
        s.sendto(("%s-%d" % (sys.argv[4], i)).encode(), (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass
    time.sleep(float(sys.argv[5]))
"#;

/// On interface argv[1], captures outgoing frames carrying a WireGuard data
/// message with content (type 4, longer than a keepalive) to UDP argv[2]:argv[3],
/// until it has argv[4] of them or argv[5] seconds pass; then sends every captured
/// frame again, byte for byte (UDP checksum zeroed: the capture may hold a partial
/// checksum left for the NIC), and prints `{"captured": n, "resent": n}`.
pub(super) const REPLAY: &str = r#"
import json, socket, struct, sys, time
iface, ip, port, want, secs = sys.argv[1], socket.inet_aton(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.settimeout(0.2)
print("capturing", flush=True)
frames = []
end = time.time() + secs
while len(frames) < want and time.time() < end:
    try:
        d, meta = s.recvfrom(65535)
    except socket.timeout:
        continue
    if meta[2] != socket.PACKET_OUTGOING or len(d) < 42 or d[12:14] != b"\x08\x00":
        continue
    ihl = (d[14] & 15) * 4
    total = struct.unpack("!H", d[16:18])[0]
    if d[23] != 17 or d[30:34] != ip or 14 + total != len(d):
        continue
    u = 14 + ihl
    if struct.unpack("!H", d[u + 2:u + 4])[0] != port:
        continue
    payload = d[u + 8:]
    if len(payload) <= 32 or payload[0] != 4:
        continue
    frames.append(d[:u + 6] + b"\0\0" + d[u + 8:])
time.sleep(0.5)
sent = 0
for f in frames:
    s.send(f)
    sent += 1
    time.sleep(0.01)
print(json.dumps({"captured": len(frames), "resent": sent}), flush=True)
"#;

/// Counts TCP connections accepted on port argv[1], one line each in the file
/// argv[2]; exits after argv[3] seconds.
pub(super) const ACCEPT_LOG: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
s.settimeout(0.5)
f = open(sys.argv[2], "a")
end = time.time() + float(sys.argv[3])
print("listening", flush=True)
while time.time() < end:
    try:
        c, a = s.accept()
    except socket.timeout:
        continue
    f.write("%s\n" % a[0])
    f.flush()
    c.close()
"#;

/// Floods `POST /v1/register/challenge` on https://argv[1]:argv[2] from argv[3]
/// keep-alive connections until the file argv[4] exists or argv[5] seconds pass;
/// prints `answered <n>` every second, then `{"status": {code: n}, "errors": n}`.
pub(super) const CHALLENGE_FLOOD: &str = r#"
import http.client, json, os, ssl, sys, threading, time
host, port, n, stop, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
lock = threading.Lock()
counts = {}
errors = [0]
end = time.time() + secs
def worker():
    c = None
    while time.time() < end and not os.path.exists(stop):
        try:
            if c is None:
                c = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
            c.request("POST", "/v1/register/challenge", body=b"", headers={"Content-Length": "0"})
            r = c.getresponse()
            r.read()
            with lock:
                counts[r.status] = counts.get(r.status, 0) + 1
            if (r.getheader("Connection") or "").lower() == "close":
                c.close()
                c = None
        except Exception:
            with lock:
                errors[0] += 1
            try:
                c.close()
            except Exception:
                pass
            c = None
            time.sleep(0.01)
ts = [threading.Thread(target=worker) for _ in range(n)]
for t in ts:
    t.start()
print("flooding", flush=True)
while any(t.is_alive() for t in ts):
    time.sleep(1)
    with lock:
        print("answered %d" % sum(counts.values()), flush=True)
for t in ts:
    t.join()
print(json.dumps({"status": counts, "errors": errors[0]}), flush=True)
"#;

/// Creates join tokens for network argv[4] on https://argv[1]:argv[2] with the
/// admin token in the file argv[3], one after another on a keep-alive connection
/// (reconnecting after errors), appending the description of each one answered
/// 2xx to the file argv[5]; stops when the file argv[6] exists or argv[7] seconds
/// pass; prints `{"attempted": n, "acked": n, "errors": n}`.
pub(super) const TOKEN_WRITER: &str = r#"
import http.client, json, os, ssl, sys, time
host, port, tokfile, net, out, stop, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], float(sys.argv[7])
tok = open(tokfile).read().strip()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
f = open(out, "a")
attempted = acked = errors = 0
c = None
end = time.time() + secs
print("writing", flush=True)
while time.time() < end and not os.path.exists(stop):
    desc = "fault-w-%d" % attempted
    body = json.dumps({"networks": [net], "expires_in_secs": 3600, "max_uses": 1, "description": desc})
    attempted += 1
    try:
        if c is None:
            c = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
        c.request("POST", "/v1/admin/tokens", body=body,
                  headers={"Content-Type": "application/json", "Authorization": "Bearer " + tok})
        r = c.getresponse()
        r.read()
        if 200 <= r.status < 300:
            acked += 1
            f.write(desc + "\n")
            f.flush()
            os.fsync(f.fileno())
        else:
            errors += 1
    except Exception:
        errors += 1
        try:
            c.close()
        except Exception:
            pass
        c = None
        time.sleep(0.05)
print(json.dumps({"attempted": attempted, "acked": acked, "errors": errors}), flush=True)
"#;

/// Opens argv[2] idle TCP connections to each `ip:port` of the comma-separated
/// argv[1], and argv[4] slowloris connections to argv[3] (TLS, then an HTTP
/// request whose headers never end: one header line a second); holds them until
/// the file argv[5] exists or argv[6] seconds pass; prints how many opened and how
/// many were still open at the end.
pub(super) const IDLE_CONNS: &str = r#"
import json, os, resource, socket, ssl, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in sys.argv[1].split(",")]
n = int(sys.argv[2])
sh, sp = sys.argv[3].rsplit(":", 1)
nslow, stop, secs = int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
socks = {}
failed = {}
for t in targets:
    socks[t], failed[t] = [], 0
    for i in range(n):
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect(t)
            socks[t].append(s)
        except OSError:
            failed[t] += 1
            s.close()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
slow, slow_failed, lines = [], 0, 0
for i in range(nslow):
    try:
        s = ctx.wrap_socket(socket.create_connection((sh, int(sp)), timeout=3))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: controller\r\n")
        slow.append(s)
    except OSError:
        slow_failed += 1
print("holding", flush=True)
end = time.time() + secs
while time.time() < end and not os.path.exists(stop):
    for s in list(slow):
        try:
            s.sendall(b"X-Slow-%d: y\r\n" % lines)
            lines += 1
        except OSError:
            slow.remove(s)
    time.sleep(1)
def alive(s):
    try:
        s.setblocking(False)
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
report = {"%s:%d" % t: {"opened": len(socks[t]), "failed": failed[t],
                        "open_at_end": sum(1 for s in socks[t] if alive(s))} for t in targets}
report["slowloris"] = {"opened": nslow - slow_failed, "open_at_end": len(slow), "header_lines": lines}
print(json.dumps(report), flush=True)
"#;

/// Sends argv[3] fresh HTTPS `GET /healthz` requests to argv[1]:argv[2], one after
/// another, each with a 5 s timeout; prints `{"ok": n, "failed": n, "max_ms": x}`.
pub(super) const HEALTH_PROBE: &str = r#"
import http.client, json, ssl, sys, time
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ok = failed = 0
worst = 0.0
for i in range(int(sys.argv[3])):
    t = time.time()
    try:
        c = http.client.HTTPSConnection(sys.argv[1], int(sys.argv[2]), context=ctx, timeout=5)
        c.request("GET", "/healthz")
        r = c.getresponse()
        r.read()
        c.close()
        if r.status == 200:
            ok += 1
        else:
            failed += 1
    except Exception:
        failed += 1
    worst = max(worst, (time.time() - t) * 1000)
    time.sleep(0.2)
print(json.dumps({"ok": ok, "failed": failed, "max_ms": round(worst, 1)}), flush=True)
"#;
