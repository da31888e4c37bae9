#!/usr/bin/env python3
"""End-to-end check: headless Chromium driven over chromedriver's WebDriver HTTP API.

Standard library only. Steps:
  1. serve ./site with `python3 -m http.server 0 --bind 127.0.0.1` (port parsed from its output)
  2. start `chromedriver --port=0` (port parsed from "started successfully on port N")
  3. POST /session (headless chromium, fresh --user-data-dir), navigate to the page,
     find <input id=msg>, send keys "text" + U+E007 (Enter) for each line,
     poll the list #log li until it has all lines, read them back, take a screenshot,
     DELETE the session
  4. stop chromedriver and http.server (by PID / own process group); remove the profile
Every HTTP call has a timeout; the whole run is bounded by --deadline (default 60 s).
Usage: python3 test_page.py [--url URL | --path PAGE] [--deadline S] [--screenshot FILE] [--keep]
  --url: drive an existing page instead of serving ./site (it must have #msg and #log).
  --path: page of ./site to load (default index.html; keydown.html; "ws.html?ws=PORT").
Exit 0 and prints "1 passed, 0 failed" on success.
"""
import argparse, base64, json, os, re, shutil, signal, subprocess, sys, tempfile, time
import urllib.error, urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ELEM = "element-6066-11e4-a52e-4f735466cecf"  # W3C web element identifier key
ENTER = "\ue007"                                 # WebDriver key code for Enter
CHROMIUM = "/usr/bin/chromium"                   # Debian wrapper; /usr/lib/chromium/chromium also works
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--window-size=1000,700"]


class Deadline(Exception):
    pass


def on_alarm(signum, frame):
    raise Deadline("overall deadline exceeded")


def start(cmd, pattern, timeout, **kw):
    """Start cmd in its own process group; wait for a line matching pattern; return (proc, match)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True, **kw)
    end = time.monotonic() + timeout
    seen = []
    while time.monotonic() < end:
        line = p.stdout.readline()      # the overall SIGALRM bounds a hung readline
        if not line:
            break
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return p, m
    stop(p)
    raise RuntimeError(f"{cmd[0]} did not report ready: {''.join(seen)!r}")


def stop(p):
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)   # own group: chromedriver + the chromium it spawned
    except ProcessLookupError:
        return
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(5)


def wd(base, method, path, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)["value"]
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{method} {path} -> {e.code}: {e.read().decode(errors='replace')[:500]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url")
    ap.add_argument("--path", default="", help="page under the served ./site, e.g. keydown.html")
    ap.add_argument("--deadline", type=float, default=60)
    ap.add_argument("--screenshot", default=os.path.join(HERE, "screenshot.png"))
    ap.add_argument("--keep", action="store_true", help="keep the profile dir")
    a = ap.parse_args()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(a.deadline))

    lines = ["hello world", "second line é ✓", "third"]
    http = drv = None
    sid = base = None
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    t0 = time.monotonic()
    ok = False
    try:
        url = a.url
        if not url:
            http, m = start([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", os.path.join(HERE, "site")], r"port (\d+)", 10)
            url = f"http://127.0.0.1:{m.group(1)}/{a.path}"
        drv, m = start(["chromedriver", "--port=0"], r"started successfully on port (\d+)", 15)
        base = f"http://127.0.0.1:{m.group(1)}"
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM, "args": FLAGS + [f"--user-data-dir={profile}"]}}}}
        sess = wd(base, "POST", "/session", caps, timeout=40)
        sid = sess["sessionId"]
        print(f"session {sid}: {sess['capabilities']['browserName']} {sess['capabilities']['browserVersion']} "
              f"({time.monotonic() - t0:.2f}s after start)")
        s = f"/session/{sid}"
        wd(base, "POST", s + "/timeouts", {"implicit": 5000, "pageLoad": 15000, "script": 10000})
        wd(base, "POST", s + "/url", {"url": url})
        inp = wd(base, "POST", s + "/element", {"using": "css selector", "value": "#msg"})[ELEM]
        # A WebSocket page may keep the input disabled until the socket is open: wait (bounded),
        # since send-keys on a disabled input fails with "element not interactable".
        end = time.monotonic() + 10
        while not wd(base, "GET", f"{s}/element/{inp}/enabled"):
            if time.monotonic() > end:
                raise RuntimeError("#msg never became enabled")
            time.sleep(0.05)
        for text in lines:
            wd(base, "POST", f"{s}/element/{inp}/value", {"text": text + ENTER})
        # Poll (bounded) until the page shows all lines; for a WebSocket page, replies are async.
        got = None
        end = time.monotonic() + 10
        while time.monotonic() < end:
            got = wd(base, "POST", s + "/execute/sync", {
                "script": "return Array.from(document.querySelectorAll('#log li'), e => e.textContent)",
                "args": []})
            if len(got) >= len(lines):
                break
            time.sleep(0.1)
        # Same thing the plain-WebDriver way: element text of the list.
        ul = wd(base, "POST", s + "/element", {"using": "css selector", "value": "#log"})[ELEM]
        text = wd(base, "GET", f"{s}/element/{ul}/text")
        left = wd(base, "GET", f"{s}/element/{inp}/property/value")
        png = wd(base, "GET", s + "/screenshot")
        with open(a.screenshot, "wb") as f:
            f.write(base64.b64decode(png))
        print("list via execute/sync:", got)
        print("list via element text:", json.dumps(text, ensure_ascii=False))
        print("input value after Enter:", repr(left))
        print("screenshot:", a.screenshot)
        ok = got == lines and text == "\n".join(lines) and left == ""
        print(f"{'OK' if ok else 'FAIL'} in {time.monotonic() - t0:.2f}s")
    except Exception as e:  # includes Deadline
        print("FAIL:", type(e).__name__, e)
    finally:
        signal.alarm(0)
        if sid:
            try:
                wd(base, "DELETE", f"/session/{sid}", timeout=10)  # closes chromium
            except Exception as e:
                print("delete session:", e)
        stop(drv)
        stop(http)
        if not a.keep:
            shutil.rmtree(profile, ignore_errors=True)
    print("1 passed, 0 failed" if ok else "0 passed, 1 failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
