"""The chat page in headless Chromium (Debian's /usr/bin/chromium driven by playwright):
two pages as two users on two brokers chat; a `bin/chat send` message appears in a page; a page
reloaded after missing 20 messages shows them once, in order.  Skipped, with the reason, where
Chromium or playwright is missing (.ci/run installs both)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, running_mesh

CHROMIUM = os.environ.get("IMESH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is not installed")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)", allow_module_level=True)


@pytest.fixture(scope="module")
def web_mesh(tmp_path_factory):
    with running_mesh(tmp_path_factory, "browser", ws=True) as harness:
        yield harness


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_api.sync_playwright() as pw:
        # launch() runs Chromium on a fresh, empty user-data dir of its own
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


def page_url(mesh, index):
    return "http://" + mesh.topo.of_type("broker")[index].endpoints["ws"][5:] + "/"


def open_chat(browser, mesh, broker, uin):
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()     # a phone-sized screen
    page.on("pageerror", lambda exc: print("page error:", exc))
    page.goto(page_url(mesh, broker))
    page.wait_for_selector("#dev:not([hidden])")
    assert not page.is_visible("#chat") and not page.is_visible("#banner")     # only the login shows
    page.fill("#uin", str(uin))
    page.click("#devlogin")
    page.wait_for_selector("#chat:not([hidden])", timeout=15000)
    return page


def texts(page):
    return page.locator("#messages li .text").all_text_contents()


def say(page, text):
    page.fill("#text", text)
    page.click("#send")


def test_two_pages_on_two_brokers_chat_with_each_other_and_with_bin_chat(web_mesh, browser):
    one = open_chat(browser, web_mesh, 0, 31)
    two = open_chat(browser, web_mesh, 1, 32)
    say(one, "hello from page one")
    two.locator("#messages li .text", has_text="hello from page one").wait_for(timeout=10000)
    say(two, "hello back from page two")
    one.locator("#messages li .text", has_text="hello back from page two").wait_for(timeout=10000)
    one.locator("#messages li.mine:not(.pending) .state", has_text="✓").first.wait_for(timeout=10000)
    subprocess.run([os.path.join(ROOT, "bin", "chat"), "send", "-c", web_mesh.topo.path,
                    "--uin", "33", "--channel", "lobby", "from the command line"],
                   check=True, cwd=ROOT, timeout=60, env=dict(os.environ, PYTHON=sys.executable))
    for page in (one, two):
        page.locator("#messages li .text", has_text="from the command line").wait_for(timeout=10000)
    assert texts(one).count("hello from page one") == 1


def test_a_page_reloaded_after_missing_messages_shows_them_once_in_order(web_mesh, browser):
    page = open_chat(browser, web_mesh, 1, 34)
    say(page, "before leaving")
    page.locator("#messages li.mine .state", has_text="✓").wait_for(timeout=10000)
    url = page.url
    page.goto("about:blank")                              # the page is gone; its session ends
    sender = web_mesh.client(35, broker=0)
    missed = [f"missed {i:02d}" for i in range(20)]
    for text in missed:
        sender.send("lobby", text)
    page.goto(url)                                        # the same tab again: logs in by itself
    page.locator("#messages li .text", has_text="missed 19").wait_for(timeout=15000)
    shown = [t for t in texts(page) if t.startswith("missed ")]
    assert shown == missed
    assert texts(page).count("before leaving") == 1
    if os.environ.get("IMESH_SCREENSHOT"):
        page.screenshot(path=os.environ["IMESH_SCREENSHOT"])


def test_the_page_shows_a_banner_and_moves_to_the_other_broker_when_its_broker_dies(make_mesh, browser):
    mesh = make_mesh(ws=True)
    page = open_chat(browser, mesh, 0, 36)
    say(page, "before the crash")
    page.locator("#messages li.mine .state", has_text="✓").wait_for(timeout=10000)
    mesh.mesh.kill(mesh.topo.ids("broker")[0])           # the broker that served the page
    page.wait_for_selector("#banner:not([hidden])", timeout=10000)
    page.wait_for_selector("#banner[hidden]", state="attached", timeout=20000)     # on the other broker
    sender = mesh.client(37, broker=1)
    sender.send("lobby", "after the crash")
    page.locator("#messages li .text", has_text="after the crash").wait_for(timeout=10000)
    say(page, "me again")
    page.locator("#messages li.mine:not(.pending) .text", has_text="me again").wait_for(timeout=10000)
    assert texts(page).count("before the crash") == 1


def test_where_websockets_are_blocked_the_page_chats_over_http_long_polling(web_mesh, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    context.route_web_socket(re.compile(".*"), lambda ws: ws.close(code=1006))    # a proxy that drops them
    page = context.new_page()
    page.goto(page_url(web_mesh, 0))
    page.wait_for_selector("#dev:not([hidden])")
    page.fill("#uin", "38")
    page.click("#devlogin")
    page.wait_for_selector("#chat:not([hidden])", timeout=20000)
    broker = web_mesh.topo.ids("broker")
    channels = sum(web_mesh.admin.status(b)["web"]["http_channels"] for b in broker)
    assert channels >= 1
    web_mesh.client(39, broker=1).send("lobby", "to the long-polling page")
    page.locator("#messages li .text", has_text="to the long-polling page").wait_for(timeout=15000)
    say(page, "sent over HTTP")
    page.locator("#messages li.mine:not(.pending) .text", has_text="sent over HTTP").wait_for(timeout=15000)
    context.close()
