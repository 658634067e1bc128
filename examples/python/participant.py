#!/usr/bin/env python3
"""An example sagalog participant in plain Python (standard library only).

It plays the inventory service or the payment service of an order saga:

    python3 participant.py --service inventory --server 127.0.0.1:8080
    python3 participant.py --service payment --server 127.0.0.1:8080 --member 0 --members 2

It reads its own topic on the HTTP outbox (a long poll), handles each command once,
replies with the command's step and attempt, and stores its position in a file after
the commands before it were answered. The payment service's refund uses the charge id
that its own charge returned, which sagalog hands back in the compensate command's
`result`; after a timeout (`after_timeout`, `result` null) it looks the charge up by
saga id and treats "nothing to undo" as success.

To play the scenarios of the repository's test, the payment service never answers a
saga whose payload says {"pay": "hang"}: the charge times out and is compensated.
"""

import argparse
import collections
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

TOPICS = {"inventory": "inventory.commands", "payment": "payment.commands"}


class Server:
    """The few calls a participant makes, with retries while the server is busy."""

    def __init__(self, address):
        self.base = "http://" + address

    def call(self, method, path, body=None, timeout=35):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as refused:
            return refused.code, json.loads(refused.read() or b"null")

    def outbox(self, topic, after, wait_ms, share):
        """One page of `topic`'s commands after `after` (an offset, "latest", or None
        for the log's start), as member share[0] of share[1]."""
        query = [("topic", topic), ("wait_ms", str(wait_ms)), ("limit", "100")]
        if after is not None:
            query.append(("after", str(after)))
        if share:
            query += [("members", str(share[1])), ("member", str(share[0]))]
        return self.call("GET", "/api/v1/outbox?" + urllib.parse.urlencode(query))

    def reply(self, saga_id, reply):
        path = "/api/v1/sagas/%s/events" % urllib.parse.quote(saga_id, safe="")
        return self.call("POST", path, reply)


class Inventory:
    """Reserves stock; releases it on compensation."""

    def __init__(self):
        self.reserved = {}

    def execute(self, command):
        reservation = "res-" + command["saga_id"]
        self.reserved[command["saga_id"]] = reservation
        return "succeeded", {"reservation_id": reservation}, None

    def compensate(self, command):
        # The reservation id comes back in `result`.
        reservation = (command.get("result") or {}).get("reservation_id")
        self.reserved.pop(command["saga_id"], None)
        return "compensated", {"released": reservation}, None


class Payment:
    """Charges the order; refunds the charge on compensation."""

    def __init__(self):
        self.charges = {}  # saga id -> charge id: what a real service keeps in its store

    def execute(self, command):
        if command["payload"].get("pay") == "hang":
            return None  # never answers: the charge times out
        charge = "ch-" + command["saga_id"]
        self.charges[command["saga_id"]] = charge
        amount = command["payload"].get("amount_cents", 0)
        return "succeeded", {"charge_id": charge, "amount_cents": amount}, None

    def compensate(self, command):
        result = command.get("result")
        if result is not None:
            charge = result["charge_id"]  # the refund uses the charge's own id
        else:
            # The charge timed out (after_timeout): it may or may not have gone
            # through. Look it up by saga id; nothing found is nothing to undo.
            charge = self.charges.get(command["saga_id"])
        self.charges.pop(command["saga_id"], None)
        return "compensated", {"refunded": charge, "after_timeout": command["after_timeout"]}, None


def load_position(path):
    try:
        with open(path) as f:
            text = f.read().strip()
            # An offset, or the cursor a server with several partitions sends.
            return int(text) if text.isdigit() else text
    except FileNotFoundError:
        return None


def store_position(path, after):
    new = path + ".new"
    with open(new, "w") as f:
        f.write(str(after))
        f.flush()
        os.fsync(f.fileno())
    os.replace(new, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", choices=sorted(TOPICS), required=True)
    parser.add_argument("--server", default="127.0.0.1:8080")
    parser.add_argument("--member", type=int, default=0)
    parser.add_argument("--members", type=int, default=1)
    parser.add_argument("--position-file", help="where to keep the outbox position")
    parser.add_argument("--from-start", action="store_true",
                        help="with no stored position, read the whole log (default: from now)")
    args = parser.parse_args()

    server = Server(args.server)
    service = Inventory() if args.service == "inventory" else Payment()
    topic = TOPICS[args.service]
    share = (args.member, args.members) if args.members > 1 else None
    position = args.position_file or "%s-%d.position" % (args.service, args.member)
    after = load_position(position)
    if after is None and not args.from_start:
        after = "latest"
    seen = collections.OrderedDict()  # recent event ids, to drop duplicate deliveries
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    backoff = 0.1
    print("%s: member %d of %d on %s" % (args.service, args.member, args.members, topic), flush=True)

    while not stopping:
        try:
            status, page = server.outbox(topic, after, 1000, share)
        except OSError as e:  # the server is away: try again
            print("%s: outbox: %s" % (args.service, e), file=sys.stderr, flush=True)
            time.sleep(backoff)
            backoff = min(backoff * 2, 5)
            continue
        if status == 503:
            time.sleep(backoff)
            backoff = min(backoff * 2, 5)
            continue
        if status != 200:
            sys.exit("%s: outbox answered %d: %s" % (args.service, status, page))
        backoff = 0.1
        for command in page["items"]:
            if command["event_id"] in seen:
                continue
            seen[command["event_id"]] = True
            if len(seen) > 100000:
                seen.popitem(last=False)
            handle = service.execute if command["action"] == "execute" else service.compensate
            answer = handle(command)
            if answer is None:
                continue
            outcome, data, reason = answer
            reply = {"event_id": "%s:%s" % (args.service, command["event_id"]),
                     "step": command["step"], "outcome": outcome,
                     "attempt": command["attempt"]}
            if data is not None:
                reply["data"] = data
            if reason:
                reply["reason"] = reason
            while True:
                try:
                    status, body = server.reply(command["saga_id"], reply)
                except OSError:
                    status, body = 503, None
                if status != 503:
                    break
                time.sleep(0.2)
            if status == 409:  # the saga moved on (a stale attempt): nothing to do
                continue
            if status not in (200, 202):
                sys.exit("%s: reply answered %d: %s" % (args.service, status, body))
        if page["next_after"] is not None and page["next_after"] != after:
            after = page["next_after"]
            store_position(position, after)
        elif page["next_after"] is None and after == "latest":
            after = None  # an empty log: what comes next is at its start
    print("%s: stopped at %s" % (args.service, after), flush=True)


if __name__ == "__main__":
    main()
