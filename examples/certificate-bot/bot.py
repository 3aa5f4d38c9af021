#!/usr/bin/env python3
"""A certificate-application bot for Dak, with the Python standard library only.

A citizen applies for a birth, caste or income certificate in a chat:

  citizen: "certificate"   -> buttons: Birth / Caste / Income
  taps one                 -> "Your full name?"            (free text)
  writes their name        -> "Your date of birth?"        (DD-MM-YYYY)
  writes the date          -> a list of districts
  picks one                -> a summary with Submit / Cancel buttons
  taps Submit              -> an application number
  ... later                -> the template "certificate_ready", which the
                              bot may send even when the citizen has not
                              written for more than 24 hours

Run it beside `dak bot serve --templates examples/certificate-bot/templates.toml`
(docs/BOTS.md has the recipe):

  DAK_BOT_API=http://127.0.0.1:8088 \\
  DAK_BOT_TOKEN_FILE=bot-profile/api.token \\
  DAK_WEBHOOK_SECRET_FILE=bot-profile/webhook.secret \\
  python3 examples/certificate-bot/bot.py --port 8090 --ready-after 3600

It prints the URL it listens on as its first line.
"""

import argparse
import datetime
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

REPLAY_WINDOW_SECS = 300
KINDS = {"birth": "Birth", "caste": "Caste", "income": "Income"}
DISTRICTS = ["Kolkata", "Howrah", "Hooghly", "Nadia", "Darjeeling",
             "Purulia", "Bankura", "Birbhum", "Malda", "Murshidabad"]


class Bot:
    def __init__(self, api, token, secret, ready_after):
        self.api = api.rstrip("/")
        self.token = token
        self.secret = secret
        self.ready_after = ready_after
        self.seen = set()
        self.applicants = {}  # phone -> the form so far
        self.issued = 0
        self.lock = threading.Lock()

    def verify(self, headers, body):
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
                return
            self.seen.add(event["id"])
            who = event.get("from")
            if event["type"] == "message":
                self.on_text(who, event["message"]["text"].strip())
            elif event["type"] == "choice":
                self.on_choice(who, event["message"]["choice"]["id"])

    def on_text(self, who, text):
        form = self.applicants.get(who)
        if text.lower() in ("certificate", "apply", "প্রমাণপত্র", "प्रमाणपत्र"):
            self.applicants[who] = {"step": "kind"}
            self.send(who, "Which certificate do you need?", {
                "header": "Certificates", "buttons": [{"id": k, "title": v} for k, v in KINDS.items()]})
        elif form and form["step"] == "name":
            if not 2 <= len(text) <= 80:
                return self.send(who, "Please write your full name as on your documents.")
            form["name"], form["step"] = text, "born"
            self.send(who, "Your date of birth? Write it as DD-MM-YYYY, e.g. 07-03-1994.")
        elif form and form["step"] == "born":
            try:
                born = datetime.datetime.strptime(text, "%d-%m-%Y").date()
            except ValueError:
                return self.send(who, "That is not a date as DD-MM-YYYY; please write it again, e.g. 07-03-1994.")
            if born > datetime.date.today():
                return self.send(who, "That date is in the future; please write it again.")
            form["born"], form["step"] = text, "district"
            self.send(who, "In which district do you live?", {
                "list": {"button": "Districts", "sections": [{"title": "West Bengal", "rows": [
                    {"id": "district:" + d, "title": d} for d in DISTRICTS]}]}})
        elif text.upper() not in ("STOP", "START"):
            self.send(who, 'Write "certificate" to apply for a certificate.')

    def on_choice(self, who, choice):
        form = self.applicants.get(who)
        if not form:
            return
        if form["step"] == "kind" and choice in KINDS:
            form["kind"], form["step"] = KINDS[choice], "name"
            self.send(who, f"{KINDS[choice]} certificate. Your full name?")
        elif form["step"] == "district" and choice.startswith("district:"):
            form["district"], form["step"] = choice.split(":", 1)[1], "confirm"
            self.send(who, f"{form['kind']} certificate for {form['name']}, born {form['born']}, "
                           f"{form['district']} district. Submit?",
                      {"buttons": [{"id": "submit", "title": "Submit"}, {"id": "cancel", "title": "Cancel"}]})
        elif form["step"] == "confirm" and choice == "submit":
            self.issued += 1
            number = f"WB-{datetime.date.today().year}-{self.issued:06d}"
            self.send(who, f"Submitted. Your application number is {number}. We will write when the certificate is ready.")
            del self.applicants[who]
            # A real service would issue it when an officer approves; here
            # it is ready after a while, and announced with a template.
            threading.Timer(self.ready_after, self.ready, args=(who, form, number)).start()
        elif choice == "cancel":
            del self.applicants[who]
            self.send(who, 'Cancelled. Write "certificate" to start again.')

    def ready(self, who, form, number):
        self.post({"to": who, "template": {"name": "certificate_ready",
                                           "params": [form["kind"].lower(), number, form["district"]]}})

    def send(self, to, text, interactive=None):
        message = {"to": to, "text": text}
        if interactive:
            message["interactive"] = interactive
        return self.post(message)

    def post(self, message):
        request = urllib.request.Request(
            self.api + "/v1/messages", data=json.dumps(message).encode(),
            headers={"Authorization": "Bearer " + self.token, "Content-Type": "application/json"},
            method="POST")
        for attempt in range(5):
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return json.load(answer)
            except urllib.error.HTTPError as e:
                if e.code != 503:
                    print(f"send refused: {e.code} {e.read().decode()}", file=sys.stderr)
                    return None
            except urllib.error.URLError as e:
                print(f"the bot is not reachable: {e}", file=sys.stderr)
            time.sleep(2 ** attempt)
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090, help="the webhook's port (0: any free one)")
    parser.add_argument("--ready-after", type=float, default=3600, help="seconds until a certificate is ready")
    args = parser.parse_args()
    read = lambda name: open(os.environ[name]).read().strip()
    bot = Bot(os.environ.get("DAK_BOT_API", "http://127.0.0.1:8088"), read("DAK_BOT_TOKEN_FILE"),
              read("DAK_WEBHOOK_SECRET_FILE").encode(), args.ready_after)

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
            self.send_response(200)
            self.end_headers()
            threading.Thread(target=bot.handle, args=(json.loads(body),), daemon=True).start()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Hook)
    print(f"http://127.0.0.1:{server.server_address[1]}/hook", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
