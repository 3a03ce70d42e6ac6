#!/usr/bin/env python3
"""The console in a real headless Chromium (Debian's), driven by Playwright for Python.

Run by tests/console_browser.rs against a real controller over TLS with two nodes:

    browser.py --login URL --lease ID --out DIR      the pages, end to end
    browser.py --check FILE...                       screenshots render (not blank)

It signs in with a login link, then: the overview; a volume created on one page appears on a
second page without a reload; the volume resized; a stale change from the second page refused
with the 409 message; a lease revoked; the volume deleted. No page may log a script error.
Screenshots of the main pages go to --out, each checked to render. Exits non-zero, saying
why, on the first failure.
"""

import argparse
import os
import struct
import sys
import zlib

CHROMIUM_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]


def pixels(path):
    """The RGB(A) pixels of an 8-bit PNG (what Chromium writes), unfiltered."""
    data = open(path, "rb").read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            if depth != 8 or color not in (2, 6):
                raise ValueError(f"{path}: depth {depth} color type {color} not read here")
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw, stride = zlib.decompress(idat), width * bpp
    prev, out, i = bytearray(stride), [], 0
    for _ in range(height):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.append(bytes(line))
        prev = line
    return width, height, bpp, out


def check_rendered(path):
    """A screenshot that shows a page: many colours, none of which covers nearly all of it."""
    w, h, bpp, rows = pixels(path)
    counts = {}
    for row in rows[::4]:
        for x in range(0, len(row), bpp * 4):
            px = row[x:x + 3]
            counts[px] = counts.get(px, 0) + 1
    total = sum(counts.values())
    top = max(counts.values())
    if w < 400 or h < 300 or len(counts) < 16 or top > 0.97 * total:
        raise AssertionError(
            f"{path}: looks blank ({w}x{h}, {len(counts)} colours, the commonest {top / total:.0%})")
    return f"{os.path.basename(path)}: {w}x{h}, {len(counts)} colours"


