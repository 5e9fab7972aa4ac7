"""The web console in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) signs in, sees a held operation appear without a reload, approves it, and
the held client proceeds; then sessions, a session with a refused command full of HTML and
terminal escapes (inert), the replay of a held shell with its approval markers, and the audit
page. A screenshot of each page is saved under the test's temporary folder (screenshots/)."""
import json
import shutil
import subprocess
import time

import pytest

from tests.support import free_port, ident
from tests.test_core_e2e import curl, result, upstream  # noqa: F401  (fixture)
from tests.test_ssh import CLIENT_OPTS, agent_key, connection_toml, grant, sshd  # noqa: F401  (fixtures)

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is installed by .ci/run")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
EVIL_BODY = 'amount=5&note=<script>alert("body")</script><img src=x onerror=alert(2)>\x1b[2J\x1b]0;pwned\x07'
EVIL_COMMAND = "echo '<script>alert(\"cmd\")</script>' \x1b[31mred\x1b[0m \x1b]0;title\x07 <b>bold</b>"


@pytest.fixture
def browser(tmp_path):
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=DRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    driver.shot = lambda name: driver.save_screenshot(str(shots / f"{name}.png"))
    yield driver
    driver.quit()


@pytest.fixture
def gateway(hoopy_gateway, upstream, sshd, agent_key):
    up_port, _ = upstream
    key, pub = agent_key
    agent, alice = ident("agent"), ident("alice")
    http_port = free_port()
    ssh_conn, ssh_port = connection_toml(sshd)
    body = (agent.toml(ssh_keys=[pub]) + alice.toml(kind="human", roles=["reviewer"]) + ssh_conn + f"""
[connections.api]
type = "http"
listen = "tcp:{http_port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"

[[grants]]
identity = "agent"
connection = "api"
approve = ["POST /v1/refunds"]
""" + grant("agent", allow=["exec echo *"], approve=["shell"]))
    gw = hoopy_gateway(body)
    gw.agent, gw.alice, gw.key = agent, alice, key
    gw.http = f"http://127.0.0.1:{http_port}"
    gw.ssh = ["ssh", "-p", str(ssh_port), "-i", str(key), *CLIENT_OPTS]
    return gw


def wait(driver, cond, timeout=20):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(cond)


def no_alert(driver):
    try:
        driver.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def test_a_reviewer_approves_in_the_browser_and_the_client_proceeds(gateway, browser, tmp_path):
    b, gw = browser, gateway
    b.get(gw.admin + "/ui/")
    wait(b, lambda d: d.find_elements(By.ID, "token"))
    b.shot("01-signin")
    b.find_element(By.ID, "token").send_keys(gw.alice.token)
    b.find_element(By.ID, "signin").click()
    wait(b, lambda d: d.current_url.endswith("/ui/inbox"))
    assert "Nothing waits" in b.page_source

    # A held HTTP request appears while the page is open: no reload.
    client = curl("-X", "POST", "-H", "Content-Type: text/plain", "--data-binary", EVIL_BODY,
                  gw.http + "/v1/refunds", token=gw.agent.token)
    (row,) = gw.wait_pending(gw.alice.token)
    aid = row["id"]
    card = wait(b, lambda d: d.find_elements(By.ID, aid))[0]
    assert b.find_element(By.ID, "pending-count").text == "1"
    op = card.find_element(By.CSS_SELECTOR, "pre.operation").text
    # What the caller sent is shown as text: no element, no alert, escapes visible.
    assert '<script>alert("body")</script><img src=x onerror=alert(2)>' in op
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in op
    assert not card.find_elements(By.TAG_NAME, "img") and not card.find_elements(By.TAG_NAME, "script")
    assert no_alert(b)
    assert "agent" in card.text and "POST /v1/refunds" in card.text
    time.sleep(1.1)  # the age counts up by itself
    assert card.find_element(By.CSS_SELECTOR, ".age").text.endswith("s")
    b.shot("02-inbox")

    card.find_element(By.NAME, "reason").send_keys("checked the amount")
    card.find_element(By.CSS_SELECTOR, "button.approve").click()
    wait(b, lambda d: "Approved." in d.page_source)
    b.shot("03-approval")
    code, _ = result(client)
    assert code == 200  # the held client went on
    decided = gw.events("approval.decided")
    assert decided[-1]["data"]["reviewer"] == "alice" and decided[-1]["data"]["reason"] == "checked the amount"

    # SSH: a refused command full of markup and escapes; a held shell approved, recorded.
    r = subprocess.run(gw.ssh + [f"{gw.agent.name}@127.0.0.1", EVIL_COMMAND], capture_output=True, timeout=30)
    assert r.returncode == 126
    shell = subprocess.Popen(gw.ssh + ["-tt", f"{gw.agent.name}@127.0.0.1"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (held,) = gw.wait_pending(gw.alice.token)
    assert gw.hoopy("approve", held["id"], token=gw.alice.token).returncode == 0
    out, _ = shell.communicate("echo replay-me\nexit\n", timeout=30)
    assert "replay-me" in out

    b.find_element(By.LINK_TEXT, "Sessions").click()
    wait(b, lambda d: d.find_elements(By.ID, "sessions"))
    assert "1 refused" in b.page_source
    b.shot("04-sessions")

    sessions = json.loads(gw.hoopy("sessions", "--json").stdout)
    refused = next(s for s in sessions if s["protocol"] == "ssh" and any(
        e["outcome"] == "refused" for e in json.loads(gw.hoopy("show", s["id"], "--json").stdout)["events"]))
    b.get(f"{gw.admin}/ui/sessions/{refused['id']}")
    row = wait(b, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.refusal"))[0]
    assert "<script>alert(\"cmd\")</script>" in row.text and "\\x1b[31mred" in row.text and "<b>bold</b>" in row.text
    assert not b.find_elements(By.CSS_SELECTOR, "#events b") and no_alert(b)
    assert row.value_of_css_property("border-left-style") == "solid" or "refusal" in row.get_attribute("class")
    b.shot("05-session")

    shell_session = next(s for s in sessions if s["protocol"] == "ssh" and s["id"] != refused["id"])
    b.get(f"{gw.admin}/ui/sessions/{shell_session['id']}")
    b.find_element(By.ID, "replay-link").click()
    wait(b, lambda d: d.find_elements(By.CSS_SELECTOR, "#player .ap-player"))
    markers = b.find_element(By.CSS_SELECTOR, "ul.markers").text
    assert f"approval {held['id']} requested" in markers and f"approval {held['id']} approved" in markers
    b.execute_script("window.hoopyPlayer.play()")
    wait(b, lambda d: "replay-me" in d.find_element(By.ID, "player").text)
    b.shot("06-replay")

    b.find_element(By.LINK_TEXT, "Audit").click()
    wait(b, lambda d: d.find_elements(By.ID, "verify"))
    assert b.find_element(By.ID, "verify").text == "✔ intact"
    b.shot("07-audit")

    # Nothing the pages did was blocked by their Content-Security-Policy.
    logs = b.get_log("browser")
    assert not [m for m in logs if "Content Security Policy" in m["message"] or "Refused to" in m["message"]], logs
    assert all((tmp_path / "screenshots" / f"{n}.png").stat().st_size > 5000 for n in (
        "01-signin", "02-inbox", "03-approval", "04-sessions", "05-session", "06-replay", "07-audit"))
