"""The web console in a real browser: Debian's headless Chromium driven
through chromedriver (selenium). Logs in on a master and on its standby,
loads every page, sends messages from the Send page and watches the Queues
page's counter move. Screenshots of every page go to
target/console-screenshots/ (and, with BROKK_UPDATE_DOCS=1, to docs/console/
for the README)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile

import pytest
import stomp
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROKK = os.environ.get("BROKK_BIN", os.path.join(ROOT, "target", "debug", "brokk"))
SHOTS = os.path.join(ROOT, "target", "console-screenshots")
DOCS = os.path.join(ROOT, "docs", "console")
WAIT_S = 20
PAGES = ["overview", "queues", "topics", "subscribers", "connections", "send", "cluster"]

def users():
    """The console's user, with an argon2id hash made by `brokk hash-password`."""
    phc = subprocess.run([BROKK, "hash-password"], input="secret\n", capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    assert phc.startswith("$argon2id$"), phc
    return f'[[users]]\nlogin = "ops"\npasscode_hash = "{phc}"\ngroups = ["admins"]\n'


_handed_out = set()


def free_port():
    """A port below the ephemeral range, which a restart-stable broker
    address needs (see brokk::ports); never the same one twice."""
    base = 12000 + (os.getpid() * 7) % 6000
    for p in range(base, base + 2000):
        if p in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
                _handed_out.add(p)
                return p
            except OSError:
                continue
    raise RuntimeError("no free port")


def start(cfg_text, data, stomp, admin):
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(cfg_text)
    cfg.close()
    proc = subprocess.Popen(
        [BROKK, "serve", "--config", cfg.name, "--stomp", f"127.0.0.1:{stomp}", "--openwire", "127.0.0.1:0",
         "--admin", f"127.0.0.1:{admin}", "--shards", "2", "--data", data],
        stdout=subprocess.PIPE, env=dict(os.environ, BROKK_LOG="warn"), text=True)
    line = proc.stdout.readline()
    return proc, line


@pytest.fixture(scope="module")
def pair():
    data = tempfile.mkdtemp()
    ports = [free_port() for _ in range(2)]
    admins = [free_port() for _ in range(2)]
    accounts = users()
    peer = lambda a: accounts + f'\n[admin]\npeers = ["http://127.0.0.1:{a}"]\n'
    master, line = start(peer(admins[1]), data, ports[0], admins[0])
    assert line.startswith("brokk listening"), line
    standby, line = start(peer(admins[0]), data, ports[1], admins[1])
    assert line.startswith("brokk standby"), line
    clients = traffic(ports[0])
    yield f"http://127.0.0.1:{admins[0]}", f"http://127.0.0.1:{admins[1]}"
    for c in clients:
        c.disconnect()
    for p in (standby, master):
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
    shutil.rmtree(data, ignore_errors=True)


def traffic(port):
    """Something for the pages to show: an offline durable subscription
    with messages waiting, a topic, and a consumer that stays connected."""
    def connect(client_id=None):
        c = stomp.Connection12([("127.0.0.1", port)], heartbeats=(0, 0))
        headers = {"client-id": client_id} if client_id else {}
        c.connect("ops", "secret", wait=True, headers=headers)
        return c
    sub = connect("pricing-desk")
    sub.subscribe("/topic/prices.eu", id="1", ack="client-individual",
                  headers={"activemq.subscriptionName": "eu-feed"})
    # DISCONNECT waits for its RECEIPT: the subscription exists before
    # anything is published.
    sub.disconnect()
    pub = connect()
    for i in range(3):
        pub.send("/topic/prices.eu", f'{{"tick": {i}}}', headers={"persistent": "true"})
    consumer = connect()
    consumer.subscribe("/queue/invoices", id="2", ack="auto")
    return [pub, consumer]


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1280,900", f"--user-data-dir={tempfile.mkdtemp()}"]:
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    yield driver
    driver.quit()


def wait(driver, cond):
    """Waits for `cond`; on a timeout, says what the page showed (and keeps
    a screenshot of it) instead of an empty TimeoutException."""
    try:
        return WebDriverWait(driver, WAIT_S).until(cond)
    except Exception:
        os.makedirs(SHOTS, exist_ok=True)
        driver.save_screenshot(os.path.join(SHOTS, "failure.png"))
        body = driver.find_element(By.TAG_NAME, "body").text
        raise AssertionError(f"waited {WAIT_S} s at {driver.current_url}; the page showed:\n{body}")


def shot(driver, name):
    os.makedirs(SHOTS, exist_ok=True)
    path = os.path.join(SHOTS, name + ".png")
    driver.save_screenshot(path)
    if os.environ.get("BROKK_UPDATE_DOCS") == "1":
        os.makedirs(DOCS, exist_ok=True)
        shutil.copy(path, os.path.join(DOCS, name + ".png"))


def log_in(driver, base):
    driver.delete_all_cookies()
    driver.get(base + "/")
    form = wait(driver, EC.visibility_of_element_located((By.ID, "login-form")))
    form.find_element(By.NAME, "login").send_keys("ops")
    form.find_element(By.NAME, "passcode").send_keys("secret")
    form.find_element(By.TAG_NAME, "button").click()
    wait(driver, EC.text_to_be_present_in_element((By.ID, "who"), "ops (admin)"))
    wait(driver, EC.visibility_of_element_located((By.ID, "nav")))


def open_page(driver, base, page):
    driver.get(f"{base}/#{page}")
    driver.refresh()
    wait(driver, EC.visibility_of_element_located((By.ID, "page-" + page)))


def queue_cell(driver, queue, cls):
    rows = driver.find_elements(By.CSS_SELECTOR, f'#queues-rows tr[data-queue="{queue}"] td.{cls}')
    return rows[0].text if rows else None


def send_from_form(driver, base, dest, count):
    open_page(driver, base, "send")
    form = driver.find_element(By.ID, "send-form")
    form.find_element(By.NAME, "destination").clear()
    form.find_element(By.NAME, "destination").send_keys(dest)
    form.find_element(By.NAME, "headers").clear()
    form.find_element(By.NAME, "headers").send_keys("origin: browser test")
    form.find_element(By.NAME, "body").clear()
    form.find_element(By.NAME, "body").send_keys('{"order": 42, "note": "sent from the console"}')
    count_in = form.find_element(By.NAME, "count")
    count_in.clear()
    count_in.send_keys(str(count))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(driver, EC.text_to_be_present_in_element((By.ID, "flash"), f"Sent {count} message(s)"))


def test_master_pages_send_and_counters(pair, browser):
    master, _ = pair
    log_in(browser, master)
    send_from_form(browser, master, "/queue/orders", 3)
    shot(browser, "send")
    open_page(browser, master, "queues")
    wait(browser, lambda d: queue_cell(d, "orders", "enqueued") == "3")
    # The counter moves without a reload.
    send_from_form(browser, master, "/queue/orders", 2)
    browser.get(master + "/#queues")
    wait(browser, lambda d: queue_cell(d, "orders", "enqueued") == "5")
    browser.find_element(By.CSS_SELECTOR, '#queues-rows tr[data-queue="orders"] button[data-act="browse"]').click()
    wait(browser, EC.text_to_be_present_in_element((By.ID, "browse-rows"), "sent from the console"))
    assert "origin: browser test" in browser.find_element(By.ID, "browse-rows").text
    shot(browser, "queues")
    for page in ["overview", "topics", "subscribers", "connections", "cluster"]:
        open_page(browser, master, page)
        if page == "overview":
            wait(browser, EC.text_to_be_present_in_element((By.ID, "overview-tiles"), "master"))
        elif page == "cluster":
            wait(browser, EC.text_to_be_present_in_element((By.ID, "cluster-rows"), "standby"))
        elif page == "subscribers":
            wait(browser, EC.text_to_be_present_in_element((By.ID, "subscribers-rows"), "eu-feed"))
            assert "offline" in browser.find_element(By.ID, "subscribers-rows").text
        elif page == "connections":
            wait(browser, EC.text_to_be_present_in_element((By.ID, "connections-rows"), "stomp"))
        else:
            wait(browser, lambda d: d.find_element(By.ID, page + "-rows").text != "")
        assert browser.find_element(By.ID, "flash").text == "", browser.find_element(By.ID, "flash").text
        shot(browser, page)


def test_standby_shows_its_role(pair, browser):
    _, standby = pair
    log_in(browser, standby)
    open_page(browser, standby, "overview")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "overview-tiles"), "standby"))
    wait(browser, EC.text_to_be_present_in_element((By.ID, "role"), "standby"))
    holder = browser.find_element(By.ID, "overview-ha").text
    assert re.search(r"holder\s+\S+", holder), holder
    shot(browser, "standby-overview")
    open_page(browser, standby, "queues")
    wait(browser, EC.text_to_be_present_in_element((By.ID, "flash"), "not the master"))


def test_readable_on_a_phone(pair, browser):
    master, _ = pair
    browser.set_window_size(390, 844)
    try:
        log_in(browser, master)
        open_page(browser, master, "overview")
        wait(browser, EC.text_to_be_present_in_element((By.ID, "overview-tiles"), "master"))
        # The page itself never scrolls sideways (wide tables scroll in their box).
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1")
        shot(browser, "phone-overview")
    finally:
        browser.set_window_size(1280, 900)