def run(login, lease, out):
    from playwright.sync_api import expect, sync_playwright

    os.makedirs(out, exist_ok=True)
    base = login.split("/login")[0]
    errors = []
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("DASMESH_CHROMIUM", "/usr/bin/chromium"),
            args=CHROMIUM_FLAGS)
        # The controller's certificate is of the cluster's own CA, which this browser does not
        # trust; the TLS is still checked by the Rust tests.
        ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 860})
        expect.set_options(timeout=15_000)

        def expected(text):
            # The browser logs every answer that is not 2xx: the stale change's 409 and the
            # signed-out page's 401s are the ones this test causes.
            return "status of 409 (Conflict)" in text or "status of 401 (Unauthorized)" in text

        def page():
            pg = ctx.new_page()
            pg.on("pageerror", lambda e: errors.append(f"script error: {e}"))
            pg.on("console", lambda m: m.type == "error" and not expected(m.text)
                  and errors.append(f"console: {m.text}"))
            pg.on("dialog", lambda d: d.accept())
            return pg

        def shot(pg, name):
            path = os.path.join(out, f"{name}.png")
            pg.wait_for_timeout(300)
            pg.screenshot(path=path, full_page=False)
            shots.append(path)

        def step(text):
            print(f"browser: {text}", flush=True)

        a = page()
        step("sign in with the login link")
        a.goto(login)
        expect(a).to_have_url(base + "/")
        expect(a.locator("#live")).to_have_text("live")
        expect(a.locator("#me")).to_contain_text("signed in as operator")
        step("the overview: two nodes up, the pool, the alerts")
        expect(a.locator("#card-nodes .big")).to_have_text("2 / 0")
        expect(a.locator("#alerts")).to_be_visible()
        shot(a, "overview")

        b = page()
        b.goto(base + "/#/volumes")
        expect(b.locator("#live")).to_have_text("live")
        expect(b.locator("tr[data-volume='web-2']")).to_have_count(0)

        step("create a volume on the first page")
        a.goto(base + "/#/volumes")
        form = a.locator("#create-form")
        form.locator("input[name=name]").fill("web-2")
        form.locator("input[name=size]").fill("24M")
        form.locator("input[name=layout]").fill("mirror:2")
        form.locator("input[name=price_per_gib_hour]").fill("2")
        form.locator("button[type=submit]").click()
        expect(a.locator("#banner")).to_contain_text("Volume web-2 created")
        step("it appears on the second page without a reload")
        b.evaluate("window.__same_document = 1")
        expect(b.locator("tr[data-volume='web-2']")).to_be_visible()
        expect(b.locator("tr[data-volume='web-2']")).to_contain_text("24.0 MiB")
        if b.evaluate("window.__same_document") != 1:
            raise AssertionError("the second page was reloaded")
        shot(a, "volumes")

        step("both pages open the volume; the first resizes it")
        b.locator("tr[data-volume='web-2'] a").click()
        a.goto(base + "/#/volume/web-2")
        expect(b.locator("#resize-form")).to_be_visible()
        expect(a.locator("#layout .ext")).to_have_count(2)
        a.locator("#resize-form input[name=size]").fill("48M")
        a.locator("#resize-form button").click()
        expect(a.locator("#banner")).to_contain_text("resized to 48M")
        expect(a.locator("#volume-facts")).to_contain_text("48.0 MiB")
        step("the second page sees it live, and its stale resize is refused with 409")
        expect(b.locator("#volume-facts")).to_contain_text("48.0 MiB")
        expect(b.locator("#changed")).to_be_visible()
        b.locator("#resize-form input[name=size]").fill("96M")
        b.locator("#resize-form button").click()
        expect(b.locator("#banner")).to_contain_text("Refused (409)")
        expect(b.locator("#banner")).to_contain_text("has changed since it was read")
        expect(b.locator("#banner")).to_contain_text("The volume now: web-2, 48.0 MiB")
        expect(b.locator("#volume-facts")).to_contain_text("48.0 MiB")
        shot(b, "stale-change")
        shot(a, "volume-layout")

        step("revoke a lease")
        a.goto(base + "/#/leases")
        row = a.locator(f"tr[data-lease-row='{lease}']")
        expect(row).to_be_visible()
        shot(a, "leases")
        row.locator("button").click()
        expect(a.locator("#banner")).to_contain_text(f"Lease {lease} revoked")
        expect(row).to_have_count(0)

        step("the other pages")
        for name in ["nodes", "usage", "controllers"]:
            a.goto(base + f"/#/{name}")
            expect(a.locator("#title h1")).to_be_visible()
            shot(a, name)
        a.goto(base + "/#/usage")
        expect(a.locator("#total-charge")).to_be_visible()

        step("delete the volume, from the second page's form, fresh after its 409")
        b.locator("#delete-form button").click()
        expect(b.locator("#banner")).to_contain_text("Volume web-2 deleted")
        expect(b).to_have_url(base + "/#/volumes")
        expect(a.locator("#banner")).not_to_contain_text("Refused")

        step("sign out: the page then says, in words, why it shows nothing")
        a.locator("#signout").click()
        expect(a.locator("#banner")).to_contain_text("Signed out")
        a.reload()
        expect(a.locator("#banner")).to_contain_text("Refused (401)")
        expect(a.locator("#banner")).to_contain_text("not signed in: run `dasmesh console`")
        shot(a, "signed-out")
        browser.close()
    if errors:
        raise AssertionError("the pages logged errors:\n" + "\n".join(errors))
    for s in shots:
        print("browser: rendered", check_rendered(s), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--login")
    ap.add_argument("--lease")
    ap.add_argument("--out")
    ap.add_argument("--check", nargs="*")
    a = ap.parse_args()
    try:
        if a.check is not None:
            if not a.check:
                raise AssertionError("no screenshots to check")
            for f in a.check:
                print("check:", check_rendered(f), flush=True)
        else:
            run(a.login, a.lease, a.out)
    except Exception as e:  # the test prints what failed, in words
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
