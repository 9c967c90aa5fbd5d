"""Notifications (dynexec.notify): e-mail through a real SMTP server on loopback (aiosmtpd, Debian's
python3-aiosmtpd) and webhook POSTs to a real HTTP server on loopback, for Executor(notify=) and
options(notify=); failing receivers are retried a bounded number of times and logged, and never fail or
delay a job or hang shutdown."""
import email
import email.policy
import json
import logging
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import dynexec
from dynexec import NotifyConfig
from dynexec.notify import result_url

aiosmtpd = pytest.importorskip("aiosmtpd", reason="needs aiosmtpd (Debian: apt install python3-aiosmtpd)")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Mailbox:
    def __init__(self):
        self.envelopes = []
        self.logins = []

    async def handle_DATA(self, server, session, envelope):
        envelope.tls = session.ssl is not None
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=(auth_data.login, auth_data.password) == (b"alice", b"s3cret-pw"), handled=False)

    def messages(self):
        return [email.message_from_bytes(e.content, policy=email.policy.default) for e in self.envelopes]


def _smtp_server(**smtp_kwargs):
    box = _Mailbox()
    if smtp_kwargs.pop("login", False):
        smtp_kwargs.update(auth_required=True, authenticator=box.authenticate)
    controller = Controller(box, hostname="127.0.0.1", port=_free_port(), **smtp_kwargs)
    controller.start()
    box.port = controller.port
    return box, controller


@pytest.fixture
def smtp():
    box, controller = _smtp_server()
    yield box
    controller.stop()


class _Webhook:
    """Records each POST; answers `status`; holds a request while `gate` is not set (10 s at most)."""

    def __init__(self):
        self.posts = []
        self.gets = []
        self.status = 200
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((self.path, dict(self.headers), json.loads(body)))
                hook.entered.set()
                hook.gate.wait(10)
                self.send_response(hook.status.pop(0) if isinstance(hook.status, list) else hook.status)
                self.send_header("Location", hook.url)  # where a redirect would lead: back here
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):  # where a followed redirect would come
                hook.gets.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hook = _Webhook()
    yield hook
    hook.close()


def _config(smtp=None, **kw):
    return NotifyConfig(**{"smtp_host": "127.0.0.1", "smtp_port": smtp.port if smtp else _free_port(),
                           "smtp_from": "dynexec@test.invalid", "retry_delay": 0.01, **kw})


def boom(x):
    raise ValueError(f"bad input {x}")


def _body(msg) -> str:
    return msg.get_body(("plain",)).get_content().replace("\r\n", "\n")


def test_mail_for_an_ok_and_a_failed_job(smtp, tmp_path):
    archive = tmp_path / "archive"
    with dynexec.Executor(1, processes=False, archive=archive, notify="mailto:user@example.org",
                          notify_config=_config(smtp)) as ex:
        ok, failed = ex.submit(pow, 2, 10), ex.submit(boom, 7)
        assert ok.result(timeout=30) == 1024
        assert isinstance(failed.exception(timeout=30), ValueError)
    # shutdown() gave pending notifications their time: both are in
    assert sorted(e.rcpt_tos[0] for e in smtp.envelopes) == ["user@example.org"] * 2
    assert {e.mail_from for e in smtp.envelopes} == {"dynexec@test.invalid"}
    by_job = {m["Subject"].split()[2].rstrip(":"): m for m in smtp.messages()}
    assert set(by_job) == {ok.job_id, failed.job_id}
    for future, status in ((ok, "ok"), (failed, "error")):
        msg = by_job[future.job_id]
        assert msg["Subject"] == f"dynexec job {future.job_id}: {status}"
        body = _body(msg)
        assert f"Job:       {future.job_id}\n" in body and f"Status:    {status}\n" in body
        url = next(line.split()[1] for line in body.splitlines() if line.startswith("Result:"))
        assert url == result_url(future.job_id, archive)
        parts = urllib.parse.urlsplit(url)  # the URL leads to the result: its file, and the job in it
        assert parts.scheme == "file" and parts.fragment == future.job_id
        assert dynexec.find(parts.fragment, Path(urllib.parse.unquote(parts.path)).parent).status == status
    assert "Error:     ValueError: bad input 7" in _body(by_job[failed.job_id])
    assert "Error:" not in _body(by_job[ok.job_id])
    assert f"In Python: dynexec.find({ok.job_id!r}, {str(archive)!r})" in _body(by_job[ok.job_id])


