"""A Python client of notify-backbone, generated from proto/ with grpcio-tools, against a real server.

It subscribes with a user's token, publishes producer JSON (the fixtures of tests/fixtures/wire)
through `Publish` with a service token, checks the typed events field by field, then drops the
stream and resumes by cursor.

Environment (all required; the test fails, never skips, without them):
  NOTIFY_GRPC           host:port of the gRPC listener (plain TCP)
  NOTIFY_USER_ID        the user the user token is for (its `sub`)
  NOTIFY_USER_TOKEN     a token of that user
  NOTIFY_SERVICE_TOKEN  a token with the `service` role (may call Publish)

Run with the venv of scripts/ensure-python:
  target/python-venv/bin/python tests/clients/python/test_client.py
"""

import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import unittest
import uuid
from pathlib import Path

import grpc
import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[3]
PROTO = ROOT / "proto"
WIRE = ROOT / "tests" / "fixtures" / "wire"

# Every wait is bounded: a broken server fails the test instead of hanging it.
WAIT = 15.0
# A backstop deadline on each Subscribe call.
STREAM_DEADLINE = 120.0

ENV = ("NOTIFY_GRPC", "NOTIFY_USER_ID", "NOTIFY_USER_TOKEN", "NOTIFY_SERVICE_TOKEN")


def generate_stubs():
    """Generates the Python stubs of proto/ into a temporary directory and imports them."""
    out = tempfile.mkdtemp(prefix="notify-py-stubs-")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    if not files:
        raise RuntimeError(f"no .proto files under {PROTO}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"grpc_tools.protoc failed for {files}")
    sys.path.insert(0, out)
    from cloudphone.notify.v1 import events_pb2, service_pb2, service_pb2_grpc

    return out, events_pb2, service_pb2, service_pb2_grpc


# --- Producer JSON, edited without changing how its numbers are written ---------------------------
#
# The server keeps money as the producer wrote it (`109.40` stays `109.40`), so the fixtures must
# reach it with their number text intact: Python's float would turn `109.40` into `109.4`.


class RawNumber:
    """A JSON number kept as its source text."""

    def __init__(self, text):
        self.text = text


def load_fixture(name):
    text = (WIRE / name).read_text(encoding="utf-8")
    return json.loads(text, parse_float=RawNumber, parse_int=RawNumber)


def to_json(value):
    if isinstance(value, RawNumber):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)  # str, bool, None


def unique(prefix):
    return f"{prefix}-py-{uuid.uuid4().hex[:12]}"


# --- A subscription read on a thread, so every wait can time out ---------------------------------


class Ended:
    """The stream finished (error is the grpc.RpcError, or None for a clean end)."""

    def __init__(self, error):
        self.error = error

    def __str__(self):
        if self.error is None:
            return "the stream ended cleanly"
        return f"the stream ended with {self.error.code()}: {self.error.details()}"


