"""The HTTP server for real: started as a process on a free localhost port, driven with the official
`openai` client (and raw HTTP where the client cannot say it), and the chat page in headless Chromium."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import urllib.error
import urllib.request

import openai
import pytest

from conftest import DIALOGUES, ROOT
from test_multigpu import free_port

SCRIPT = ROOT / "LLM_fine_turning" / "inference_psydt_lora.py"
D0 = DIALOGUES[0]["messages"]
CRISIS = "我不想活了"


def http(method, url, body=None, headers=None, timeout=30):
    """(status, headers, parsed JSON or None): a raw request, for what the openai client does not show."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            status, head, raw = res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as err:
        status, head, raw = err.code, dict(err.headers), err.read()
    try:
        return status, {k.lower(): v for k, v in head.items()}, json.loads(raw)
    except ValueError:
        return status, {k.lower(): v for k, v in head.items()}, None


class Server:
    def __init__(self, *args, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(SCRIPT), "--mode", "serve", "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "PYTHONPATH": "", **(env or {})})
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()[-3000:]
            try:
                if http("GET", f"{self.url}/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server did not start")

    def client(self, key="unused", **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kw)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        return out


@pytest.fixture(scope="module")
def server(tiny_model_dir, memorised_adapter):
    s = Server("--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
               "--max_new_tokens", "60")
    yield s
    s.stop()


def history(item):
    return [m for m in item["messages"][:-1]]


def test_replies_streamed_and_not_equal_the_terminal_test_mode(server, tiny_model_dir, memorised_adapter, data_files,
                                                                tmp_path):
    import inference_psydt_lora

    _, test = data_files
    out = tmp_path / "r.json"
    assert inference_psydt_lora.main(["--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter),
                                      "--mode", "test", "--test_file", str(test), "--test_output_file", str(out),
                                      "--no-do_sample", "--max_new_tokens", "60"]) == 0
    expected = {r["index"]: r["response"] for r in json.loads(out.read_text("utf-8"))["results"]}
    items = json.loads(test.read_text("utf-8"))
    client = server.client()
    assert [m.id for m in client.models.list()] == ["psydt"]
    for index, item in enumerate(items):
        reply = client.chat.completions.create(model="psydt", messages=history(item), temperature=0, max_tokens=60)
        assert reply.choices[0].message.content == expected[index] == item["messages"][-1]["content"]
        assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens > 0
        assert reply.safety == {"enabled": True, "crisis": False, "categories": [], "level": None, "screened": False,
                                "layers": {"lexicon": {"crisis": False, "categories": [], "level": None}}}
        chunks = list(client.chat.completions.create(model="psydt", messages=history(item), temperature=0,
                                                     max_tokens=60, stream=True, stream_options={"include_usage": True}))
        assert chunks[0].safety["crisis"] is False  # the safety event comes first
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected[index]
        assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens


def test_a_crisis_message_gets_resources_before_the_reply(server):
    client = server.client()
    chunks = list(client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}],
                                                 stream=True, max_tokens=20))
    first = chunks[0]
    assert first.safety["crisis"] and first.safety["categories"] == ["suicide"]
    assert any(r["contact"] == "12356" for r in first.safety["resources"]) and "12356" in first.safety["notice"]
    assert not first.choices[0].delta.content  # nothing of the reply before the resources
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    reply = client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}], max_tokens=20)
    assert reply.safety["crisis"] and reply.safety["resources"] and reply.safety["level"] in ("concern", "imminent")


def test_eight_concurrent_streams_all_complete(server):
    client = server.client()

    def one(i):
        msgs = [{"role": "user", "content": D0[1]["content"]}]
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="psydt", messages=msgs, stream=True, temperature=0, max_tokens=60) if c.choices)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    assert replies == [D0[2]["content"]] * 8