def test_per_job_notify_mail_and_webhook_with_the_gateway_url(smtp, webhook, tmp_path):
    gateway = "http://127.0.0.1:9/gw/"
    with dynexec.Executor(1, processes=False, archive=tmp_path / "a",
                          notify_config=_config(smtp, gateway_url=gateway)) as ex:
        told = ex.options(notify=["mailto:a@example.org,b@example.org", webhook.url]).submit(pow, 3, 3)
        silent = ex.submit(pow, 2, 2)  # the executor has no notify: nobody is told
        mapped = list(ex.options(notify=webhook.url, retries=1).map(pow, [2, 5], [3, 2]))
        assert told.result(timeout=30) == 27 and silent.result(timeout=30) == 4 and mapped == [8, 25]
    assert len(smtp.envelopes) == 1 and smtp.envelopes[0].rcpt_tos == ["a@example.org", "b@example.org"]
    want_url = f"http://127.0.0.1:9/gw/jobs/{told.job_id}/result"
    assert f"Result:    {want_url}\n" in _body(smtp.messages()[0])
    posts = {p[2]["job_id"]: p for p in webhook.posts}
    assert len(webhook.posts) == 3 and told.job_id in posts and silent.job_id not in posts
    path, headers, ev = posts[told.job_id]
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert ev["status"] == "ok" and ev["url"] == want_url and ev["service"] == "python"
    assert 0 < ev["submit_time"] <= ev["start_time"] <= ev["end_time"]
    assert "error_type" not in ev


def test_executor_wide_webhook_with_a_failure_and_per_job_off(webhook, tmp_path):
    url = webhook.url.replace("http://", "http://hook-user:hook-pw@") + "?token=abc"
    with dynexec.Executor(1, processes=False, archive=tmp_path / "a", notify=url,
                          notify_config=_config()) as ex:
        failed = ex.submit(boom, 1)
        off = ex.options(notify=[]).submit(pow, 2, 2)
        failed.exception(timeout=30), off.result(timeout=30)
    assert [p[2]["job_id"] for p in webhook.posts] == [failed.job_id]
    path, headers, ev = webhook.posts[0]
    assert path == "/hook?token=abc"
    assert headers["Authorization"] == "Basic aG9vay11c2VyOmhvb2stcHc="  # hook-user:hook-pw
    assert ev["status"] == "error" and ev["error_type"] == "ValueError" and ev["error_message"] == "bad input 1"
    assert ev["url"] == result_url(failed.job_id, tmp_path / "a")


def test_what_this_process_saw_when_the_archive_is_not_read(webhook, tmp_path):
    # archive=False: no URL; a big value (over 16 MiB) is not read back for its times
    for archive, value, url in ((False, 5, None), (tmp_path / "a", b"x" * (17 << 20), "file://")):
        webhook.posts.clear()
        with dynexec.Executor(1, processes=False, archive=archive, notify=webhook.url,
                              notify_config=_config()) as ex:
            before = time.time()
            f = ex.submit(bytes.__mul__, value, 1) if isinstance(value, bytes) else ex.submit(pow, value, 2)
            f.result(timeout=30)
        [(_, _, ev)] = webhook.posts
        assert ev["job_id"] == f.job_id and ev["status"] == "ok" and ev["start_time"] is None
        assert before <= ev["submit_time"] <= ev["end_time"] <= time.time()
        assert (ev["url"] or "").startswith(url) if url else ev["url"] is None
        assert "service" not in ev


