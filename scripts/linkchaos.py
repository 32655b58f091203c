#!/usr/bin/env python3
# linkchaos.py - a poor rural link for `SOAK_LINKS=1 scripts/soak.sh`: a TCP
# proxy between medroute's clients and medrouted's facility endpoint that,
# per connection, at random instants, stalls or cuts the link.
#
#   scripts/linkchaos.py --upstream HOST:PORT --port-file FILE --stats FILE
#                        --seed N [--hb-interval-ms 500] [--hb-timeout-ms 2000]
#                        [--gap-min-ms 3000] [--gap-max-ms 12000]
#
# It listens on 127.0.0.1 (a free port, written to --port-file once it
# listens) and, for every client connection, connects to --upstream (the
# daemon; refused or not answering within 2 s: the client's connection is
# closed) and forwards bytes unchanged both ways, but for what its
# connection's schedule does, one event every --gap-min-ms..--gap-max-ms:
#   - stall (half the events): forward nothing for a while, both sockets
#     left open; what arrives meanwhile (and a close) is held and forwarded,
#     in order, when the stall ends.  Half the stalls hold both ways, a
#     quarter only the client's bytes (it still hears the daemon, acks what
#     it gets, and those acks wait), a quarter only the daemon's.  Half last
#     0.1-0.9 x the heartbeat time-out, half 1.3-5 x it, so that the daemon
#     ends the session ("heartbeat_timeout") while the connection stays and
#     the frames the client queued arrive afterwards (past about 6 s the
#     client's ZeroMQ gives the connection up and comes back on a new one
#     while the old one still holds its frames);
#   - cut (a third): close both sockets at once, at that instant or right
#     after forwarding the next burst of bytes (either way; sometimes only
#     a part of it, a frame cut short);
#   - nothing (the rest): the link just works on.
# Each connection has its own random generator, seeded with --seed and the
# connection's number (in the order they were accepted): the same seed gives
# the n-th connection the same schedule.  Every event is logged on stdout in
# the daemon's log format (UTC), to be read beside medrouted.log.
#
# SIGUSR1: calm down - end the stalls, make no more events (the soak's last
# seconds are for catching up).  SIGTERM or SIGINT: write the tallies to
# --stats as JSON (connections, stalls short/long/between, longest stall,
# cuts by kind) and exit 0.
import argparse
import asyncio
import datetime
import json
import os
import random
import signal
import sys

CHUNK = 65536
CONNECT_TIMEOUT_S = 2.0
CUT_ARMED_MAX_S = 2.0  # a cut waiting for a burst that does not come cuts anyway


def log(event, **fields):
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    rest = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"{stamp} level=info event=linkchaos.{event} {rest}", flush=True)


class Chaos:
    """The proxy: its options, its tallies, and whether it still makes events."""

    def __init__(self, opts):
        self.opts = opts
        self.calm = asyncio.Event()
        self.links = set()
        self.n_conn = 0
        self.stats = {
            "connections": 0, "upstream_refused": 0,
            "stalls": 0, "stalls_short": 0, "stalls_long": 0, "stalls_between": 0,
            "stalls_both": 0, "stalls_up": 0, "stalls_down": 0,
            "longest_stall_ms": 0, "stall_ms_total": 0,
            "cuts": 0, "cuts_now": 0, "cuts_after_burst": 0, "cuts_mid_burst": 0,
        }

    async def on_client(self, c_reader, c_writer):
        self.n_conn += 1
        self.stats["connections"] += 1
        link = Link(self, self.n_conn, c_reader, c_writer)
        self.links.add(link)
        try:
            await link.run()
        finally:
            self.links.discard(link)

    def calm_down(self):
        if self.calm.is_set():
            return
        self.calm.set()
        log("calm", links=len(self.links))
        for link in self.links:
            for ev in link.flowing.values():
                ev.set()
            link.cut_armed = None

    def note_stall(self, ms, ways):
        o, st = self.opts, self.stats
        st["stalls"] += 1
        st[f"stalls_{ways}"] += 1
        st["stall_ms_total"] += ms
        st["longest_stall_ms"] = max(st["longest_stall_ms"], ms)
        if ms < o.hb_timeout_ms:
            st["stalls_short"] += 1
        elif ms > o.hb_timeout_ms + o.hb_interval_ms:
            st["stalls_long"] += 1  # the daemon's check has seen the time-out pass
        else:
            st["stalls_between"] += 1


