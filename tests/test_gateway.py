"""The browser gateway (python -m dynexec.gateway) against a real cluster (dynexec.launch -n 3) on loopback:
its JSON API through urllib, its users' tokens, and its status page in a real headless chromium (selenium).

One cluster and one gateway serve the whole module; every process is torn down by PID and every wait bounded.
"""
import io
import json
import os
import shutil
import stat
import sys
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest

import dynexec
import dynexec.gateway
from test_cluster import Cluster, Job, pytestmark as cluster_marks, wait_for  # noqa: F401

pytestmark = cluster_marks + [
    pytest.mark.skipif(__import__("importlib").util.find_spec("aiohttp") is None,
                       reason="aiohttp is not importable (Debian: apt install python3-aiohttp)"),
]


def issue(users: Path, name: str) -> str:
    out = Job([sys.executable, "-m", "dynexec.gateway", "--users", str(users), "--add-user", name],
              users.parent / f"issue-{name}.log")
    try:
        assert out.wait_exit(30) == 0, out.output()
    finally:
        out.kill()
    return out.log.read_text().strip().splitlines()[-1]


class Gateway(Job):
    def __init__(self, tmp: Path, cluster: Cluster, users: Path, *extra, name="gateway"):
        super().__init__([sys.executable, "-m", "dynexec.gateway", "--connect", str(cluster.conn), "--users",
                          str(users), "--port", "0", *extra], tmp / f"{name}.log")
        line = wait_for(lambda: self._ready(), 30, "the gateway's ready line", interval=0.05)
        self.url = line.split(" at ", 1)[1].split("/ ", 1)[0]

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"the gateway exited with {self.proc.returncode}:\n{self.output()}")
        return next((ln for ln in self.output().splitlines() if ln.startswith("dynexec gateway at ")), None)

    def call(self, method, path, token=None, body=None, raw=None):
        """(HTTP status, decoded JSON or bytes, headers)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(path if path.startswith("http") else self.url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, content, headers = r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            status, content, headers = e.code, e.read(), e.headers
        if "json" in headers.get("Content-Type", ""):
            content = json.loads(content)
        return status, content, headers

    def result(self, url, token, timeout=60):
        """Polls a result URL until the job is done; returns its JSON."""
        def done():
            status, body, _ = self.call("GET", url, token)
            assert status in (200, 202), (status, body)
            return body if status == 200 else None
        return wait_for(done, timeout, f"the result at {url}", interval=0.1)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    cluster = Cluster(tmp, 3, [], "cluster", launch=True)
    procs = [cluster]
    try:
        cluster.wait_ready()
        users = tmp / "users.json"
        tokens = {name: issue(users, name) for name in ("alice", "bob")}
        gw = Gateway(tmp, cluster, users, "--allow-commands")
        procs.append(gw)
        yield type("Site", (), {"cluster": cluster, "gw": gw, "users": users, "tmp": tmp, "procs": procs, **tokens})
    finally:
        for p in reversed(procs):
            p.kill()


def submit(site, token, body):
    status, reply, _ = site.gw.call("POST", "/api/jobs", token, body)
    assert status == 201, reply
    return reply


# -- tokens -------------------------------------------------------------------------------------------
def test_users_file_is_owner_only_and_holds_no_token(site):
    assert stat.S_IMODE(site.users.stat().st_mode) == 0o600
    text = site.users.read_text()
    assert site.alice not in text and site.bob not in text and site.alice != site.bob
    assert {t["user"] for t in json.loads(text)["tokens"]} == {"alice", "bob"}


def test_requests_without_a_valid_token_are_401_and_tokens_are_never_logged(site):
    gw = site.gw
    for method, path in [("GET", "/api/servers"), ("GET", "/api/jobs"), ("POST", "/api/jobs"),
                         ("GET", "/api/jobs/01M8C6FA99ZKCZ07-0000000001/result"), ("GET", "/api/whoami")]:
        for token in (None, "", "wrong", site.alice[:-1], site.alice + "x"):
            status, body, headers = gw.call(method, path, token, {"service": "noop", "params": {"x": 1}})
            assert status == 401, (method, path, token, body)
            assert headers["WWW-Authenticate"].startswith("Bearer")
    req = urllib.request.Request(gw.url + "/api/whoami", headers={"Authorization": f"Basic {site.alice}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401
    assert gw.call("GET", "/api/whoami", site.alice)[1] == {"user": "alice"}
    # The page itself needs no token (it asks for one); what it shows comes from the API.
    status, page, headers = gw.call("GET", "/")
    assert status == 200 and b"<title>dynexec gateway</title>" in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    log = gw.output() + site.cluster.output()
    assert site.alice not in log and site.bob not in log


# -- jobs ---------------------------------------------------------------------------------------------
def test_a_service_gets_a_job_id_and_a_result_url_that_gives_its_result(site):
    gw = site.gw
    reply = submit(site, site.alice, {"service": "pi.monte_carlo", "params": {"samples": 200000, "seed": 3}})
    job_id = reply["job_id"]
    assert reply["url"] == f"{gw.url}/jobs/{job_id}/result"
    assert dynexec.gateway.result_url(job_id, base=gw.url) == reply["url"]
    assert dynexec.gateway.result_url(job_id, connect=site.cluster.conn) == reply["url"]  # recorded by the gateway
    result = gw.result(reply["url"], site.alice)
    assert result["status"] == "ok" and abs(result["value"] - 3.14159) < 0.05
    status, job, _ = gw.call("GET", f"/api/jobs/{job_id}", site.alice)
    assert status == 200 and job["status"] == "ok" and job["owner"] == "alice" and job["service"] == "pi.monte_carlo"
    status, listing, _ = gw.call("GET", "/api/jobs", site.alice)
    assert job_id in [j["job_id"] for j in listing["jobs"]]
    assert [j["job_id"] for j in gw.call("GET", "/api/jobs?status=ok", site.alice)[1]["jobs"]].count(job_id) == 1
    assert gw.call("GET", f"/api/jobs/{job_id}/result", site.alice)[1] == result
    status, page, headers = gw.call("GET", reply["url"])  # in a browser (no token sent): the page, on that job
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert gw.call("GET", reply["url"], "wrong")[0] == 401
    assert gw.call("GET", reply["url"], site.bob)[0] == 404
    archived = dynexec.find(job_id, site.cluster.archive)  # the user is the job's owner in the archive
    assert archived.owner == "alice" and archived.value == result["value"]


def test_a_nested_list_is_an_array_parameter(site):
    reply = submit(site, site.bob, {"service": "array.sum", "params": {"a": [[1.5, 2.0], [3.0, 4.0]]}})
    assert site.gw.result(reply["url"], site.bob)["value"] == 10.5


def test_an_array_result_is_json_and_downloads_as_npy_and_hdf5(site):
    gw = site.gw
    reply = submit(site, site.alice, {"service": "array.scale", "params": {"a": [1.0, 2.5, -4.0], "factor": 2.0}})
    result = gw.result(reply["url"], site.alice)
    assert result["kind"] == "array" and result["shape"] == [3] and result["value"] == [2.0, 5.0, -8.0]
    status, npy, headers = gw.call("GET", result["download"]["npy"], site.alice)
    assert status == 200 and f'{reply["job_id"]}.npy' in headers["Content-Disposition"]
    assert np.load(io.BytesIO(npy), allow_pickle=False).tolist() == [2.0, 5.0, -8.0]
    status, h5, _ = gw.call("GET", result["download"]["h5"], site.alice)
    with h5py.File(io.BytesIO(h5), "r") as f:
        assert f["value"][()].tolist() == [2.0, 5.0, -8.0] and f["value"].attrs["job_id"] == reply["job_id"]
    status, body, _ = gw.call("GET", reply["url"] + "?format=npy", site.bob)
    assert status == 404  # not even another user's download


def test_a_user_sees_and_cancels_only_their_own_jobs(site):
    gw = site.gw
    reply = submit(site, site.alice, {"service": "spin.cpu", "params": {"seconds": 30.0}})
    job_id = reply["job_id"]
    for method, path in [("GET", f"/api/jobs/{job_id}"), ("GET", f"/api/jobs/{job_id}/result"),
                         ("POST", f"/api/jobs/{job_id}/cancel"), ("DELETE", f"/api/jobs/{job_id}")]:
        status, body, _ = gw.call(method, path, site.bob)
        assert status == 404 and job_id in body["error"], (method, path, body)
    assert job_id not in [j["job_id"] for j in gw.call("GET", "/api/jobs", site.bob)[1]["jobs"]]
    assert gw.call("GET", f"/api/jobs/{job_id}", site.alice)[1]["status"] in ("queued", "running")
    status, body, _ = gw.call("POST", f"/api/jobs/{job_id}/cancel", site.alice)
    assert status == 200 and body["stopped"] is True
    done = gw.result(reply["url"], site.alice, timeout=20)  # well before its 30 s
    assert done["status"] in ("killed", "cancelled")
    assert gw.call("POST", f"/api/jobs/{job_id}/cancel", site.alice)[0] == 409  # finished: nothing to stop


def test_list_servers_with_their_leases_and_load(site):
    status, body, _ = site.gw.call("GET", "/api/servers", site.bob)
    assert status == 200 and len(body["servers"]) == 2  # launch -n 3: a head and two compute servers
    for s in body["servers"]:
        assert s["lease_left"] <= 2.0 and "pi.monte_carlo" in s["services"]  # the cluster's --lease-seconds
        assert {"jobs_done", "busy_time", "in_flight"} <= set(s["statistics"])
    status, catalog, _ = site.gw.call("GET", "/api/services", site.bob)
    assert [p["name"] for p in catalog["pi.monte_carlo"]["params"]] == ["samples", "seed"]
    assert "python" not in catalog and "command" not in catalog


@pytest.mark.parametrize("body, field", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    ({"service": "no.such.service"}, "unknown service 'no.such.service'"),
    ({"service": "pi.monte_carlo", "params": {"samples": "many"}}, "'samples'"),
    ({"service": "pi.monte_carlo", "params": {"sample": 5}}, "'sample'"),
    ({"service": "pi.monte_carlo", "params": {"samples": {"a": 1}}}, "params.samples"),
    ({"service": "array.sum", "params": {"a": [[1, 2], [3]]}}, "params.a"),
    ({"service": "pi.monte_carlo", "params": [1]}, "params must be"),
    ({"service": 7}, "service must be"),
    ({"service": "python", "params": {"payload": "x"}}, "Python callables"),
    ({"service": "command", "params": {"argv": ["true"]}}, '{"command": [argv...]}'),
    ({"service": "noop", "params": {"x": 1}, "priority": 1}, "'priority'"),
    ({"params": {}}, "either 'service'"),
    ({"service": "noop", "time_limit": -1}, "time_limit"),
    ({"service": "noop", "retries": "2"}, "retries"),
    ({"command": "echo hi"}, "command must be"),
    ({"command": ["echo"], "env": {"A": 1}}, "env must be"),
])
def test_bad_input_is_400_naming_what_is_wrong(site, body, field):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, reply, _ = site.gw.call("POST", "/api/jobs", site.alice, raw=raw)
    assert status == 400 and field in reply["error"], reply


def test_bad_job_ids_and_queries_are_400_and_unknown_jobs_404(site):
    gw = site.gw
    status, reply, _ = gw.call("GET", "/api/jobs/not-a-job/result", site.alice)
    assert status == 400 and "not a dynexec job ID" in reply["error"]
    assert gw.call("GET", "/api/jobs/..%2F..%2Fetc%2Fpasswd", site.alice)[0] in (400, 404)
    assert gw.call("GET", f"/api/jobs/{site.cluster.info['session']}-0000999999", site.alice)[0] == 404
    assert gw.call("GET", "/api/jobs?limit=lots", site.alice)[0] == 400
    reply = submit(site, site.alice, {"service": "noop", "params": {"x": 1.5}})
    status, body, _ = gw.call("GET", reply["url"] + "?format=csv", site.alice)
    assert status == 400 and "format" in body["error"]
    gw.result(reply["url"], site.alice)
    status, body, _ = gw.call("GET", reply["url"] + "?format=npy", site.alice)
    assert status == 400 and "not an array" in body["error"]


def test_jobs_older_than_the_gateway_come_from_the_archive(site):
    reply = submit(site, site.alice, {"service": "noop", "params": {"x": 7.25}})
    site.gw.result(reply["url"], site.alice)
    later = Gateway(site.tmp, site.cluster, site.users, name="later")  # a new gateway: no futures of the old one
    site.procs.append(later)
    path = f"/api/jobs/{reply['job_id']}/result"
    status, body, _ = later.call("GET", path, site.alice)
    assert status == 200 and body["value"] == 7.25 and body["location"].endswith("]")
    assert later.call("GET", f"/api/jobs/{reply['job_id']}", site.alice)[1]["owner"] == "alice"
    assert later.call("GET", path, site.bob)[0] == 404
    # Without --allow-commands a command is refused, whatever this dynexec offers.
    status, body, _ = later.call("POST", "/api/jobs", site.alice, {"command": ["true"]})
    assert status == 403 and "--allow-commands" in body["error"]
    later.kill()


@pytest.mark.skipif(not hasattr(dynexec.Executor, "submit_command"), reason="this dynexec has no command jobs "
                    "(Executor.submit_command)")
def test_a_command_runs_and_its_output_is_its_result(site):
    reply = submit(site, site.alice, {"command": [sys.executable, "-c", "print(6 * 7)"]})
    result = site.gw.result(reply["url"], site.alice)
    assert result["status"] == "ok" and "42" in json.dumps(result), result


@pytest.mark.skipif(hasattr(dynexec.Executor, "submit_command"), reason="this dynexec has command jobs")
def test_a_command_without_command_jobs_is_501(site):
    status, body, _ = site.gw.call("POST", "/api/jobs", site.alice, {"command": ["true"]})
    assert status == 501 and "submit_command" in body["error"]


def test_the_cluster_starts_a_gateway_with_gateway_port(tmp_path):
    users = tmp_path / "c.users.json"
    token = issue(users, "carol")
    c = Cluster(tmp_path, 0, ["--gateway", "0"], "c")  # a head alone, no mpirun: the gateway comes with it
    try:
        c.wait_ready()
        record = c.conn.with_name("c.gateway.json")
        url = wait_for(lambda: record.exists() and json.loads(record.read_text())["url"], 30, "the gateway's URL")
        req = urllib.request.Request(url + "/api/servers", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["servers"] == []
        gateway_pid = json.loads(record.read_text())["pid"]
        c.proc.terminate()  # Ctrl-C/SIGTERM on the cluster stops its gateway too
        assert c.wait_exit(30) == 0, c.output()
        wait_for(lambda: not os.path.exists(f"/proc/{gateway_pid}") or
                 Path(f"/proc/{gateway_pid}/stat").read_text().split()[2] == "Z", 10, "the gateway to stop")
    finally:
        c.kill()


# -- the page, in a real browser ------------------------------------------------------------------------
def _browser(tmp: Path):
    """Debian's chromium through chromium-driver, headless, a profile of its own; skips only if it cannot start."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not importable (Debian: apt install python3-selenium)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium or chromedriver is not installed (Debian: apt install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--window-size=1280,820", f"--user-data-dir={tmp / 'chromium-profile'}"):
        options.add_argument(arg)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # chromium's sandbox refuses to run as root
    try:
        return webdriver.Chrome(service=Service(driver, log_path=str(tmp / "chromedriver.log")), options=options)
    except WebDriverException as e:
        pytest.skip(f"headless chromium cannot start here: {e.msg}")


