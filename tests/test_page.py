"""The chat page in headless Chromium at a phone's width (375 px) and a desktop's (1280 px): element boxes
measured, not just text found; the hotlines as tel: links, the greeting in the empty chat, the typed text kept
on every error and the help box on every crisis turn. PSYDT_SCREENSHOT_DIR=docs writes the README's screenshots
(serve.png at 1280 px, serve-phone.png at 375 px)."""
import contextlib
import dataclasses
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from conftest import DIALOGUES
from psydt_lora.inference.chat import DISCLAIMER
from psydt_lora.safety.resources import load_resources
from test_serving import CRISIS, Server, http, in_process, wait_for

D0 = DIALOGUES[0]["messages"]
pytestmark = pytest.mark.slow
KEY = "page-key"
PASTED = "https://example.com/" + "a1b2c3" * 60  # one long unbroken string, as a pasted link
RESOURCES = load_resources()[0]["resources"]  # what the server sends the page (the built-in list)


def tel(contact: str) -> set:
    """The tel: links a contact should give: each number in it, digits only."""
    return {"tel:" + re.sub(r"[^\d+]", "", n) for n in re.findall(r"\+?\d[\d -]*\d", contact)}


NUMBERS = set().union(*(tel(r["contact"]) for r in RESOURCES))
EMERGENCY = {"tel:110", "tel:120"}


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


def at_width(browser, width, height):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600})


def links(element) -> set:
    from selenium.webdriver.common.by import By

    return {a.get_attribute("href") for a in element.find_elements(By.CSS_SELECTOR, "a[href^='tel:']")}


def shoot(browser, name):
    folder = os.environ.get("PSYDT_SCREENSHOT_DIR")
    if folder:
        browser.save_screenshot(str(Path(folder) / name))


def say(browser, wait, text, typed=True):
    """Send `text` (typed, or set whole: a long text) and wait for the reply bubble to be done."""
    from selenium.webdriver.common.by import By

    before = len(browser.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    field = browser.find_element(By.ID, "input")
    if typed:
        field.send_keys(text)
    else:
        browser.execute_script("arguments[0].value = arguments[1]", field, text)
    browser.find_element(By.ID, "send").click()
    wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".msg.assistant")) == before + 1
               and not b.find_element(By.ID, "send").get_attribute("disabled"))
    return browser.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]


@pytest.mark.parametrize("width,height", [(375, 740), (1280, 860)])
def test_hotlines_as_tel_links_and_a_greeting_in_the_empty_chat(keyed_server, browser, width, height):
    """Every hotline in the header is on screen (wrapped on a phone, never cut or scrolled sideways) and a
    tel: link; the empty chat greets with the disclaimer and the danger numbers, above the input."""
    from selenium.webdriver.common.by import By

    at_width(browser, width, height)
    browser.get(keyed_server.url + "/")
    inner = browser.execute_script("return window.innerWidth")
    hotlines = browser.find_element(By.ID, "hotlines")
    assert browser.execute_script("const e = arguments[0]; return e.scrollWidth <= e.clientWidth", hotlines)
    header = box(browser, "header")
    items = browser.execute_script(
        "return [...document.querySelectorAll('#hotlines li, #hotlines a')].map(e => {"
        "const r = e.getBoundingClientRect(); return {text: e.textContent, left: r.left, right: r.right,"
        " top: r.top, bottom: r.bottom, width: r.width}})")
    for item in items:  # each hotline and each number whole inside the header
        assert 0 <= item["left"] and item["right"] <= inner and item["width"] > 0, item
        assert header["top"] <= item["top"] and item["bottom"] <= header["bottom"], (item, header)
    for r in RESOURCES:
        assert r["contact"] in hotlines.text
    assert links(hotlines) == NUMBERS
    if width >= 1000:  # a desktop: the whole list on one line, the names in full
        rows = browser.execute_script("return [...document.querySelectorAll('#hotlines li')].map(e => e.offsetTop)")
        assert len(set(rows)) == 1, rows
        assert all(r["name"] in hotlines.text for r in RESOURCES)
    greeting = browser.find_element(By.ID, "greeting")
    assert greeting.is_displayed() and "不能替代" in greeting.text and "危险" in greeting.text
    assert EMERGENCY <= links(greeting) <= NUMBERS
    spot = box(browser, "#greeting")
    assert header["bottom"] <= spot["top"] and spot["bottom"] <= box(browser, "footer")["top"], (header, spot)
    no_horizontal_overflow(browser)
    shoot(browser, f"page-empty-{width}.png")


@pytest.mark.parametrize("width,height,shot", [(375, 740, "serve-phone.png"), (1280, 860, "serve.png")])
def test_the_page_at_phone_and_desktop_width(keyed_server, browser, width, height, shot):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    at_width(browser, width, height)
    browser.get(keyed_server.url + "/")
    wait = WebDriverWait(browser, 90)
    assert browser.title == "心理支持对话"
    icon = browser.execute_script("return document.querySelector('link[rel=icon]').href")
    assert http("GET", icon)[0] == 200
    assert "12356" in browser.find_element(By.ID, "hotlines").text
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
    assert links(crisis) == NUMBERS  # every number in the help box is a tel: link
    header, footer = box(browser, "header"), box(browser, "footer")
    assert abs(header["top"]) < 1 and header["bottom"] > 0  # the sticky header is there, at the top
    heading = box(browser, ".msg.assistant:last-child .crisis strong")
    whole = box(browser, ".msg.assistant:last-child .crisis")
    assert header["bottom"] <= heading["top"] and heading["bottom"] <= footer["top"], (header, heading, footer)
    assert header["bottom"] <= whole["top"] and whole["bottom"] <= footer["top"], (header, whole, footer)
    no_horizontal_overflow(browser)
    shoot(browser, shot)
    browser.find_element(By.ID, "reset").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    assert browser.find_element(By.ID, "greeting").is_displayed()  # the empty chat greets again


