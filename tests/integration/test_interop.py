#!/usr/bin/env python3
"""Interoperability test: a facility client written in Python from proto/ and
docs/protocol.md alone (no code from the C client library).

    test_interop.py SOURCE_DIR MEDROUTED_PATH

It generates the medroute.v1 Python modules with protoc into a temporary
directory, writes its own medroute.conf (free loopback ports, data_dir in the
temporary directory, insecure = true), starts medrouted, and speaks the wire
protocol as a township health centre and as the lead hospital:

  Hello/Welcome, a Referral up with its Ack, the Delivery at the lead and its
  DeliveryAck, a ReferralUpdate back with correlation_id, a resend of the same
  bytes (Ack duplicate=true, routed once), the error codes the document
  promises for a selection of bad frames (a patient name in GBK among them),
  an offline destination, a session takeover with redelivery, several Acks
  and DeliveryAcks in one frame, and the operator endpoint's status and
  queue_list.

Every network wait is bounded.  The daemon is stopped with SIGTERM and must
exit 0.  The last line is "N passed, M failed"; the exit status is 0 only when
nothing failed.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Debian's python3-zmq / python3-protobuf live with the system interpreter;
# CMake may have picked another Python 3 (pyenv, venv).  Re-run under
# /usr/bin/python3 in that case.
try:
    import zmq  # noqa: F401
    import google.protobuf  # noqa: F401
except ImportError:
    _SYS_PY = "/usr/bin/python3"
    if (os.environ.get("MR_INTEROP_REEXEC") != "1" and os.path.exists(_SYS_PY)
            and os.path.realpath(sys.executable) != os.path.realpath(_SYS_PY)):
        os.environ["MR_INTEROP_REEXEC"] = "1"
        os.execv(_SYS_PY, [_SYS_PY] + sys.argv)
    raise

import zmq

BROKER_ID = "interop-broker"
LEAD = "yx-lead"
IMAGING = "yx-imaging"
TOWN = "t-aihua"
TOWN2 = "t-lishu"
FACILITIES = [
    (LEAD, "lead", "County People's Hospital", None),
    (IMAGING, "imaging_centre", "Regional imaging diagnosis centre", LEAD),
    (TOWN, "township", "Aihua town health centre", None),
    (TOWN2, "township", "Lishu township health centre", None),
]
MAX_MESSAGE_BYTES = 65536
HB_INTERVAL_MS = 1000
HB_TIMEOUT_MS = 10000
REDELIVERY_MS = 30000

PASSED = 0
FAILED = 0


def check(what, ok, detail=""):
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print("ok     %s" % what, flush=True)
    else:
        FAILED += 1
        print("FAILED %s%s" % (what, (" -- " + detail) if detail else ""), flush=True)
    return ok


def now_ms():
    return int(time.time() * 1000)


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def generate_modules(source_dir, out_dir):
    proto_dir = os.path.join(source_dir, "proto")
    files = ["medroute/v1/%s.proto" % n for n in ("clinical", "envelope", "frame", "operator")]
    subprocess.run(["protoc", "--python_out=" + out_dir, "--proto_path=" + proto_dir] + files,
                   check=True, timeout=60)
    sys.path.insert(0, out_dir)
    from medroute.v1 import clinical_pb2, envelope_pb2, frame_pb2, operator_pb2
    return clinical_pb2, envelope_pb2, frame_pb2, operator_pb2


def write_config(path, facility_ep, operator_ep, data_dir):
    lines = [
        'broker_id = "%s";' % BROKER_ID,
        'facility_endpoint = "%s";' % facility_ep,
        'operator_endpoint = "%s";' % operator_ep,
        'data_dir = "%s";' % data_dir,
        "insecure = true;",
        'log_level = "info";',
        "limits = {",
        "  max_message_bytes = %d;" % MAX_MESSAGE_BYTES,
        "  max_inflight = 16;",
        "  heartbeat_interval_ms = %d;" % HB_INTERVAL_MS,
        "  heartbeat_timeout_ms = %d;" % HB_TIMEOUT_MS,
        "  redelivery_timeout_ms = %d;" % REDELIVERY_MS,
        "};",
        "facilities = (",
    ]
    items = []
    for fid, role, name, host in FACILITIES:
        item = '  { id = "%s"; role = "%s"; name = "%s";' % (fid, role, name)
        if host:
            item += ' host = "%s";' % host
        items.append(item + " }")
    lines.append(",\n".join(items))
    lines.append(");")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class Facility:
    """A facility connection: one DEALER, one serialized Frame per message."""

    def __init__(self, ctx, pb, endpoint, facility_id):
        self.pb = pb
        self.facility_id = facility_id
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.backlog = []          # frames received but not yet asked for
        self.last_tx = 0
        self.welcome = None

    def close(self):
        self.sock.close(0)

    def send_bytes(self, data):
        self.sock.send(data)
        self.last_tx = now_ms()

    def frame(self, **body):
        f = self.pb.Frame()
        f.version = self.pb.PROTOCOL_VERSION_1
        for name, value in body.items():
            getattr(f, name).CopyFrom(value)
        return f

    def send(self, **body):
        data = self.frame(**body).SerializeToString()
        self.send_bytes(data)
        return data

    def _heartbeat_if_due(self):
        if self.welcome is not None and now_ms() - self.last_tx >= HB_INTERVAL_MS // 2:
            self.send(heartbeat=self.pb.Heartbeat(sent_at_ms=now_ms()))

    def expect(self, pred, timeout_s=5.0):
        """The first frame (backlog first) for which pred(frame) is true, or None."""
        for i, f in enumerate(self.backlog):
            if pred(f):
                return self.backlog.pop(i)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._heartbeat_if_due()
            if self.sock.poll(int(min(left, 0.2) * 1000), zmq.POLLIN):
                data = self.sock.recv()
                f = self.pb.Frame()
                f.ParseFromString(data)
                if f.WhichOneof("body") == "heartbeat":
                    continue
                if pred(f):
                    return f
                self.backlog.append(f)

    def expect_body(self, body, timeout_s=5.0, where=None):
        return self.expect(lambda f: f.WhichOneof("body") == body and (where is None or where(f)),
                           timeout_s)

    def hello(self, timeout_s=10.0, max_inflight=0, max_acks_per_frame=0):
        """Hello until Welcome (the daemon may still be starting)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.send(hello=self.pb.Hello(facility_id=self.facility_id,
                                          client_name="test_interop.py/1",
                                          max_inflight=max_inflight,
                                          max_acks_per_frame=max_acks_per_frame))
            f = self.expect(lambda f: f.WhichOneof("body") in ("welcome", "error"), 1.0)
            if f is not None:
                if f.WhichOneof("body") == "welcome":
                    self.welcome = f.welcome
                return f
        return None


