#!/usr/bin/env python3
"""Dak Rail: a train-ticket bot for Dak, with the Python standard library only.

The bot's Dak device is `dak bot serve`; this program is the service behind
it. It receives the bot's webhook (every event signed), keeps a small
conversation per rider, and answers through the bot's HTTP API:

  rider: "ticket"          -> a list of lines
  rider picks a line       -> a list of that line's stations (from)
  rider picks a station    -> a list of stations (to)
  rider picks a station    -> the fare, with Buy / Cancel buttons
  rider taps Buy           -> the ticket: a code to show the checker

Run it beside `dak bot serve` (docs/BOTS.md has the whole recipe):

  DAK_BOT_API=http://127.0.0.1:8088 \\
  DAK_BOT_TOKEN_FILE=bot-profile/api.token \\
  DAK_WEBHOOK_SECRET_FILE=bot-profile/webhook.secret \\
  python3 examples/train-ticket-bot/bot.py --port 8089

and start the bot with --webhook http://127.0.0.1:8089/hook. It prints the
URL it listens on as its first line.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# A request signed longer ago than this is refused (a replay).
REPLAY_WINDOW_SECS = 300

# The lines and their stations, in order; a fare is counted in zones.
LINES = {
    "western": ("Western line", ["Churchgate", "Marine Lines", "Dadar", "Bandra", "Andheri", "Borivali"]),
    "central": ("Central line", ["CSMT", "Byculla", "Dadar", "Kurla", "Ghatkopar", "Thane"]),
    "harbour": ("Harbour line", ["CSMT", "Wadala Road", "Kurla", "Chembur", "Vashi", "Panvel"]),
}
# Second-class single fares in rupees by stations travelled (one or two
# stations: the first band).
FARES = [(2, 5), (4, 10), (6, 15)]


def fare(line, a, b):
    stations = LINES[line][1]
    hops = abs(stations.index(a) - stations.index(b))
    for upto, rupees in FARES:
        if hops <= upto:
            return rupees
    return FARES[-1][1]


def ticket_code(rider, line, a, b, at):
    digest = hashlib.sha256(f"{rider}|{line}|{a}|{b}|{at}".encode()).hexdigest()
    return "DR-" + digest[:8].upper()


class Bot:
    def __init__(self, api, token, secret):
        self.api = api.rstrip("/")
        self.token = token
        self.secret = secret
        self.seen = set()  # event ids handled (a real service keeps them in its database)
        self.riders = {}  # phone -> what they chose so far
        self.lock = threading.Lock()

    # ---- the webhook ----

    def verify(self, headers, body):
        """The signature: HMAC-SHA256 of "<timestamp>.<body>" under the secret."""
        try:
            timestamp = int(headers.get("Dak-Timestamp", ""))
        except ValueError:
            return False
        if abs(time.time() - timestamp) > REPLAY_WINDOW_SECS:
            return False
        expected = "v1=" + hmac.new(self.secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, headers.get("Dak-Signature", ""))

    def handle(self, event):
        with self.lock:
            if event["id"] in self.seen:
                return  # delivered again after a lost answer: done already
            self.seen.add(event["id"])
            kind = event["type"]
            if kind == "message":
                self.on_text(event["from"], event["message"]["text"])
            elif kind == "choice":
                self.on_choice(event["from"], event["message"]["choice"]["id"])

    # ---- the conversation ----

    def on_text(self, rider, text):
        if text.strip().lower() in ("ticket", "hi", "hello", "टिकट", "টিকিট"):
            self.riders[rider] = {}
            self.send(rider, "Which line do you travel on?", {
                "header": "Dak Rail",
                "list": {"button": "Lines", "sections": [{"rows": [
                    {"id": "line:" + key, "title": name} for key, (name, _) in LINES.items()
                ]}]},
            })
        elif text.strip().upper() not in ("STOP", "START"):
            self.send(rider, 'Write "ticket" to buy a ticket.')

    def on_choice(self, rider, choice):
        state = self.riders.setdefault(rider, {})
        kind, _, value = choice.partition(":")
        if kind == "line" and value in LINES:
            state.clear()
            state["line"] = value
            self.stations(rider, value, "from", "From which station?")
        elif kind == "from" and "line" in state:
            state["from"] = value
            self.stations(rider, state["line"], "to", f"From {value}. To which station?", skip=value)
        elif kind == "to" and "from" in state:
            state["to"] = value
            rupees = fare(state["line"], state["from"], value)
            state["fare"] = rupees
            self.send(rider, f"{state['from']} → {value}, second class: ₹{rupees}. Buy?", {
                "buttons": [{"id": "buy", "title": "Buy"}, {"id": "cancel", "title": "Cancel"}],
                "footer": "Valid for one hour from purchase",
            })
        elif choice == "buy" and "to" in state:
            code = ticket_code(rider, state["line"], state["from"], state["to"], int(time.time()))
            self.send(rider, f"Ticket {code}: {state['from']} → {state['to']}, second class, ₹{state['fare']}. "
                             "Show this message to the ticket checker.")
            self.riders.pop(rider, None)
        elif choice == "cancel":
            self.riders.pop(rider, None)
            self.send(rider, 'Cancelled. Write "ticket" to start again.')

    def stations(self, rider, line, step, text, skip=None):
        name, stations = LINES[line]
        rows = [{"id": f"{step}:{s}", "title": s} for s in stations if s != skip]
        self.send(rider, text, {"list": {"button": "Stations", "sections": [{"title": name, "rows": rows}]}})

    # ---- the bot's API ----

    def send(self, to, text, interactive=None):
        message = {"to": to, "text": text}
        if interactive:
            message["interactive"] = interactive
        request = urllib.request.Request(
            self.api + "/v1/messages",
            data=json.dumps(message).encode(),
            headers={"Authorization": "Bearer " + self.token, "Content-Type": "application/json"},
            method="POST",
        )
        for attempt in range(5):
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return json.load(answer)
            except urllib.error.HTTPError as e:
                if e.code != 503:  # refused for good: say why, do not retry
                    print(f"send refused: {e.code} {e.read().decode()}", file=sys.stderr)
                    return None
            except urllib.error.URLError as e:
                print(f"the bot is not reachable: {e}", file=sys.stderr)
            time.sleep(2 ** attempt)
        return None


def serve(bot, port):
    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            if self.path != "/hook" or length > 1 << 20:
                self.send_response(404)
                self.end_headers()
                return
            body = self.rfile.read(length)
            if not bot.verify(self.headers, body):
                self.send_response(401)
                self.end_headers()
                return
            # Answer at once; the work happens beside (the bot retries
            # what is not answered within its timeout).
            self.send_response(200)
            self.end_headers()
            threading.Thread(target=bot.handle, args=(json.loads(body),), daemon=True).start()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Hook)
    print(f"http://127.0.0.1:{server.server_address[1]}/hook", flush=True)
    server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8089, help="the webhook's port (0: any free one)")
    args = parser.parse_args()
    read = lambda name: open(os.environ[name]).read().strip()
    bot = Bot(os.environ.get("DAK_BOT_API", "http://127.0.0.1:8088"),
              read("DAK_BOT_TOKEN_FILE"), read("DAK_WEBHOOK_SECRET_FILE").encode())
    serve(bot, args.port)


if __name__ == "__main__":
    main()