@pytest.fixture
def certificate(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return key, cert


def test_starttls_and_login_and_the_password_never_shown(certificate, tmp_path, caplog):
    key, cert = certificate
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    box, controller = _smtp_server(tls_context=tls, require_starttls=True, login=True)
    caplog.set_level(logging.DEBUG, logger="dynexec.notify")
    try:
        good = NotifyConfig(smtp_host="127.0.0.1", smtp_port=box.port, smtp_starttls=True, smtp_cafile=str(cert),
                            smtp_user="alice", smtp_password="s3cret-pw", retry_delay=0.01)
        bad = NotifyConfig(**{**good.__dict__, "smtp_password": "wr0ng-pw"})
        assert "s3cret-pw" not in repr(good) and "smtp_password='***'" not in repr(NotifyConfig())
        for config in (good, bad):
            with dynexec.Executor(1, processes=False, archive=tmp_path / "a", notify="mailto:bob@example.org",
                                  notify_config=config) as ex:
                assert ex.submit(pow, 2, 3).result(timeout=30) == 8
    finally:
        controller.stop()
    [mail] = box.envelopes  # the good login's; the bad one is refused, which trying again cannot mend
    assert mail.tls and mail.rcpt_tos == ["bob@example.org"]
    assert box.logins[0] == ("alice", "s3cret-pw") and set(box.logins[1:]) == {("alice", "wr0ng-pw")}
    [failure] = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert "try 1 of 3, a permanent failure: giving up" in failure and "SMTPAuthenticationError" in failure
    assert "s3cret-pw" not in caplog.text and "wr0ng-pw" not in caplog.text


def test_failing_receivers_are_retried_a_bounded_number_of_times_and_logged(webhook, tmp_path, caplog):
    webhook.status = 500
    refused = f"http://127.0.0.1:{_free_port()}/nobody"
    caplog.set_level(logging.WARNING, logger="dynexec.notify")
    with dynexec.Executor(1, processes=False, archive=tmp_path / "a", notify=[webhook.url, refused],
                          notify_config=_config(attempts=3)) as ex:
        f = ex.submit(pow, 2, 5)
        assert f.result(timeout=30) == 32  # the job is not affected
    assert len(webhook.posts) == 3 and {p[2]["job_id"] for p in webhook.posts} == {f.job_id}
    for target, why in ((webhook.url, "HTTP Error 500"), (refused, "Connection refused")):
        logged = [r for r in caplog.records if target in r.getMessage()]
        assert [r.levelno for r in logged] == [logging.WARNING] * 3
        assert all(f.job_id in r.getMessage() and why in r.getMessage() for r in logged)
        assert "try 3 of 3, giving up" in logged[-1].getMessage()


@pytest.mark.parametrize("statuses, posts", [([503, 200], 2), ([404], 1), ([302], 1)],
                         ids=["transient", "permanent", "redirect not followed"])
def test_a_transient_failure_is_tried_again_a_permanent_one_is_not(webhook, tmp_path, caplog, statuses, posts):
    webhook.status = list(statuses)
    with dynexec.Executor(1, processes=False, archive=tmp_path / "a", notify=webhook.url,
                          notify_config=_config()) as ex:
        f = ex.submit(pow, 2, 5)
        f.result(timeout=30)
    assert len(webhook.posts) == posts and not webhook.status and not webhook.gets
    [failure] = [r.getMessage() for r in caplog.records if r.name == "dynexec.notify"]
    assert f"HTTP Error {statuses[0]}" in failure and ("giving up" in failure) == (posts == 1)


def test_a_stuck_receiver_neither_delays_jobs_nor_hangs_shutdown(webhook, tmp_path, caplog):
    webhook.gate.clear()  # the receiver holds every request
    caplog.set_level(logging.WARNING, logger="dynexec.notify")
    ex = dynexec.Executor(1, processes=False, archive=tmp_path / "a", notify=webhook.url,
                          notify_config=_config(timeout=8, shutdown_grace=0.2))
    try:
        first = ex.submit(pow, 2, 1)
        assert first.result(timeout=30) == 2
        assert webhook.entered.wait(10)  # its notification is stuck in the receiver ...
        later = [ex.submit(pow, 2, i) for i in range(2, 6)]
        assert [f.result(timeout=30) for f in later] == [4, 8, 16, 32]  # ... and jobs go on
        assert not webhook.gate.is_set() and len(webhook.posts) == 1
    finally:
        ex.shutdown()  # returns after the grace, not after the receiver's 8 s timeout
    assert not webhook.gate.is_set()
    assert "5 notification(s) still being sent at shutdown" in caplog.text


def test_retries_still_to_come_at_shutdown_are_dropped_and_logged(webhook, tmp_path, caplog):
    webhook.status = 503
    with dynexec.Executor(1, processes=False, archive=tmp_path / "a", notify=webhook.url,
                          notify_config=_config(retry_delay=60, shutdown_grace=0.2)) as ex:
        f = ex.submit(pow, 2, 5)
        f.result(timeout=30)
    # leaving the block did not wait the minute for the second try
    assert len(webhook.posts) == 1
    assert f"job {f.job_id}: notification to {webhook.url} dropped at shutdown" in caplog.text


_INVALID = ["ftp://host/x", "mailto:", "mailto:not-an-address", "mailto:a@example.org?subject=hi",
            "mailto:a@example.org\nBcc: c@example.org", "mailto:a@example.org%0ABcc:c@example.org", "http://",
            "https://u:hunter2@host:99999/?token=s3cret",
            "gopher://u:hunter2@host/?token=s3cret", 5, ["mailto:a@example.org", None], {"to": "x"}]


@pytest.mark.parametrize("value", _INVALID, ids=[repr(v)[:30] for v in _INVALID])
def test_invalid_notify_values_fail_at_once_naming_the_value_but_no_secret(value, tmp_path):
    with pytest.raises(dynexec.InvalidJobError, match="^notify: ") as e:
        dynexec.Executor(1, processes=False, archive=tmp_path / "a", notify=value)  # before anything starts
    assert "hunter2" not in str(e.value) and "s3cret" not in str(e.value)
    if isinstance(value, str) and value.startswith(("ftp", "mailto:not")):
        assert repr(value) in str(e.value)


def test_invalid_per_job_notify_fails_at_submit(tmp_path):
    with dynexec.Executor(1, processes=False, archive=tmp_path / "a") as ex:
        with pytest.raises(dynexec.InvalidJobError, match="'mailto:nobody'"):
            ex.options(notify="mailto:nobody").submit(pow, 2, 2)
        assert ex.options(notify="mailto:x@example.org", time_limit=5)._notify == ("mailto:x@example.org",)


def test_notify_from_a_cluster_client(webhook, tmp_path):
    conn, archive = tmp_path / "cluster.json", tmp_path / "archive"
    head = subprocess.Popen([sys.executable, "-m", "dynexec.cluster", "--archive", str(archive),
                             "--connection-file", str(conn)], stdout=subprocess.DEVNULL)
    server = None
    try:
        deadline = time.monotonic() + 30
        while not conn.exists() and time.monotonic() < deadline and head.poll() is None:
            time.sleep(0.05)
        assert conn.exists(), "the head did not start"
        server = subprocess.Popen([sys.executable, "-m", "dynexec.server", "--join",
                                   str(conn.with_suffix(".server.json"))], stdout=subprocess.DEVNULL)
        with dynexec.Executor(connect=conn, notify=webhook.url, notify_config=_config()) as ex:
            f = ex.submit(pow, 3, 4)
            assert f.result(timeout=30) == 81
            ex.shutdown_cluster()
        [(_, _, ev)] = webhook.posts  # this client process sent it
        assert ev["job_id"] == f.job_id and ev["status"] == "ok" and ev["url"] == result_url(f.job_id, archive)
        assert ev["end_time"] > 0  # read from the cluster's archive
    finally:
        for proc in (server, head):
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()


def test_result_url():
    assert result_url("S-0000000001", gateway_url="https://gw.example.org/") == \
        "https://gw.example.org/jobs/S-0000000001/result"
    assert result_url("S-0000000001", "/data/my archive") == "file:///data/my%20archive/S.h5#S-0000000001"
    assert result_url("S-0000000001") is None
    assert result_url("S-0000000001", "/a", location="/b/S.h5:/results[0]") == "file:///b/S.h5#S-0000000001"


def test_configuration_from_the_environment(monkeypatch, smtp, tmp_path):
    env = {"DYNEXEC_SMTP_HOST": "127.0.0.1", "DYNEXEC_SMTP_PORT": str(smtp.port),
           "DYNEXEC_SMTP_FROM": "me@test.invalid", "DYNEXEC_SMTP_USER": "alice", "DYNEXEC_SMTP_PASSWORD": "pw-from-env",
           "DYNEXEC_SMTP_STARTTLS": "yes",
           "DYNEXEC_SMTP_CAFILE": "/x/ca.pem", "DYNEXEC_GATEWAY_URL": "http://127.0.0.1:8080"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = NotifyConfig.from_env(timeout=3.0)
    assert (config.smtp_host, config.smtp_port, config.smtp_from, config.smtp_user, config.smtp_password,
            config.smtp_starttls, config.smtp_cafile, config.gateway_url, config.timeout) == \
        ("127.0.0.1", smtp.port, "me@test.invalid", "alice", "pw-from-env", True, "/x/ca.pem",
         "http://127.0.0.1:8080", 3.0)
    assert "pw-from-env" not in repr(config)
    for k in ("DYNEXEC_SMTP_USER", "DYNEXEC_SMTP_STARTTLS", "DYNEXEC_GATEWAY_URL"):
        monkeypatch.delenv(k)
    with dynexec.Executor(1, processes=False, archive=tmp_path / "a") as ex:  # read when a job first asks
        f = ex.options(notify="mailto:bob@example.org").submit(pow, 2, 2)
        f.result(timeout=30)
    assert [e.mail_from for e in smtp.envelopes] == ["me@test.invalid"]
    monkeypatch.setenv("DYNEXEC_SMTP_PORT", "twenty-five")
    with dynexec.Executor(1, processes=False, archive=tmp_path / "b") as ex:
        with pytest.raises(ValueError, match=r"\$DYNEXEC_SMTP_PORT must be a port number, got 'twenty-five'"):
            ex.options(notify="mailto:bob@example.org").submit(pow, 2, 2)
        assert ex.stats()["submitted"] == 0  # nothing was sent: no job without its future
    with pytest.raises(ValueError, match=r"\$DYNEXEC_SMTP_PORT"):  # before any server starts
        dynexec.Executor(1, archive=tmp_path / "c", notify="mailto:bob@example.org")


def test_notifications_go_out_at_interpreter_exit(webhook, tmp_path, run_python):
    # shutdown(wait=False) does not wait for them; the exit hook does, after the jobs' own exit hook: here
    # for the second try, 0.3 s after the first failed
    webhook.status = [503, 200]
    run_python(f"""
        import dynexec
        ex = dynexec.Executor(1, archive={str(tmp_path / "a")!r}, notify={webhook.url!r},
                              notify_config=dynexec.NotifyConfig(retry_delay=0.3))
        f = ex.submit(pow, 2, 7)
        ex.shutdown(wait=False)
    """)
    assert [p[2]["status"] for p in webhook.posts] == ["ok", "ok"] and not webhook.status