def main():
    if len(sys.argv) != 3:
        print("usage: test_interop.py SOURCE_DIR MEDROUTED_PATH", file=sys.stderr)
        return 2
    source_dir, medrouted = sys.argv[1], sys.argv[2]
    tmp = tempfile.TemporaryDirectory(prefix="mr-interop-")
    gen_dir = os.path.join(tmp.name, "gen")
    os.mkdir(gen_dir)
    clinical, envelope_pb, pb, op = generate_modules(source_dir, gen_dir)
    check("protoc generated the medroute.v1 Python modules", True)

    fport, oport = free_port(), free_port()
    while oport == fport:
        oport = free_port()
    facility_ep = "tcp://127.0.0.1:%d" % fport
    operator_ep = "tcp://127.0.0.1:%d" % oport
    conf = os.path.join(tmp.name, "medroute.conf")
    write_config(conf, facility_ep, operator_ep, os.path.join(tmp.name, "data"))
    log_path = os.path.join(tmp.name, "medrouted.log")
    log = open(log_path, "w")
    daemon = subprocess.Popen([medrouted, "--config", conf], stdout=log, stderr=subprocess.STDOUT)
    ctx = zmq.Context()
    conns = []
    exit_code = None
    try:
        run(ctx, conns, daemon, pb, envelope_pb, clinical, op, facility_ep, operator_ep)
    except Exception as e:  # a crash in the test is a failure, not a hang
        import traceback
        traceback.print_exc()
        check("test ran to the end without an exception", False, repr(e))
    finally:
        for c in conns:
            c.close()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                exit_code = daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
                exit_code = "killed after 20 s"
        else:
            exit_code = "exited early with %s" % daemon.returncode
        check("medrouted exits 0 on SIGTERM", exit_code == 0, "exit %s" % (exit_code,))
        ctx.term()
        log.close()
        if FAILED:
            print("---- medrouted log (last 40 lines) ----")
            with open(log_path) as f:
                for line in f.readlines()[-40:]:
                    print("  " + line.rstrip())
        tmp.cleanup()
    print("%d passed, %d failed" % (PASSED, FAILED))
    return 0 if FAILED == 0 else 1


