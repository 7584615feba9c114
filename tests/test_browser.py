"""The chat page in headless Chromium (Debian's /usr/bin/chromium driven by playwright):
two pages as two users on two brokers chat; a `bin/chat send` message appears in a page; a page
reloaded after missing 20 messages shows them once, in order; and the conversation layer as a
new user meets it: start a DM, unread badges that move on both of a user's devices, history
scrolled back past 500 messages, seen-by and typing, edits and deletes shown everywhere, a
failed send that says why and retries; a file sent from one page (through the relay's
WebSocket) downloaded in another, an image previewed.  Screenshots of each step go to a temp folder (and to
$IMESH_WEBSHOTS when set).  Skipped, with the reason, where Chromium or playwright is missing
(.ci/run installs both)."""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib

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
    with running_mesh(tmp_path_factory, "browser", ws=True, relays=1) as harness:
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


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """shot(page, name): a PNG of the page in this module's temp folder (and $IMESH_WEBSHOTS)."""
    folder = tmp_path_factory.mktemp("webshots")
    copy_to = os.environ.get("IMESH_WEBSHOTS")

    def shot(page, name):
        path = str(folder / f"{name}.png")
        page.screenshot(path=path)
        if copy_to:
            os.makedirs(copy_to, exist_ok=True)
            shutil.copy(path, copy_to)
    return shot


def page_url(mesh, index):
    return "http://" + mesh.topo.of_type("broker")[index].endpoints["ws"][5:] + "/"


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1100, "height": 760}


def open_chat(browser, mesh, broker, uin, channel="lobby", viewport=PHONE):
    """A new browser (its own storage: a new device) logged in as uin; `channel` opened from
    the list of chats (None: the list stays)."""
    page = browser.new_context(viewport=viewport).new_page()
    page.on("pageerror", lambda exc: print("page error:", exc))
    page.goto(page_url(mesh, broker))
    page.wait_for_selector("#dev:not([hidden])")
    assert not page.is_visible("#chat") and not page.is_visible("#banner")     # only the login shows
    page.fill("#uin", str(uin))
    page.click("#devlogin")
    page.wait_for_selector("#chat:not([hidden])", timeout=15000)
    if channel:
        open_channel(page, channel)
    return page


def chat_item(page, channel):
    return page.locator(f'#channels li[data-channel="{channel}"]')


def open_channel(page, channel):
    if page.is_visible("#back"):                           # a phone: back to the list first
        page.click("#back")
    chat_item(page, channel).click(timeout=15000)
    page.wait_for_selector("#compose", state="visible")


def badge(page, channel):
    """The unread badge of a chat in the list ("" when there is none)."""
    found = chat_item(page, channel).locator(".badge").all_text_contents()    # no waiting: the list redraws
    return found[0] if found else ""


def wait_badge(page, channel, want, timeout=10.0):
    deadline = time.monotonic() + timeout
    while badge(page, channel) != want:
        assert time.monotonic() < deadline, f"badge of {channel} is {badge(page, channel)!r}, not {want!r}"
        page.wait_for_timeout(100)


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


def test_a_page_reloaded_after_missing_messages_shows_them_once_in_order(web_mesh, browser, shots):
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
    shots(page, "reloaded")


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
    open_channel(page, "lobby")
    broker = web_mesh.topo.ids("broker")
    channels = sum(web_mesh.admin.status(b)["web"]["http_channels"] for b in broker)
    assert channels >= 1
    web_mesh.client(39, broker=1).send("lobby", "to the long-polling page")
    page.locator("#messages li .text", has_text="to the long-polling page").wait_for(timeout=15000)
    say(page, "sent over HTTP")
    page.locator("#messages li.mine:not(.pending) .text", has_text="sent over HTTP").wait_for(timeout=15000)
    context.close()


def msg_item(page, text):
    return page.locator("#messages li.msg", has=page.locator(".text", has_text=text))