class Link:
    """One client connection, its upstream connection and its schedule."""

    def __init__(self, chaos, no, c_reader, c_writer):
        self.chaos = chaos
        self.no = no
        self.rng = random.Random(f"{chaos.opts.seed}:{no}")
        self.c_reader, self.c_writer = c_reader, c_writer
        self.u_writer = None
        # Per way ("up": client to daemon), cleared while it stalls.
        self.flowing = {"up": asyncio.Event(), "down": asyncio.Event()}
        for ev in self.flowing.values():
            ev.set()
        # A cut waiting for the next burst: None, "whole" or "part".
        self.cut_armed = None
        self.closed = asyncio.Event()

    async def run(self):
        opts = self.chaos.opts
        try:
            u_reader, self.u_writer = await asyncio.wait_for(
                asyncio.open_connection(opts.up_host, opts.up_port), CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError) as e:
            self.chaos.stats["upstream_refused"] += 1
            log("refused", conn=self.no, why=type(e).__name__)
            self.c_writer.transport.abort()
            return
        log("open", conn=self.no)
        tasks = [asyncio.ensure_future(t) for t in (
            self.pump(self.c_reader, self.u_writer, "up"),
            self.pump(u_reader, self.c_writer, "down"),
            self.schedule(),
        )]
        await self.closed.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self, why, cut=False):
        """Closes both sides: a cut at once, dropping what either still had
        buffered; otherwise (one side closed) after what was forwarded."""
        if self.closed.is_set():
            return
        for w in (self.c_writer, self.u_writer):
            if cut:
                w.transport.abort()
            else:
                w.close()
        self.closed.set()
        log("cut" if cut else "closed", conn=self.no, why=why)

    def cut(self, kind, why):
        if self.closed.is_set():
            return
        self.chaos.stats["cuts"] += 1
        self.chaos.stats[f"cuts_{kind}"] += 1
        self.close(why, cut=True)

    async def pump(self, reader, writer, way):
        try:
            while True:
                data = await reader.read(CHUNK)
                await self.flowing[way].wait()  # a stall holds what came, and a close
                if not data:
                    self.close(f"eof_{way}")
                    return
                armed = self.cut_armed
                if armed == "part" and len(data) > 1:
                    data = data[:self.rng.randrange(1, len(data))]
                writer.write(data)
                if armed is not None:
                    self.cut_armed = None
                    kind = "after_burst" if armed == "whole" else "mid_burst"
                    self.cut(kind, f"{kind}_{way} bytes={len(data)}")
                    return
                await writer.drain()
        except OSError as e:
            self.close(f"{type(e).__name__}_{way}", cut=True)
        finally:
            self.close(f"pump_{way}_ended", cut=True)  # anything else: no half-open link

    async def schedule(self):
        opts, rng = self.chaos.opts, self.rng
        calm = self.chaos.calm
        while not calm.is_set():
            gap = rng.uniform(opts.gap_min_ms, opts.gap_max_ms) / 1000
            # The draws are made whatever happens, so that the schedule stays
            # the seed's: kind, stall length, cut kind.
            r = rng.random()
            short = rng.random() < 0.5
            k = rng.uniform(0.1, 0.9) if short else rng.uniform(1.3, 5.0)
            stall_ms = int(k * opts.hb_timeout_ms)
            ways = rng.choice(("both", "both", "up", "down"))
            cut_kind = rng.choice(("now", "whole", "part"))
            try:
                await asyncio.wait_for(calm.wait(), gap)
                return
            except asyncio.TimeoutError:
                pass
            if r < 0.5:
                log("stall", conn=self.no, ms=stall_ms, ways=ways)
                self.chaos.note_stall(stall_ms, ways)
                held = self.flowing.values() if ways == "both" else [self.flowing[ways]]
                for ev in held:
                    ev.clear()
                try:
                    await asyncio.wait_for(calm.wait(), stall_ms / 1000)
                except asyncio.TimeoutError:
                    pass
                for ev in held:
                    ev.set()
                log("flowing", conn=self.no)
            elif r < 0.5 + 1 / 3:
                if cut_kind == "now":
                    self.cut("now", "now")
                    return
                log("cut_armed", conn=self.no, kind=cut_kind)
                self.cut_armed = "whole" if cut_kind == "whole" else "part"
                await asyncio.sleep(CUT_ARMED_MAX_S)
                if self.cut_armed is not None:  # no burst came: cut now
                    self.cut_armed = None
                    self.cut("now", "no_burst")
                return


def host_port(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"want HOST:PORT, not '{s}'")
    return host, int(port)


async def main(opts):
    chaos = Chaos(opts)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, chaos.calm_down)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    server = await asyncio.start_server(chaos.on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tmp = opts.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.rename(tmp, opts.port_file)
    log("listening", port=port, upstream=f"{opts.up_host}:{opts.up_port}", seed=opts.seed)
    await stop.wait()
    server.close()
    for link in list(chaos.links):
        link.close("exit")
    tmp = opts.stats + ".tmp"
    with open(tmp, "w") as f:
        json.dump(chaos.stats, f)
        f.write("\n")
    os.rename(tmp, opts.stats)
    log("stopped", **chaos.stats)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="A TCP proxy that stalls and cuts its links.")
    ap.add_argument("--upstream", type=host_port, required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--hb-interval-ms", type=int, default=500)
    ap.add_argument("--hb-timeout-ms", type=int, default=2000)
    ap.add_argument("--gap-min-ms", type=int, default=3000)
    ap.add_argument("--gap-max-ms", type=int, default=12000)
    o = ap.parse_args()
    o.up_host, o.up_port = o.upstream
    if not 0 < o.gap_min_ms <= o.gap_max_ms:
        ap.error("want 0 < --gap-min-ms <= --gap-max-ms")
    asyncio.run(main(o))
    sys.exit(0)