# -- errors, against the app in this process: a test holds the model's lock to keep the server busy ----------
@pytest.fixture(scope="module")
def loaded(tiny_model_dir, memorised_adapter):
    from psydt_lora.models import load_for_inference

    return load_for_inference(tiny_model_dir, memorised_adapter, device="cpu")


@contextlib.contextmanager
def page_app(loaded, limit=4096, **config):
    """The real app on a free port, one request at a time, no queue; yields (url, the model's lock, an event
    set once a request is generating or waiting for the model)."""
    from psydt_lora.inference.generation import GenerationSettings
    from psydt_lora.inference.serving import HFBackend, ServeConfig, create_app
    from psydt_lora.safety.session import Safety

    model, tok, _, _ = loaded
    lock, generating = threading.Lock(), threading.Event()
    backend = HFBackend(model, tok, limit, lock=lock)
    real = backend.stream

    def stream(*args, **kwargs):
        generating.set()
        return real(*args, **kwargs)

    backend.stream = stream
    names = {f.name for f in dataclasses.fields(ServeConfig)}
    config = {"max_concurrency": 1, "disclaimer": DISCLAIMER, **({"max_queue": 0} if "max_queue" in names else {}), **config}
    settings = GenerationSettings(max_new_tokens=60, do_sample=False)
    app = create_app(backend, Safety(), ServeConfig("psydt", None, 6, settings, 60, **config))
    with in_process(app) as (url, _):
        yield url, lock, generating


@contextlib.contextmanager
def held_busy(url, lock, generating):
    """One request admitted and waiting for the model (whose lock is held) until the block ends."""
    lock.acquire()
    done = []
    holder = threading.Thread(target=lambda: done.append(http(
        "POST", f"{url}/v1/chat/completions",
        {"model": "psydt", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4}, timeout=120)[0]))
    holder.start()
    try:
        wait_for(generating.is_set, 60, "the first request to reach the model")
        yield
    finally:
        lock.release()
        holder.join(120)
    assert done == [200]


def kept_after_error(browser, wait, text, typed=True):
    """Send `text`, which the server refuses: the text back in the input, the error in Chinese, nothing
    added to the history; returns the reply bubble's text."""
    from selenium.webdriver.common.by import By

    reply = say(browser, wait, text, typed)
    assert browser.find_element(By.ID, "input").get_attribute("value") == text
    mine = browser.find_elements(By.CSS_SELECTOR, ".msg.user")[-1]
    assert "unsent" in mine.get_attribute("class").split()
    assert "出错了" in reply.text and not re.search(r"[A-Za-z]{4,}", reply.text.replace("token", "")), reply.text
    assert browser.execute_script("return history.length") == 0
    browser.execute_script("document.getElementById('input').value = ''")
    return reply.text


def test_the_typed_text_is_kept_on_any_error(loaded, browser):
    """Too long, busy (--max_concurrency 1 held), the server gone: each time the message goes back into the
    input box, the page says what happened in Chinese, and the history stays as it was."""
    from selenium.webdriver.support.ui import WebDriverWait

    at_width(browser, 375, 740)
    wait = WebDriverWait(browser, 90)
    with page_app(loaded, limit=200) as (url, lock, generating):
        browser.get(url + "/")
        assert "消息太长" in kept_after_error(browser, wait, D0[1]["content"] * 40, typed=False)
        no_horizontal_overflow(browser)
        shoot(browser, "page-error-375.png")
        with held_busy(url, lock, generating):
            assert "服务繁忙" in kept_after_error(browser, wait, D0[1]["content"])
    assert "连接不上服务器" in kept_after_error(browser, wait, D0[1]["content"])  # the server has stopped


@pytest.mark.parametrize("why", ["too_long", "busy", "queued"])
def test_the_help_box_on_a_crisis_turn_that_cannot_be_answered(loaded, browser, why):
    """A crisis message too long for the model, or sent while the one place is taken and no queue: the server
    answers with the help and a line saying why (safety.unanswered); the page shows the help box with tel:
    links under the header, that line, and gives the message back to the input."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    at_width(browser, 375, 740)
    wait = WebDriverWait(browser, 90)
    text = CRISIS + "。" + D0[1]["content"] * 40 if why == "too_long" else CRISIS
    # queued: it waits in the queue (the help streamed at once) until the wait runs out; only the stream's last
    # event says it was not answered
    queue = {"max_queue": 1, "queue_timeout": 1.0} if why == "queued" else {}
    with page_app(loaded, limit=200, **queue) as (url, lock, generating):
        browser.get(url + "/")
        with held_busy(url, lock, generating) if why != "too_long" else contextlib.nullcontext():
            reply = say(browser, wait, text, typed=False)
        assert reply.find_elements(By.CSS_SELECTOR, ".crisis"), reply.text  # there once the send button is back
        crisis = reply.find_element(By.CSS_SELECTOR, ".crisis")
        assert links(crisis) == NUMBERS and "```" not in reply.text
        assert ("太长" if why == "too_long" else "忙") in reply.text.replace(crisis.text, "")
        assert browser.find_element(By.ID, "input").get_attribute("value") == text
        assert browser.execute_script("return history.length") == 0
        header, heading, footer = box(browser, "header"), box(browser, ".crisis strong"), box(browser, "footer")
        assert header["bottom"] <= heading["top"] and heading["bottom"] <= footer["top"], (header, heading, footer)
        no_horizontal_overflow(browser)
        shoot(browser, f"page-crisis-{why}-375.png")