def test_two_users_on_two_brokers_start_a_dm_and_unread_seen_typing_edit_delete_show_everywhere(
        web_mesh, browser, shots):
    """User 41 on two devices (phone on broker 1, desktop on broker 2), user 42 on broker 2."""
    dm = "dm:41:42"
    a1 = open_chat(browser, web_mesh, 0, 41, channel=None)
    a2 = open_chat(browser, web_mesh, 1, 41, channel=None, viewport=DESKTOP)
    b = open_chat(browser, web_mesh, 1, 42, channel=None, viewport=DESKTOP)
    a1.click("#start summary")
    a1.fill("#dmuin", "42")
    shots(a1, "01-new-chat")
    a1.click("#newdm")
    a1.wait_for_selector("#compose", state="visible")
    assert a1.text_content("#title") == "user 42"
    say(a1, "hi 42")
    msg_item(a1, "hi 42").locator(".state", has_text="✓").wait_for(timeout=10000)
    a1.click("#back")                                     # the phone goes back to its list of chats
    # 42 has never heard of this DM: it shows up in the list with one unread message
    chat_item(b, dm).wait_for(timeout=10000)
    wait_badge(b, dm, "1")
    assert chat_item(b, dm).locator(".name").text_content() == "user 41"
    # 41's other device shows it too, as read (my own message), on the right
    chat_item(a2, dm).wait_for(timeout=10000)
    assert badge(a2, dm) == ""
    shots(b, "02-unread-badge")
    # 42 opens it and answers twice: both of 41's devices count 2 unread
    open_channel(b, dm)
    wait_badge(b, dm, "")
    say(b, "hello 41")
    say(b, "how are you")
    wait_badge(a1, dm, "2")
    wait_badge(a2, dm, "2")
    shots(a1, "03-phone-list-unread")
    shots(a2, "03-desktop-unread")
    # the phone opens the DM and reads them: the desktop's badge goes away at once
    open_channel(a1, dm)
    a1.locator("#messages li.msg .text", has_text="how are you").wait_for(timeout=10000)
    wait_badge(a2, dm, "")
    open_channel(a2, dm)
    mine = a2.locator("#messages li.mine .text", has_text="hi 42")
    mine.wait_for(timeout=10000)                          # the history page is on its way
    assert mine.count() == 1, "mine from the other device on the right"
    msg_item(a1, "hi 42").locator(".seen").wait_for(timeout=10000)        # the receipt: 42 read it
    # typing
    a1.fill("#text", "typing something")
    a1.dispatch_event("#text", "input")
    b.locator("#typing", has_text="user 41 is typing").wait_for(timeout=10000)
    shots(b, "04-typing")
    a1.fill("#text", "")
    # edit my message: shown edited everywhere
    msg_item(a1, "hi 42").click()
    msg_item(a1, "hi 42").locator("button.edit").click()
    assert a1.input_value("#text") == "hi 42"
    a1.fill("#text", "hi 42, fixed")
    a1.click("#send")
    for page in (a1, a2, b):
        msg_item(page, "hi 42, fixed").locator(".edited").wait_for(timeout=10000)
    shots(b, "05-edited")
    # delete it: a tombstone everywhere
    msg_item(a2, "hi 42, fixed").click()
    msg_item(a2, "hi 42, fixed").locator("button.delete").click()
    msg_item(a2, "hi 42, fixed").locator("button.delete").click()           # "Delete?" -> sure
    for page in (a1, a2, b):
        page.locator("#messages li.deleted .text", has_text="message deleted").wait_for(timeout=10000)
        assert msg_item(page, "hi 42, fixed").count() == 0
    shots(a1, "06-deleted")
    shots(b, "07-desktop-dm")
    # a reload keeps the whole conversation (history) and the list
    b.reload()
    b.locator("#messages li.msg .text", has_text="how are you").wait_for(timeout=15000)
    assert b.locator("#messages li.deleted").count() == 1
    assert chat_item(b, dm).count() == 1 and chat_item(b, "lobby").count() == 1


def start_group(page, title, members):
    page.click("#start summary")
    page.fill("#grouptitle", title)
    page.fill("#groupmembers", members)
    page.click("#newgroup")
    page.wait_for_selector("#compose", state="visible")


def test_a_group_shows_who_has_seen_a_message(web_mesh, browser, shots):
    a = open_chat(browser, web_mesh, 0, 45, channel=None)
    b = open_chat(browser, web_mesh, 1, 46, channel=None)
    start_group(a, "Weekend trip", "46, 47")
    assert a.text_content("#title") == "Weekend trip"
    say(a, "who is in?")
    b.locator('#channels li[data-kind="group"]').click(timeout=10000)
    b.locator("#messages li.msg .text", has_text="who is in?").wait_for(timeout=10000)
    assert b.locator("#messages li.msg .who").first.text_content() == "user 45"
    msg_item(a, "who is in?").locator(".seen", has_text="Seen by user 46").wait_for(timeout=10000)
    shots(a, "08-group-seen-by")