def test_bad_requests_get_json_errors(server):
    import http.client as raw_http

    conn = raw_http.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/chat/completions")  # a 3 MB body announced: refused before it is read
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(3 << 20))
    conn.endheaders()
    res = conn.getresponse()
    assert res.status == 413 and json.loads(res.read())["error"]["type"] == "request_too_large"
    conn.close()
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        server.client().chat.completions.create(model="psydt", messages=[{"role": "user", "content": "你好"}], max_tokens=100000)
    status, _, body = http("POST", f"{server.url}/v1/chat/completions", {"messages": [{"role": "assistant", "content": "x"}]})
    assert status == 400 and "user" in body["error"]["message"]
    assert http("POST", f"{server.url}/v1/chat/completions", b"{not json")[0] == 400
    # CORS is closed unless asked for
    _, head, _ = http("OPTIONS", f"{server.url}/v1/chat/completions",
                      headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in head


def test_keys_queue_limits_and_graceful_shutdown(tiny_model_dir):
    # the random base model writes until max_tokens: a stream long enough to overlap with others
    s = Server("--model_path", str(tiny_model_dir), "--no_adapter", "--max_concurrency", "1", "--max_new_tokens", "800",
               "--no-do_sample", env={"PSYDT_API_KEY": "s3cret"})
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        status, _, body = http("GET", f"{s.url}/v1/models")  # no key at all
        assert status == 401 and body["error"]["type"] == "invalid_api_key"
        assert http("GET", f"{s.url}/")[0] == 200  # the page itself holds no secret; its requests need the key
        client = s.client("s3cret")
        assert [m.id for m in client.models.list()] == ["psydt"]
        done, first = {}, threading.Event()

        def long_stream():
            pieces = []
            for c in client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": "你好"}],
                                                    stream=True, max_tokens=800):
                first.set()
                pieces.append(c)
            done["chunks"] = pieces

        worker = threading.Thread(target=long_stream)
        worker.start()
        assert first.wait(60)
        with pytest.raises(openai.RateLimitError):  # the queue (1) is full
            client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": "你好"}], max_tokens=5)
        s.proc.send_signal(signal.SIGTERM)  # shutting down lets the stream in flight finish
        worker.join(120)
        assert done["chunks"][-1].choices[0].finish_reason == "length"
        assert s.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once it has shut down gracefully
        log = s.stop()
        assert "你好" not in log  # no request text in the logs
    finally:
        if s.proc.poll() is None:
            s.proc.kill()


def test_the_openai_backend_is_a_safety_gateway_in_front_of_another_engine(tiny_model_dir, memorised_adapter, server):
    engine = Server("--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
                    "--max_new_tokens", "60", "--safety", "off")
    gateway = Server("--backend", "openai", "--backend_url", f"{engine.url}/v1", "--model_path", str(tiny_model_dir),
                     "--adapter_path", str(memorised_adapter), "--no-do_sample", "--max_new_tokens", "60")
    try:
        msgs = [{"role": "user", "content": D0[1]["content"]}]
        direct = server.client().chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=60)
        via = gateway.client().chat.completions.create(model="psydt", messages=msgs, temperature=0, max_tokens=60)
        assert via.choices[0].message.content == direct.choices[0].message.content == D0[2]["content"]
        assert via.usage.completion_tokens == direct.usage.completion_tokens
        unsafe_engine = engine.client().chat.completions.create(model="psydt", messages=[{"role": "user", "content": CRISIS}],
                                                               max_tokens=10)
        assert unsafe_engine.safety == {"enabled": False}  # the engine itself screens nothing...
        chunks = list(gateway.client().chat.completions.create(
            model="psydt", messages=[{"role": "user", "content": CRISIS}], stream=True, max_tokens=10))
        assert chunks[0].safety["crisis"] and chunks[0].safety["resources"]  # ...the gateway does
        assert "正在生成" not in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finally:
        gateway.stop()
        engine.stop()


@pytest.mark.slow
def test_the_chat_page_in_a_real_browser(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_path), options=options)
    try:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        assert "12356" in browser.find_element(By.ID, "hotlines").text  # hotlines always visible
        assert "不能替代" in browser.find_element(By.ID, "disclaimer").text
        browser.find_element(By.ID, "input").send_keys(D0[1]["content"])
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: D0[2]["content"] in b.find_element(By.CSS_SELECTOR, ".msg.assistant:last-child").text)
        assert not browser.find_element(By.ID, "crisis").is_displayed()
        browser.find_element(By.ID, "input").send_keys(CRISIS)
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: b.find_element(By.ID, "crisis").is_displayed())
        assert "12356" in browser.find_element(By.ID, "crisis").text
        wait.until(lambda b: not b.find_element(By.ID, "send").get_attribute("disabled"))
        shot = os.environ.get("PSYDT_SCREENSHOT")  # README screenshot: PSYDT_SCREENSHOT=docs/serve.png
        if shot:
            browser.save_screenshot(shot)
        browser.find_element(By.ID, "reset").click()
        assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    finally:
        browser.quit()


def test_the_base_model_as_guard_shares_the_model_safely_across_streams(tiny_model_dir, memorised_adapter):
    """--safety_model base switches the adapter off to judge: never while another request is generating."""
    s = Server("--model_path", str(tiny_model_dir), "--adapter_path", str(memorised_adapter), "--no-do_sample",
               "--max_new_tokens", "60", "--safety_model", "base")
    try:
        client = s.client()

        def one(i):
            chunks = list(client.chat.completions.create(model="psydt", messages=[{"role": "user", "content": D0[1]["content"]}],
                                                         stream=True, temperature=0, max_tokens=60))
            return chunks[0].safety["layers"], "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, range(4)))
        assert all("base" in layers for layers, _ in results)
        assert [reply for _, reply in results] == [D0[2]["content"]] * 4  # the adapter was on for every reply
    finally:
        s.stop()
