"""libzmq test peers for the zmtp handler (Debian's python3-zmq).

worker ADDR MECH [SECRET PUBLIC]   ROUTER bound to ADDR echoing every message
poolworker ADDR MECH [SECRET PUBLIC] ROUTER connecting to ADDR (a zmtp_workers listener), echoing
poolworkerfrom ADDR NULL SRCIP      the same, NULL, connecting from source address SRCIP
client ADDR MECH [SERVERPUB] SIZE  DEALER: sends [b"hello", SIZE bytes], expects the echo
clientfrom ADDR MECH SRCIP [SERVERPUB] SIZE  the same, connecting from source address SRCIP
holdclient ADDR MECH SIZE           like client, then stays connected; prints "disconnected" when libzmq sees the connection end
repworker ADDR MECH [bind|connect]  REP echo worker
reqclient ADDR MECH SIZE           REQ: one request of SIZE bytes, expects the echo
idclient ADDR NULL IDENTITY SIZE   client with a routing identity
throughput ADDR MECH N SIZE [SERVERPUB]  DEALER: N pipelined SIZE-byte messages echoed; prints seconds
keypair                            prints a CURVE keypair (public secret)
"""
import sys, zmq

def main():
    role = sys.argv[1]
    if role == "keypair":
        pub, sec = zmq.curve_keypair()
        print(pub.decode(), sec.decode())
        return 0
    ctx = zmq.Context()
    addr, mech = sys.argv[2], sys.argv[3]
    if role == "repworker":  # repworker ADDR MECH bind|connect [SECRET PUBLIC]
        s = ctx.socket(zmq.REP)
        if mech == "CURVE":
            s.curve_server = True
            s.curve_secretkey = sys.argv[5].encode()
            s.curve_publickey = sys.argv[6].encode()
        if sys.argv[4] == "bind":
            s.bind("tcp://" + addr)
        else:
            s.setsockopt(zmq.HANDSHAKE_IVL, 0)
            s.setsockopt(zmq.RECONNECT_IVL, 50)
            s.connect("tcp://" + addr)
        print("ready", flush=True)
        while True:
            s.send(s.recv())
    if role == "throughput":
        import time
        s = ctx.socket(zmq.DEALER)
        if mech == "CURVE":
            pub, sec = zmq.curve_keypair()
            s.curve_publickey, s.curve_secretkey = pub, sec
            s.curve_serverkey = sys.argv[6].encode()
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 20000)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.connect("tcp://" + addr)
        n, size = int(sys.argv[4]), int(sys.argv[5])
        s.send(b"warm")
        s.recv()
        msg = b"m" * size
        start = time.monotonic()
        for _ in range(n):
            s.send(msg)
        for _ in range(n):
            s.recv()
        print("%.6f" % (time.monotonic() - start), flush=True)
        return 0
    if role == "reqclient":  # reqclient ADDR MECH SIZE [SERVERPUB]
        s = ctx.socket(zmq.REQ)
        if mech == "CURVE":
            pub, sec = zmq.curve_keypair()
            s.curve_publickey, s.curve_secretkey = pub, sec
            s.curve_serverkey = sys.argv[5].encode()
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, 3000)
        s.connect("tcp://" + addr)
        body = b"r" * int(sys.argv[4])
        s.send(body)
        try:
            ok = s.recv() == body
        except zmq.Again:
            print("timeout", flush=True)
            return 2
        print("ok" if ok else "mismatch", flush=True)
        return 0 if ok else 3
    if role == "poolworkerfrom":  # poolworkerfrom ADDR NULL SRCIP
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.HANDSHAKE_IVL, 0)
        s.setsockopt(zmq.RECONNECT_IVL, 50)
        s.connect("tcp://%s:0;%s" % (sys.argv[4], addr))
        print("ready", flush=True)
        while True:
            s.send_multipart(s.recv_multipart())
    if role in ("worker", "poolworker"):
        s = ctx.socket(zmq.ROUTER)
        if mech == "CURVE":
            s.curve_server = True
            s.curve_secretkey = sys.argv[4].encode()
            s.curve_publickey = sys.argv[5].encode()
        if mech == "PLAIN":
            from zmq.auth.thread import ThreadAuthenticator
            auth = ThreadAuthenticator(ctx)
            auth.start()
            auth.configure_plain(domain="*", passwords={"alice": "plain-secret-pw"})
            s.plain_server = True
        if role == "worker":
            s.bind("tcp://" + addr)
        else:
            s.setsockopt(zmq.HANDSHAKE_IVL, 0)  # wait parked as long as it takes
            s.setsockopt(zmq.RECONNECT_IVL, 50)
            s.connect("tcp://" + addr)
        print("ready", flush=True)
        while True:
            s.send_multipart(s.recv_multipart())
    s = ctx.socket(zmq.DEALER)
    src = ""
    if role == "clientfrom":
        src = sys.argv[4] + ":0;"
        del sys.argv[4]
    if role == "idclient":  # client with a routing identity: idclient ADDR NULL IDENTITY SIZE
        s.setsockopt(zmq.IDENTITY, sys.argv[4].encode())
        del sys.argv[4]
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 3000)
    if mech == "CURVE":
        pub, sec = zmq.curve_keypair()
        s.curve_publickey, s.curve_secretkey = pub, sec
        s.curve_serverkey = sys.argv[4].encode()
        size = int(sys.argv[5])
    elif mech == "PLAIN":
        s.plain_username, s.plain_password = b"alice", b"plain-secret-pw"
        size = int(sys.argv[4])
    else:
        size = int(sys.argv[4])
    if role == "holdclient":
        monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    s.connect("tcp://" + src + addr)
    big = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    s.send_multipart([b"hello", big])
    try:
        got = s.recv_multipart()
    except zmq.Again:
        print("timeout", flush=True)
        return 2
    if got != [b"hello", big]:
        print("mismatch", len(got), [len(p) for p in got], flush=True)
        return 3
    print("ok", flush=True)
    if role == "holdclient":
        from zmq.utils.monitor import recv_monitor_message
        recv_monitor_message(monitor)  # blocks until the connection ends
        print("disconnected", flush=True)
    return 0

sys.exit(main())