def test_history_scrolls_back_past_500_messages(web_mesh, browser, shots):
    sender = web_mesh.client(43, broker=0)
    created = sender.request({"t": "create", "kind": "dm", "with": 44, "ctime": time.time_ns() // 1000})
    dm = created["channel"]
    texts_sent = [f"m {i:03d}" for i in range(520)]
    for text in texts_sent:
        sender.send(dm, text)
    page = open_chat(browser, web_mesh, 1, 44, channel=None)
    wait_badge(page, dm, "100+")                       # over 100 unread: the server stops counting
    open_channel(page, dm)
    page.locator("#messages li.msg .text", has_text="m 519").wait_for(timeout=10000)
    wait_badge(page, dm, "")
    assert page.locator("#messages li.msg").count() < 120, "not everything at once"
    deadline = time.monotonic() + 60
    while page.locator("#historytop", has_text="Start of the conversation").count() == 0:
        assert time.monotonic() < deadline, "scrolling up never reached the start"
        page.locator("#messages").evaluate("el => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); }")
        page.wait_for_timeout(150)
    shown = [t for t in texts(page) if t.startswith("m ")]
    assert shown == texts_sent
    page.locator("#messages").evaluate("el => { el.scrollTop = 0; }")
    shots(page, "09-history-start")


def test_a_failed_send_says_why_and_offers_a_retry(web_mesh, browser, shots):
    page = open_chat(browser, web_mesh, 0, 150)            # lobby is for users 1-100
    say(page, "let me in")
    failed = page.locator("#messages li.failed")
    failed.locator(".why", has_text="not a member").wait_for(timeout=10000)
    shots(page, "10-failed-send")
    failed.locator("button.retry").click()
    page.wait_for_timeout(300)
    failed.locator(".why", has_text="not a member").wait_for(timeout=10000)
    assert failed.count() == 1, "a retry replaces the failed message, it does not pile up"


def test_a_group_title_shows_in_every_members_list(web_mesh, browser):
    a = open_chat(browser, web_mesh, 0, 48, channel=None)
    b = open_chat(browser, web_mesh, 1, 49, channel=None)
    start_group(a, "Book club", "49")
    say(a, "first chapter?")
    b.locator('#channels li[data-kind="group"]').wait_for(timeout=10000)
    b.reload()                                             # the list as the server has it
    b.locator("#channels li .name", has_text="Book club").wait_for(timeout=5000)


def png(width, height, rgb):
    """A small solid-colour PNG (the browser must decode it: the preview is a real image)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_file_sent_from_one_page_downloads_in_another_and_an_image_shows_a_preview(web_mesh, browser, shots):
    """Through the relay's own WebSocket: upload in chunks with the sha256, a normal message
    with the ref, the other user's page downloads it (sha256 checked) on another broker."""
    sender = open_chat(browser, web_mesh, 0, 51, viewport=DESKTOP)
    receiver = open_chat(browser, web_mesh, 1, 52, viewport=DESKTOP)
    data = bytes((i * 7 + (i >> 10)) & 0xFF for i in range(700 * 1024))        # 3 chunks
    sender.wait_for_selector("#attach:not([hidden])")
    sender.set_input_files("#file", files=[{"name": "report 7.bin", "mimeType": "application/octet-stream",
                                            "buffer": data}])
    sender.locator("#messages li.mine:not(.pending) a.download", has_text="report 7.bin").wait_for(timeout=15000)
    link = receiver.locator("#messages li.msg a.download", has_text="report 7.bin")
    link.wait_for(timeout=10000)
    with receiver.expect_download(timeout=15000) as got:
        link.click()
    saved = got.value.path()
    assert got.value.suggested_filename == "report 7.bin"
    with open(saved, "rb") as f:
        assert f.read() == data
    picture = png(120, 80, (30, 140, 220))
    sender.set_input_files("#file", files=[{"name": "blue.png", "mimeType": "image/png", "buffer": picture}])
    preview = receiver.locator("#messages li.msg img.preview[alt='blue.png']")
    preview.wait_for(timeout=15000)
    receiver.wait_for_function("() => { const i = document.querySelector(\"img.preview[alt='blue.png']\");"
                               " return i && i.complete && i.naturalWidth === 120; }", timeout=10000)
    assert "file: blue.png" in chat_item(receiver, "lobby").inner_text()
    shots(sender, "file-sent")
    shots(receiver, "file-received")