class Subscription:
    def __init__(self, stub, request, token):
        metadata = [("authorization", f"Bearer {token}")] if token else []
        self.call = stub.Subscribe(request, metadata=metadata, timeout=STREAM_DEADLINE)
        self.messages = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self):
        try:
            for message in self.call:
                self.messages.put(message)
            self.messages.put(Ended(None))
        except grpc.RpcError as error:
            self.messages.put(Ended(error))

    def next(self, what):
        """The next message other than a heartbeat, within WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise queue.Empty
                item = self.messages.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError(f"no message within {WAIT:.0f}s while waiting for {what}") from None
            if isinstance(item, Ended):
                raise AssertionError(f"{item} while waiting for {what}")
            if item.WhichOneof("kind") != "heartbeat":
                return item

    def ended(self):
        """How the stream ended, within WAIT seconds."""
        try:
            item = self.messages.get(timeout=WAIT)
        except queue.Empty:
            raise AssertionError(f"the stream did not end within {WAIT:.0f}s") from None
        return item

    def cancel(self):
        self.call.cancel()
        self.thread.join(WAIT)


def timestamp(ts):
    return ts.ToJsonString() if ts.seconds or ts.nanos else ""


class PythonClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        missing = [name for name in ENV if not os.environ.get(name)]
        if missing:
            raise AssertionError(
                "missing environment: " + ", ".join(missing) + ". This test needs a running "
                "notify-backbone: NOTIFY_GRPC=host:port (plain gRPC), NOTIFY_USER_ID, "
                "NOTIFY_USER_TOKEN (a token of that user) and NOTIFY_SERVICE_TOKEN (role service)."
            )
        cls.user = os.environ["NOTIFY_USER_ID"]
        cls.user_token = os.environ["NOTIFY_USER_TOKEN"]
        cls.service_token = os.environ["NOTIFY_SERVICE_TOKEN"]
        cls.stub_dir, cls.events_pb2, cls.pb, grpc_pb = generate_stubs()
        cls.channel = grpc.insecure_channel(os.environ["NOTIFY_GRPC"])
        try:
            grpc.channel_ready_future(cls.channel).result(timeout=WAIT)
        except grpc.FutureTimeoutError:
            raise AssertionError(f"cannot connect to {os.environ['NOTIFY_GRPC']} within {WAIT:.0f}s") from None
        cls.stub = grpc_pb.NotificationServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        shutil.rmtree(cls.stub_dir, ignore_errors=True)

    # --- helpers ---

    def subscribe(self, resume_after=""):
        request = self.pb.SubscribeRequest(resume_after=resume_after)
        return Subscription(self.stub, request, self.user_token)

    def publish(self, routing_key, body):
        request = self.pb.PublishRequest(routing_key=routing_key, json=to_json(body).encode())
        metadata = [("authorization", f"Bearer {self.service_token}")]
        response = self.stub.Publish(request, metadata=metadata, timeout=WAIT)
        self.assertFalse(response.duplicate, f"{routing_key} was taken for a duplicate")
        self.assertTrue(response.id and response.cursor, f"{routing_key}: empty id or cursor")
        return response

    def next_event(self, stream, what, published):
        message = stream.next(what)
        self.assertEqual(message.WhichOneof("kind"), "event", f"{what}: got {message}")
        event = message.event
        self.assertEqual(event.id, published.id, f"{what}: id")
        self.assertEqual(event.cursor, published.cursor, f"{what}: cursor")
        self.assertEqual(event.user_id, self.user, f"{what}: user_id")
        self.assertNotEqual(timestamp(event.received_at), "", f"{what}: received_at")
        return event

    # --- the producer bodies (fixture, with this run's user and fresh ids) ---

    def payment_envelope(self):
        """Shape D: the fields are under `payload`, `eventId` at the top level."""
        body = load_fixture("billing.payment_success.envelope.json")
        body["eventId"] = unique("payment-success")
        body["payload"]["userId"] = self.user
        body["payload"]["paymentId"] = unique("p")
        body["payload"]["orderId"] = unique("o")
        return body

    def payment_flat(self):
        """Flat: the fields at the top level, no `eventId` (the server hashes the body)."""
        body = load_fixture("billing.payment_success.flat.json")
        body["userId"] = self.user
        body["paymentId"] = unique("p")
        return body

    def app_installed(self, file):
        """Shape A: `userId` and `deviceId` at the top level, no `eventId`."""
        body = load_fixture(file)
        body["userId"] = self.user
        body["installationId"] = unique("i")
        return body

    # --- the tests ---

    def test_subscribe_receive_typed_events_and_resume_by_cursor(self):
        # 1. A fresh stream (no resume) starts with CaughtUp.
        stream = self.subscribe()
        try:
            first = stream.next("the first message (CaughtUp)")
            self.assertEqual(first.WhichOneof("kind"), "caught_up", f"first message: {first}")
            self.assertNotEqual(first.caught_up.cursor, "", "CaughtUp.cursor")

            # 2. A payment in the envelope shape.
            body = self.payment_envelope()
            published = self.publish("billing.payment_success", body)
            self.assertEqual(published.id, body["eventId"], "the producer's eventId is the event id")
            event = self.next_event(stream, "billing.payment_success", published)
            self.assertEqual(event.type, "billing.payment_success")
            self.assertEqual(event.device_id, "")
            self.assertEqual(event.WhichOneof("payload"), "billing_payment_success")
            self.assertEqual(timestamp(event.occurred_at), "2025-11-20T10:24:50Z", "occurred_at = paidAt")
            self.assertEqual(event.traceparent, body["_trace"]["traceparent"])
            paid = event.billing_payment_success
            self.assertEqual(paid.amount.value, "99.9", "amount, exact decimal text")
            self.assertEqual(paid.new_balance.value, "109.40", "newBalance keeps its trailing zero")
            self.assertEqual(paid.order_id, body["payload"]["orderId"])
            self.assertEqual(paid.payment_id, body["payload"]["paymentId"])
            self.assertEqual(paid.payment_method, "alipay")
            self.assertEqual(paid.username, "alice")
            self.assertEqual(paid.email, "alice@example.com", "email from userEmail")
            self.assertEqual(timestamp(paid.paid_at), "2025-11-20T10:24:50Z")

            # 3. An app installed on a device, shape A.
            body = self.app_installed("app.installed.shape-a.json")
            published = self.publish("app.installed", body)
            event = self.next_event(stream, "app.installed", published)
            self.assertEqual(event.type, "app.installed")
            self.assertEqual(event.device_id, body["deviceId"])
            self.assertEqual(event.WhichOneof("payload"), "app_installed")
            self.assertEqual(timestamp(event.occurred_at), "2025-11-20T09:59:58Z", "occurred_at = installedAt")
            app = event.app_installed
            self.assertEqual(app.installation_id, body["installationId"])
            self.assertEqual(app.app_id, body["applicationId"], "app_id from applicationId")
            self.assertEqual(app.app_name, "WeChat")
            self.assertEqual(app.device_name, "phone-1")
            self.assertEqual(app.version, "8.0.50")
            last_cursor = event.cursor
        finally:
            stream.cancel()

        # 4. While nobody listens: two more events.
        payment = self.payment_flat()
        missed_payment = self.publish("billing.payment_success", payment)
        app = self.app_installed("app.install.completed.shape-a.json")
        missed_app = self.publish("app.install.completed", app)

        # 5. Resume after the last cursor seen: exactly those two, in order, then CaughtUp.
        stream = self.subscribe(resume_after=last_cursor)
        try:
            event = self.next_event(stream, "the replayed payment", missed_payment)
            self.assertEqual(event.type, "billing.payment_success")
            self.assertEqual(event.WhichOneof("payload"), "billing_payment_success")
            paid = event.billing_payment_success
            self.assertEqual(paid.amount.value, "99.90", "a string amount keeps its text")
            self.assertEqual(paid.new_balance.value, "1000", "1e3 in plain notation")
            self.assertEqual(paid.payment_id, payment["paymentId"])
            self.assertEqual(paid.payment_method, "wechat")
            self.assertEqual(paid.email, "carol@example.com")
            self.assertEqual(paid.order_id, "", "no orderId sent")

            event = self.next_event(stream, "the replayed app install", missed_app)
            self.assertEqual(event.type, "app.installed", "app.install.completed is an alias")
            self.assertEqual(event.device_id, app["deviceId"])
            self.assertEqual(event.WhichOneof("payload"), "app_installed")
            self.assertEqual(event.app_installed.app_id, app["appId"], "app_id from appId")
            self.assertEqual(event.app_installed.installation_id, app["installationId"])
            self.assertEqual(event.app_installed.version, "", "no version sent")

            done = stream.next("CaughtUp after the replay")
            self.assertEqual(done.WhichOneof("kind"), "caught_up", f"after the replay: {done}")
            self.assertNotEqual(done.caught_up.cursor, "", "CaughtUp.cursor")
        finally:
            stream.cancel()

    def test_a_stream_without_a_token_is_refused(self):
        stream = Subscription(self.stub, self.pb.SubscribeRequest(), token=None)
        ended = stream.ended()
        self.assertIsInstance(ended, Ended, f"got a message without a token: {ended}")
        self.assertIsNotNone(ended.error, "the stream ended cleanly without a token")
        self.assertEqual(ended.error.code(), grpc.StatusCode.UNAUTHENTICATED)

    def test_a_user_token_may_not_publish(self):
        body = to_json(self.app_installed("app.installed.shape-a.json")).encode()
        request = self.pb.PublishRequest(routing_key="app.installed", json=body)
        metadata = [("authorization", f"Bearer {self.user_token}")]
        with self.assertRaises(grpc.RpcError) as refused:
            self.stub.Publish(request, metadata=metadata, timeout=WAIT)
        self.assertEqual(refused.exception.code(), grpc.StatusCode.PERMISSION_DENIED)


if __name__ == "__main__":
    unittest.main(verbosity=2)