def make_patient(clinical):
    p = clinical.Patient(name="Zhang San", birth_date="1956-03-14", sex=clinical.SEX_MALE,
                         phone="13800000000")
    p.identifiers.add(system="cn-resident-id", value="530900195603140011")
    p.identifiers.add(system="cn-insurance", value="YX-88213")
    return p


def run(ctx, conns, daemon, pb, envelope_pb, clinical, op, facility_ep, operator_ep):
    def connect(fid):
        c = Facility(ctx, pb, facility_ep, fid)
        conns.append(c)
        return c

    # ---- sessions -----------------------------------------------------------
    town = connect(TOWN)
    lead = connect(LEAD)
    for c in (town, lead):
        f = c.hello()
        ok = check("%s: Hello answered with Welcome" % c.facility_id,
                   f is not None and f.WhichOneof("body") == "welcome",
                   "got %r" % (f,))
        if not ok:
            raise RuntimeError("no Welcome (daemon running: %s)" % (daemon.poll() is None))
        w = f.welcome
        check("%s: Welcome carries broker_id, limits and pending 0" % c.facility_id,
              f.version == pb.PROTOCOL_VERSION_1 and w.broker_id == BROKER_ID and
              w.heartbeat_interval_ms == HB_INTERVAL_MS and
              w.heartbeat_timeout_ms == HB_TIMEOUT_MS and
              w.max_message_bytes == MAX_MESSAGE_BYTES and w.pending == 0, str(w))

    # ---- a referral up --------------------------------------------------------
    ref = envelope_pb.Envelope(
        message_id="aihua-ref-0001", source=TOWN, destination=LEAD,
        kind=envelope_pb.KIND_REFERRAL, priority=envelope_pb.PRIORITY_URGENT,
        created_at_ms=now_ms())
    r = ref.referral
    r.referral_id = "RF-2024-0001"
    r.patient.CopyFrom(make_patient(clinical))
    r.reasons.add(system="ICD-10", code="I21.9", display="Acute myocardial infarction")
    r.service = clinical.SERVICE_INPATIENT_BED
    r.department = "cardiology"
    r.family_doctor_contract = True
    r.deductible_paid_fen = 30000
    r.documents.add(uri="https://pacs.t-aihua.example/ecg/123", content_type="application/pdf",
                    title="ECG")
    r.referring_practitioner = "Dr Li"
    r.clinical_summary = "chest pain for 3 hours"
    t_before = now_ms()
    ref_bytes = town.send(envelope=ref)
    f = town.expect_body("ack")
    check("township: Referral acknowledged with Ack{message_id, seq>0, duplicate=false}",
          f is not None and f.ack.message_id == ref.message_id and f.ack.seq > 0 and
          not f.ack.duplicate, str(f))
    ref_seq = f.ack.seq if f is not None else 0

    f = lead.expect_body("delivery")
    ok = check("lead: Delivery of the referral arrives", f is not None, "no Delivery")
    if ok:
        d = f.delivery
        check("lead: Delivery.seq equals the sender's Ack.seq", d.seq == ref_seq,
              "%d != %d" % (d.seq, ref_seq))
        check("lead: first Delivery has redelivered=false, attempt=1",
              not d.redelivered and d.attempt == 1, "redelivered=%s attempt=%d" %
              (d.redelivered, d.attempt))
        check("lead: stored_at_ms is the broker's commit time",
              t_before - 1000 <= d.stored_at_ms <= now_ms() + 1000, str(d.stored_at_ms))
        check("lead: Delivery.envelope equals the envelope sent", d.envelope == ref,
              str(d.envelope))
        e = d.envelope
        check("lead: envelope fields (source, destination, kind, priority, payload case)",
              e.source == TOWN and e.destination == LEAD and
              e.kind == envelope_pb.KIND_REFERRAL and
              e.priority == envelope_pb.PRIORITY_URGENT and
              e.WhichOneof("payload") == "referral")
        check("lead: referral content (id, patient, reason, deductible, contract)",
              e.referral.referral_id == "RF-2024-0001" and
              e.referral.patient.identifiers[0].value == "530900195603140011" and
              e.referral.reasons[0].code == "I21.9" and
              e.referral.deductible_paid_fen == 30000 and
              e.referral.family_doctor_contract and
              e.referral.service == clinical.SERVICE_INPATIENT_BED)
        lead.send(delivery_ack=pb.DeliveryAck(seq=d.seq))

    # ---- its acceptance back ----------------------------------------------------
    upd = envelope_pb.Envelope(
        message_id="lead-upd-0001", source=LEAD, destination=TOWN,
        kind=envelope_pb.KIND_REFERRAL_UPDATE, priority=envelope_pb.PRIORITY_ROUTINE,
        created_at_ms=now_ms(), correlation_id=ref.message_id)
    u = upd.referral_update
    u.referral_id = "RF-2024-0001"
    u.step = clinical.STEP_ACCEPTED
    u.appointment_at_ms = now_ms() + 86400 * 1000
    u.location = "Cardiology ward 3, bed 12"
    u.practitioner = "Dr Wang"
    lead.send(envelope=upd)
    f = lead.expect_body("ack")
    check("lead: ReferralUpdate acknowledged with a later seq",
          f is not None and f.ack.message_id == upd.message_id and f.ack.seq > ref_seq and
          not f.ack.duplicate, str(f))
    f = town.expect_body("delivery")
    ok = check("township: Delivery of the ReferralUpdate arrives", f is not None)
    if ok:
        e = f.delivery.envelope
        check("township: update carries correlation_id, kind, step and appointment",
              e.correlation_id == ref.message_id and e.source == LEAD and
              e.kind == envelope_pb.KIND_REFERRAL_UPDATE and
              e.WhichOneof("payload") == "referral_update" and
              e.referral_update.step == clinical.STEP_ACCEPTED and
              e.referral_update.appointment_at_ms == u.appointment_at_ms, str(e))
        town.send(delivery_ack=pb.DeliveryAck(seq=f.delivery.seq))

    # ---- resend after a "lost" Ack ----------------------------------------------
    town.send_bytes(ref_bytes)
    f = town.expect_body("ack")
    check("township: resend of the same bytes gets Ack{duplicate=true, same seq}",
          f is not None and f.ack.message_id == ref.message_id and f.ack.duplicate and
          f.ack.seq == ref_seq, str(f))
    restamped = envelope_pb.Envelope()
    restamped.CopyFrom(ref)
    restamped.created_at_ms = ref.created_at_ms + 5000
    town.send(envelope=restamped)
    f = town.expect_body("ack")
    check("township: resend with only created_at_ms changed is still a duplicate",
          f is not None and f.ack.duplicate and f.ack.seq == ref_seq, str(f))
    f = lead.expect_body("delivery", timeout_s=1.0)
    check("lead: the resends are not delivered again", f is None, str(f))

    # ---- refusals ------------------------------------------------------------------
    def refused(conn, env, code, what, echo_id=None):
        # Error.message_id echoes the refused id (cut to 64 characters).
        echo = env.message_id[:64] if echo_id is None else echo_id
        conn.send(envelope=env)
        f = conn.expect_body("error", where=lambda f: f.error.message_id == echo)
        check("%s -> Error %s" % (what, pb.ErrorCode.Name(code)),
              f is not None and f.error.code == code, str(f))

    bad = envelope_pb.Envelope()
    bad.CopyFrom(ref)
    bad.message_id = "aihua-bad-dest"
    bad.destination = "t-nowhere"
    refused(town, bad, pb.ERROR_UNKNOWN_DESTINATION, "unknown destination")

    conflict = envelope_pb.Envelope()
    conflict.CopyFrom(ref)
    conflict.referral.department = "neurology"
    refused(town, conflict, pb.ERROR_CONFLICT, "same message_id, different content")

    mism = envelope_pb.Envelope()
    mism.CopyFrom(upd)
    mism.message_id = "aihua-mismatch"
    mism.source = TOWN
    mism.destination = LEAD
    mism.kind = envelope_pb.KIND_REFERRAL
    refused(town, mism, pb.ERROR_INVALID, "kind that does not match the payload")

    forged = envelope_pb.Envelope()
    forged.CopyFrom(ref)
    forged.message_id = "aihua-forged"
    forged.source = TOWN2
    refused(town, forged, pb.ERROR_FORBIDDEN, "source of another registered facility")

    selfd = envelope_pb.Envelope()
    selfd.CopyFrom(ref)
    selfd.message_id = "aihua-self"
    selfd.destination = TOWN
    refused(town, selfd, pb.ERROR_INVALID, "destination is the sender itself")

    longid = envelope_pb.Envelope()
    longid.CopyFrom(ref)
    longid.message_id = "x" * 65
    refused(town, longid, pb.ERROR_INVALID, "message_id of 65 characters")

    # An id holding a NUL is not echoed: C reads it as the part before the
    # NUL, which could be another message of the sender's outbox.
    nulid = envelope_pb.Envelope()
    nulid.CopyFrom(ref)
    nulid.message_id = "aihua-1\x00tail"
    refused(town, nulid, pb.ERROR_INVALID, "message_id holding a NUL", echo_id="")

    # 72 bytes of Chinese (24 characters): echoed cut to 21 whole characters,
    # so that this strict decoder takes the Error; so is a long destination.
    cjkid = envelope_pb.Envelope()
    cjkid.CopyFrom(ref)
    cjkid.message_id = "转" * 24
    refused(town, cjkid, pb.ERROR_INVALID, "message_id of 72 bytes of Chinese",
            echo_id="转" * 21)
    cjkdest = envelope_pb.Envelope()
    cjkdest.CopyFrom(ref)
    cjkdest.message_id = "aihua-cjk-dest"
    cjkdest.destination = "转" * 30
    refused(town, cjkdest, pb.ERROR_UNKNOWN_DESTINATION, "destination of 30 Chinese characters")

    # A patient name in GBK, as a legacy system writes it: Python cannot even
    # build it (a proto3 string must be UTF-8), so the name's bytes are put in
    # place of a placeholder of the same length.  Refused, never delivered.
    gbk = envelope_pb.Envelope()
    gbk.CopyFrom(ref)
    gbk.message_id = "aihua-gbk-name"
    gbk.referral.referral_id = "RF-GBK-0001"
    gbk.referral.patient.name = "@@GBK@@@"
    data = town.frame(envelope=gbk).SerializeToString()
    town.send_bytes(data.replace(b"@@GBK@@@", "张三丰".encode("gbk") + b"@@"))
    f = town.expect_body("error", where=lambda f: f.error.message_id == gbk.message_id)
    check("patient name in GBK -> Error INVALID naming the field",
          f is not None and f.error.code == pb.ERROR_INVALID and
          f.error.reason == "envelope.referral.patient.name is not valid UTF-8", str(f))
    f = lead.expect_body("delivery", timeout_s=1.0,
                         where=lambda f: f.delivery.envelope.message_id == gbk.message_id)
    check("lead: the GBK referral is not delivered", f is None, str(f))

    v2 = pb.Frame(version=2, heartbeat=pb.Heartbeat(sent_at_ms=now_ms()))
    town.send_bytes(v2.SerializeToString())
    f = town.expect_body("error")
    check("Frame.version 2 -> Error UNSUPPORTED_VERSION",
          f is not None and f.error.code == pb.ERROR_UNSUPPORTED_VERSION, str(f))

    town.send(ack=pb.Ack(message_id="x", seq=1))
    f = town.expect_body("error")
    check("a facility sending an Ack -> Error UNEXPECTED_FRAME",
          f is not None and f.error.code == pb.ERROR_UNEXPECTED_FRAME, str(f))

    town.send_bytes(b"\xff\xff\xff")
    f = town.expect_body("error")
    check("bytes that do not decode -> Error MALFORMED",
          f is not None and f.error.code == pb.ERROR_MALFORMED, str(f))

    big = envelope_pb.Envelope()
    big.CopyFrom(ref)
    big.message_id = "aihua-big"
    big.referral.clinical_summary = "x" * (MAX_MESSAGE_BYTES + 100)
    town.send(envelope=big)
    f = town.expect_body("error")
    check("frame over max_message_bytes -> Error TOO_LARGE",
          f is not None and f.error.code == pb.ERROR_TOO_LARGE, str(f))

    town.send(delivery_ack=pb.DeliveryAck(seq=999999))
    f = town.expect_body("error")
    check("DeliveryAck for a seq it does not hold -> Error UNKNOWN_DELIVERY",
          f is not None and f.error.code == pb.ERROR_UNKNOWN_DELIVERY, str(f))

    stranger = connect(TOWN2)
    stranger.send(heartbeat=pb.Heartbeat(sent_at_ms=now_ms()))
    f = stranger.expect_body("error")
    check("a frame before Hello -> Error NO_HELLO",
          f is not None and f.error.code == pb.ERROR_NO_HELLO, str(f))
    stranger.send(hello=pb.Hello(facility_id="t-unknown"))
    f = stranger.expect_body("error")
    check("Hello for a facility not in the registry -> Error UNKNOWN_SOURCE",
          f is not None and f.error.code == pb.ERROR_UNKNOWN_SOURCE, str(f))

    # ---- an offline destination: stored, then delivered on Hello ----------------------
    img = envelope_pb.Envelope(
        message_id="aihua-img-0001", source=TOWN, destination=IMAGING,
        kind=envelope_pb.KIND_IMAGING_REQUEST, priority=envelope_pb.PRIORITY_ROUTINE,
        created_at_ms=now_ms())
    img.imaging_request.accession_number = "ACC-0001"
    img.imaging_request.patient.CopyFrom(make_patient(clinical))
    img.imaging_request.modality = clinical.MODALITY_CT
    img.imaging_request.body_part = "CHEST"
    img.imaging_request.study_instance_uid = "1.2.840.113619.2.55.3.1"
    img.imaging_request.pacs_uri = "https://pacs.t-aihua.example/studies/1"
    town.send(envelope=img)
    f = town.expect_body("ack", where=lambda f: f.ack.message_id == img.message_id)
    check("offline destination: the message is stored and acknowledged",
          f is not None and f.ack.seq > 0, str(f))
    img_seq = f.ack.seq if f is not None else 0
    imaging = connect(IMAGING)
    f = imaging.hello()
    check("offline destination: its Welcome says pending 1",
          f is not None and f.WhichOneof("body") == "welcome" and f.welcome.pending == 1, str(f))
    f = imaging.expect_body("delivery")
    check("offline destination: the Delivery follows the Welcome",
          f is not None and f.delivery.seq == img_seq and f.delivery.envelope == img, str(f))
    if f is not None:
        imaging.send(delivery_ack=pb.DeliveryAck(seq=f.delivery.seq))

    # ---- takeover: a new connection for the lead gets the unacknowledged delivery ---------
    town2 = connect(TOWN2)
    town2.hello()
    ref2 = envelope_pb.Envelope(
        message_id="lishu-ref-0001", source=TOWN2, destination=LEAD,
        kind=envelope_pb.KIND_REFERRAL, priority=envelope_pb.PRIORITY_STAT,
        created_at_ms=now_ms())
    ref2.referral.referral_id = "RF-LS-0001"
    ref2.referral.patient.CopyFrom(make_patient(clinical))
    ref2.referral.service = clinical.SERVICE_SPECIALIST_CLINIC
    town2.send(envelope=ref2)
    f = town2.expect_body("ack")
    ref2_seq = f.ack.seq if f is not None else 0
    check("second township: referral acknowledged", f is not None and ref2_seq > 0, str(f))
    f = lead.expect_body("delivery")
    check("lead (connection 1): Delivery arrives; it is not acknowledged",
          f is not None and f.delivery.seq == ref2_seq, str(f))
    lead2 = connect(LEAD)
    f = lead2.hello()
    check("lead (connection 2): Hello takes over, Welcome says pending 1",
          f is not None and f.WhichOneof("body") == "welcome" and f.welcome.pending == 1, str(f))
    f = lead2.expect_body("delivery")
    check("lead (connection 2): the delivery is resent with redelivered=true, attempt=2",
          f is not None and f.delivery.seq == ref2_seq and f.delivery.redelivered and
          f.delivery.attempt == 2 and f.delivery.envelope == ref2, str(f))
    if f is not None:
        lead2.send(delivery_ack=pb.DeliveryAck(seq=f.delivery.seq))
    lead.send(heartbeat=pb.Heartbeat(sent_at_ms=now_ms()))
    f = lead.expect_body("error")
    check("lead (connection 1): after the takeover its frames get NO_HELLO",
          f is not None and f.error.code == pb.ERROR_NO_HELLO, str(f))

    # ---- several Acks and DeliveryAcks per frame (protocol 4.2, 6.2) -----------------------
    town3 = connect(TOWN2)
    f = town3.hello(max_acks_per_frame=32)
    check("a Hello with max_acks_per_frame is answered with Welcome",
          f is not None and f.WhichOneof("body") == "welcome", str(f))
    sent = []
    for i in range(5):
        e = envelope_pb.Envelope(
            message_id="lishu-img-%04d" % i, source=TOWN2, destination=IMAGING,
            kind=envelope_pb.KIND_IMAGING_REQUEST, priority=envelope_pb.PRIORITY_ROUTINE,
            created_at_ms=now_ms())
        e.imaging_request.accession_number = "ACC-LS-%04d" % i
        e.imaging_request.modality = clinical.MODALITY_DR
        town3.send(envelope=e)
        sent.append(e.message_id)
    acked, frames, well_formed = [], 0, True
    while len(acked) < 5:
        f = town3.expect_body("ack")
        if f is None:
            break
        frames += 1
        well_formed = well_formed and len(f.ack.more) < 32 and all(
            len(m.more) == 0 and m.seq > 0 for m in f.ack.more)
        acked += [f.ack.message_id] + [m.message_id for m in f.ack.more]
    check("each of five messages acknowledged once, Ack and Ack.more read (%d frames)" % frames,
          sorted(acked) == sorted(sent) and well_formed, str(acked))
    seqs = []
    for _ in range(5):
        f = imaging.expect_body("delivery")
        if f is None:
            break
        seqs.append(f.delivery.seq)
    check("imaging: the five deliveries arrive; its Welcome allows several seqs per ack",
          len(seqs) == 5 and imaging.welcome is not None and
          imaging.welcome.max_acks_per_frame >= 5, str(seqs))
    if seqs:
        imaging.send(delivery_ack=pb.DeliveryAck(seq=seqs[-1], more_seqs=seqs[:-1]))
    f = imaging.expect_body("delivery", timeout_s=1.0)
    check("imaging: one DeliveryAck with more_seqs acknowledges all five (none comes again)",
          f is None, str(f))

    # ---- operator endpoint ----------------------------------------------------------------
    opsock = ctx.socket(zmq.DEALER)
    opsock.setsockopt(zmq.LINGER, 0)
    opsock.connect(operator_ep)
    next_id = [1000]

    def op_call(timeout_s=5.0, **body):
        next_id[0] += 1
        req = op.OpRequest(version=pb.PROTOCOL_VERSION_1, request_id=next_id[0])
        for name, value in body.items():
            getattr(req, name).CopyFrom(value)
        opsock.send(req.SerializeToString())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if opsock.poll(200, zmq.POLLIN):
                rep = op.OpReply()
                rep.ParseFromString(opsock.recv())
                if rep.request_id == next_id[0]:
                    return rep
        return None

    try:
        # Acks are committed asynchronously: ask until the counts settle.
        st = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rep = op_call(status=op.StatusRequest())
            if rep is None or rep.WhichOneof("body") != "status":
                break
            st = rep.status
            if all(f.pending == 0 and f.inflight == 0 for f in st.facilities):
                break
            time.sleep(0.2)
        check("operator: status answered with the same request_id",
              st is not None and rep.version == pb.PROTOCOL_VERSION_1, str(rep))
        if st is not None:
            ids = {f.facility_id: f for f in st.facilities}
            check("operator: status lists every configured facility",
                  st.broker_id == BROKER_ID and set(ids) == {x[0] for x in FACILITIES},
                  str(sorted(ids)))
            check("operator: pending 0 and inflight 0 for every facility at the end",
                  all(f.pending == 0 and f.inflight == 0 for f in st.facilities),
                  str([(f.facility_id, f.pending, f.inflight) for f in st.facilities]))
            check("operator: roles and connected flags",
                  ids[LEAD].role == "lead" and ids[TOWN].role == "township" and
                  ids[LEAD].connected and ids[TOWN].connected and ids[IMAGING].connected)
            counters = {c.name: c.value for c in st.counters}
            check("operator: counters stored=9 duplicate=2 delivered=9",
                  counters.get("stored") == 9 and counters.get("duplicate") == 2 and
                  counters.get("delivered") == 9, str(counters))
            # Two unknown destinations: "t-nowhere" and the Chinese one.
            check("operator: per-code rejection counters",
                  counters.get("rejected.UNKNOWN_DESTINATION") == 2 and
                  counters.get("rejected.CONFLICT") == 1, str(counters))
        rep = op_call(queue_list=op.QueueListRequest())
        check("operator: queue_list of pending messages is empty",
              rep is not None and rep.WhichOneof("body") == "queue_list" and
              len(rep.queue_list.messages) == 0, str(rep))
        rep = op_call(queue_list=op.QueueListRequest(dead=True))
        check("operator: queue_list of dead letters is empty",
              rep is not None and rep.WhichOneof("body") == "queue_list" and
              len(rep.queue_list.messages) == 0, str(rep))
        rep = op_call(queue_retry=op.QueueRetryRequest(seq=ref_seq))
        check("operator: queue_retry of a delivered message -> Error INVALID",
              rep is not None and rep.WhichOneof("body") == "error" and
              rep.error.code == pb.ERROR_INVALID, str(rep))
        # A reason in GBK, not UTF-8 (a protobuf library in Python will not
        # write one: the frame's bytes are changed after packing).
        next_id[0] += 1
        req = op.OpRequest(version=pb.PROTOCOL_VERSION_1, request_id=next_id[0],
                           queue_drop=op.QueueDropRequest(seq=ref_seq, reason="GBKGBK"))
        raw = req.SerializeToString().replace(b"GBKGBK", "转诊错".encode("gbk"))
        opsock.send(raw)
        rep, deadline = None, time.monotonic() + 5
        while rep is None and time.monotonic() < deadline:
            if opsock.poll(200, zmq.POLLIN):
                r = op.OpReply()
                r.ParseFromString(opsock.recv())
                if r.request_id == next_id[0]:
                    rep = r
        check("operator: a request whose text is not UTF-8 -> Error INVALID naming the field",
              rep is not None and rep.WhichOneof("body") == "error" and
              rep.error.code == pb.ERROR_INVALID and
              "queue_drop.reason is not valid UTF-8" in rep.error.reason, str(rep))
        # An age out of range (INT64_MIN overflowed now - older_than_ms, undefined
        # behaviour) is refused naming the field; the daemon answers on.
        for age in (-(2 ** 63), -1, 2 ** 63 - 1):
            rep = op_call(open_loops=op.OpenLoopsRequest(older_than_ms=age))
            check("operator: open_loops with older_than_ms=%d -> Error INVALID naming it" % age,
                  rep is not None and rep.WhichOneof("body") == "error" and
                  rep.error.code == pb.ERROR_INVALID and
                  "open_loops.older_than_ms" in rep.error.reason, str(rep))
        rep = op_call(open_loops=op.OpenLoopsRequest(older_than_ms=3600 * 1000))
        check("operator: open_loops with older_than_ms=1h is answered after them",
              rep is not None and rep.WhichOneof("body") == "open_loops", str(rep))
        check("operator: the daemon is still running", daemon.poll() is None)
    finally:
        opsock.close(0)


if __name__ == "__main__":
    sys.exit(main())
