#!/usr/bin/env python3
"""The host side of the micro guest's network test protocol (guest/micro/README.md, "network test protocol").

Run on the host end of a TAP device, usually inside a network namespace the test created:

  phase 1  receive COUNT frames the guest sends (EtherType 0x88B5, broadcast), in order, each checked;
  phase 2  send COUNT frames to the guest's MAC (learnt in phase 1), at most WINDOW unanswered at a time, and
           check that each comes back echoed (dst = our MAC, src = the guest's MAC, payload unchanged).

Frame payload after the 14-byte Ethernet header: b"VIRO", u32 LE seq, u32 LE frame length, then the byte at
frame offset k (k >= 26) is (seq * 7 + k) & 0xff.

Prints one JSON object on stdout (counts, rates, the guest MAC, errors) and exits 0 only if every frame of
both phases arrived intact and in order. Needs CAP_NET_RAW (AF_PACKET).
"""
import argparse
import json
import os
import select
import socket
import struct
import sys
import time

ETH_TYPE = 0x88B5
MAGIC = b"VIRO"
PACKET_OUTGOING = 4
PEER_MAC = bytes.fromhex("020000000001")
BROADCAST = b"\xff" * 6


# Byte k of a frame is (seq * 7 + k) & 0xff: a window into 0, 1, ..., 255 repeated, so a frame's body is one slice
# (a per-byte Python loop costs ~1 ms a frame under TCG, in the emulated KVM host, which starves the guest).
CYCLE = bytes(range(256)) * 64


def payload(seq: int, size: int) -> bytes:
    head = MAGIC + struct.pack("<II", seq, size)
    start = (seq * 7 + 26) & 0xFF
    body = CYCLE[start : start + size - 26]
    if len(body) != size - 26:
        raise ValueError(f"frames of at most {len(CYCLE) - 256 + 26} bytes")
    return head + body


def check(frame: bytes, want_seq: int, size: int) -> str | None:
    if len(frame) < 26:
        return f"frame of {len(frame)} bytes is too short"
    if frame[14:18] != MAGIC:
        return f"bad magic {frame[14:18]!r}"
    seq, length = struct.unpack_from("<II", frame, 18)
    if seq != want_seq:
        return f"seq {seq}, expected {want_seq}"
    if length != len(frame) or length != size:
        return f"seq {seq}: length field {length}, frame has {len(frame)} bytes, expected {size}"
    if frame[26:] != payload(seq, size)[12:]:
        bad = next(k for k in range(26, size) if frame[k] != ((seq * 7 + k) & 0xFF))
        return f"seq {seq}: payload differs at offset {bad}"
    return None


class Peer:
    def __init__(self, iface: str, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TYPE))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE (root)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        self.sock.bind((iface, ETH_TYPE))
        self.sock.setblocking(False)
        self.timeout = timeout
        self.noise = 0

    def recv(self) -> bytes | None:
        """The next frame for us (not one we sent), or None after `timeout` seconds of silence."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                frame, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                select.select([self.sock], [], [], left)
                continue
            if addr[2] == PACKET_OUTGOING:
                continue
            return frame

    def send(self, frame: bytes) -> None:
        while True:
            try:
                self.sock.send(frame)
                return
            except BlockingIOError:
                select.select([], [self.sock], [], 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iface", required=True, help="the TAP device (host end)")
    ap.add_argument("--count", type=int, default=10000, help="frames each way (default 10000)")
    ap.add_argument("--size", type=int, default=1000, help="frame length without FCS, 60..1514 (default 1000)")
    ap.add_argument("--window", type=int, default=32, help="phase 2: unanswered frames at most (default 32)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds of silence before giving up (default 60)")
    ap.add_argument("--ready-file", help="create this file once the socket is bound")
    a = ap.parse_args()
    if not 60 <= a.size <= 1514:
        ap.error("--size must be 60..1514")

    peer = Peer(a.iface, a.timeout)
    if a.ready_file:
        with open(a.ready_file, "w") as f:
            f.write(str(os.getpid()))
    out: dict = {"count": a.count, "size": a.size, "phase1": 0, "phase2": 0, "errors": []}

    # Phase 1: the guest sends COUNT broadcast frames.
    guest_mac = None
    t0 = None
    while out["phase1"] < a.count:
        frame = peer.recv()
        if frame is None:
            out["errors"].append(f"phase 1: timed out after {out['phase1']} frames")
            break
        if t0 is None:
            t0 = time.monotonic()
        err = check(frame, out["phase1"], a.size)
        if err is None and frame[0:6] != BROADCAST:
            err = f"seq {out['phase1']}: destination {frame[0:6].hex(':')} is not broadcast"
        if err:
            out["errors"].append(f"phase 1: {err}")
            break
        guest_mac = frame[6:12]
        out["phase1"] += 1
    if t0 is not None:
        out["phase1_seconds"] = round(time.monotonic() - t0, 3)
    out["guest_mac"] = guest_mac.hex(":") if guest_mac else None

    # Phase 2: echo with a window.
    if not out["errors"] and guest_mac is not None:
        t0 = time.monotonic()
        sent = 0
        while out["phase2"] < a.count:
            while sent < a.count and sent - out["phase2"] < a.window:
                peer.send(guest_mac + PEER_MAC + struct.pack("!H", ETH_TYPE) + payload(sent, a.size))
                sent += 1
            frame = peer.recv()
            if frame is None:
                out["errors"].append(f"phase 2: timed out after {out['phase2']} echoes ({sent} sent)")
                break
            err = check(frame, out["phase2"], a.size)
            if err is None and (frame[0:6] != PEER_MAC or frame[6:12] != guest_mac):
                err = f"seq {out['phase2']}: echo addressed {frame[6:12].hex(':')} -> {frame[0:6].hex(':')}"
            if err:
                out["errors"].append(f"phase 2: {err}")
                break
            out["phase2"] += 1
        out["phase2_seconds"] = round(time.monotonic() - t0, 3)

    out["ok"] = not out["errors"] and out["phase1"] == a.count and out["phase2"] == a.count
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