def test_the_status_page_in_a_headless_browser(site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser(tmp_path)
    try:
        wait = WebDriverWait(browser, 30, poll_frequency=0.1)
        browser.get(f"{site.gw.url}/#token={site.alice}")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#servers tbody tr")) == 2)  # the live servers
        assert "token" not in browser.current_url  # taken from the address bar into the tab's sessionStorage
        assert browser.execute_script("return sessionStorage.getItem('dynexec-token')") == site.alice
        assert "signed in as alice" in browser.find_element(By.ID, "who").text
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#service option[value='pi.monte_carlo']"))
        Select(browser.find_element(By.ID, "service")).select_by_value("pi.monte_carlo")
        samples = browser.find_element(By.ID, "param-samples")
        samples.clear()
        samples.send_keys("300000")
        browser.find_element(By.ID, "submit").click()
        job_id = wait.until(lambda b: [e.text for e in b.find_elements(By.ID, "submitted-id") if e.text])[0]
        cell = f'#jobs tr[data-job="{job_id}"] td.result'
        value = wait.until(lambda b: [e.text for e in b.find_elements(By.CSS_SELECTOR, cell) if e.text])[0]
        assert abs(float(value) - 3.14159) < 0.05
        assert browser.find_element(By.CSS_SELECTOR, f'#jobs tr[data-job="{job_id}"] td.status').text == "ok"
        assert dynexec.find(job_id, site.cluster.archive).owner == "alice"  # submitted from the form, as alice
        shot = tmp_path / "gateway.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("DYNEXEC_GATEWAY_SCREENSHOT"):  # how docs/gateway.png is made
            shutil.copy(shot, os.environ["DYNEXEC_GATEWAY_SCREENSHOT"])
        browser.get(dynexec.gateway.page_url(job_id, base=site.gw.url))  # the link a notification gives
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, f'#jobs tr.highlight[data-job="{job_id}"]'))
        browser.get(f"{site.gw.url}/")  # a wrong token is dropped and asked for again
        browser.execute_script("sessionStorage.setItem('dynexec-token', 'wrong'); location.reload()")
        wait.until(lambda b: b.find_element(By.ID, "token-form").is_displayed())
        assert "refused" in browser.find_element(By.ID, "token-error").text
    finally:
        browser.quit()


