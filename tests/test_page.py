"""The chat page in headless Chromium at a phone's width (375 px) and a desktop's (1280 px): element boxes
measured, not just text found. PSYDT_SCREENSHOT_DIR=docs writes the README's screenshots
(serve.png at 1280 px, serve-phone.png at 375 px)."""
import os
import shutil
from pathlib import Path

import pytest

from conftest import DIALOGUES
from test_serving import CRISIS, Server, http

D0 = DIALOGUES[0]["messages"]
pytestmark = pytest.mark.slow
KEY = "page-key"
PASTED = "https://example.com/" + "a1b2c3" * 60  # one long unbroken string, as a pasted link


@pytest.fixture(scope="module")
def keyed_server(tiny_model_dir, memorised_adapter):
    s = Server("--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
               "--max_new_tokens", "60", env={"PSYDT_API_KEY": KEY})
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('profile')}", "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


def box(browser, selector) -> dict:
    """The element's box in the viewport (CSS pixels)."""
    return browser.execute_script(
        "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
        "return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height};", selector)


def no_horizontal_overflow(browser):
    width, inner = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page is {width} px wide in a {inner} px viewport"
    assert box(browser, "#send")["right"] <= inner and box(browser, "#reset")["right"] <= inner


def say(browser, wait, text):
    from selenium.webdriver.common.by import By

    before = len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == before + 1
               and not b.find_element(By.ID, "send").get_attribute("disabled"))
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]


@pytest.mark.parametrize("width,height,shot", [(375, 740, "serve-phone.png"), (1280, 860, "serve.png")])
def test_the_page_at_phone_and_desktop_width(keyed_server, browser, width, height, shot):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})
    browser.get(keyed_server.url + "/")
    wait = WebDriverWait(browser, 90)
    assert browser.title == "心理支持对话"
    icon = browser.execute_script("return document.querySelector('link[rel=icon]').href")
    assert http("GET", icon)[0] == 200
    assert "12356" in browser.find_element(By.ID, "hotlines").text  # the first hotline shows even on a phone
    assert "不能替代" in browser.find_element(By.ID, "disclaimer").text
    assert not browser.find_element(By.ID, "system").is_displayed()  # the system prompt starts collapsed
    # the key field has a line of its own: the message box keeps most of the row
    assert browser.find_element(By.ID, "key").is_displayed()
    assert box(browser, "#input")["width"] >= 0.6 * box(browser, "footer .row")["width"]
    no_horizontal_overflow(browser)

    browser.find_element(By.ID, "key").send_keys(KEY)
    assert D0[2]["content"] in say(browser, wait, D0[1]["content"]).text
    say(browser, wait, PASTED)
    no_horizontal_overflow(browser)

    reply = say(browser, wait, CRISIS)
    wait.until(lambda b: reply.find_elements(By.CSS_SELECTOR, ".crisis"))
    crisis = reply.find_element(By.CSS_SELECTOR, ".crisis")
    assert "12356" in crisis.text and "```" not in reply.text  # the fenced help is rendered, not shown raw
    header, footer = box(browser, "header"), box(browser, "footer")
    assert abs(header["top"]) < 1 and header["bottom"] > 0  # the sticky header is there, at the top
    heading = box(browser, ".msg.assistant:last-child .crisis strong")
    whole = box(browser, ".msg.assistant:last-child .crisis")
    assert header["bottom"] <= heading["top"] and heading["bottom"] <= footer["top"], (header, heading, footer)
    assert header["bottom"] <= whole["top"] and whole["bottom"] <= footer["top"], (header, whole, footer)
    no_horizontal_overflow(browser)
    folder = os.environ.get("PSYDT_SCREENSHOT_DIR")
    if folder:
        browser.save_screenshot(str(Path(folder) / shot))
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
