#!/usr/bin/env python3
"""A real browser on the console for SECONDS: headless Chromium (selenium,
Debian's chromium + chromedriver) logs in and moves to the next console
page every second, each page polling the API as it does for an operator.
bench/RESULTS.md uses it beside bench to show the console's cost.

    bench/console_browser_load.py http://127.0.0.1:8161 ops secret SECONDS
"""
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

PAGES = ["overview", "queues", "topics", "subscribers", "connections", "send", "cluster"]


def main():
    base, user, password, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              f"--user-data-dir={tempfile.mkdtemp()}"]:
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        d.get(base + "/")
        form = WebDriverWait(d, 20).until(EC.visibility_of_element_located((By.ID, "login-form")))
        form.find_element(By.NAME, "login").send_keys(user)
        form.find_element(By.NAME, "passcode").send_keys(password)
        form.find_element(By.TAG_NAME, "button").click()
        WebDriverWait(d, 20).until(EC.text_to_be_present_in_element((By.ID, "who"), user))
        end = time.monotonic() + seconds
        shown = 0
        while time.monotonic() < end:
            d.get(f"{base}/#{PAGES[shown % len(PAGES)]}")
            shown += 1
            time.sleep(1)
        print(f"console_browser_load: {shown} page views")
    finally:
        d.quit()


if __name__ == "__main__":
    main()