def test_binding_beyond_loopback_must_be_asked_for(tmp_path):
    proc = __import__("subprocess").run(
        [sys.executable, "-m", "dynexec.gateway", "--connect", str(tmp_path / "c.json"), "--users",
         str(tmp_path / "u.json"), "--host", "0.0.0.0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--public" in proc.stderr


def test_a_missing_connection_file_is_said_at_start(tmp_path):
    proc = __import__("subprocess").run(
        [sys.executable, "-m", "dynexec.gateway", "--connect", str(tmp_path / "c.json"), "--users",
         str(tmp_path / "u.json"), "--port", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "c.json" in proc.stderr and "dynexec gateway at" not in proc.stdout


def test_a_gateway_reconnects_to_a_cluster_restarted_with_the_same_file(tmp_path):
    users = tmp_path / "u.json"
    token = issue(users, "dora")
    first = Cluster(tmp_path, 0, [], "c").wait_ready()  # heads alone, no mpirun: cheap
    procs = [first]
    try:
        gw = Gateway(tmp_path, first, users)
        procs.append(gw)
        assert gw.call("GET", "/api/servers", token)[0] == 200
        first.proc.terminate()
        assert first.wait_exit(30) == 0
        status, body, _ = gw.call("GET", "/api/servers", token)
        assert status == 503 and "stopped" in body["error"]
        procs.append(Cluster(tmp_path, 0, [], "c").wait_ready())
        assert wait_for(lambda: gw.call("GET", "/api/servers", token)[0] == 200, 30, "the gateway to reconnect",
                        interval=0.2)
    finally:
        for p in reversed(procs):
            p.kill()
