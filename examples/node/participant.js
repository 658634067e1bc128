#!/usr/bin/env node
// An example sagalog participant in plain Node.js (18 or later; no packages).
//
// It plays the inventory service or the payment service of an order saga:
//
//   node participant.js --service inventory --server 127.0.0.1:8080
//   node participant.js --service payment --server 127.0.0.1:8080 --member 1 --members 2
//
// It reads its own topic on the HTTP outbox (a long poll), handles each command once,
// replies with the command's step and attempt, and stores its position in a file after
// the commands before it were answered. The payment service's refund uses the charge id
// that its own charge returned, which sagalog hands back in the compensate command's
// `result`; after a timeout (`after_timeout`, `result` null) it looks the charge up by
// saga id and treats "nothing to undo" as success.
//
// To play the scenarios of the repository's test, the payment service never answers a
// saga whose payload says {"pay": "hang"}: the charge times out and is compensated.

"use strict";

const fs = require("node:fs");

const TOPICS = { inventory: "inventory.commands", payment: "payment.commands" };

function options(argv) {
  const out = { server: "127.0.0.1:8080", member: 0, members: 1, fromStart: false };
  for (let i = 0; i < argv.length; i++) {
    const [flag, value] = [argv[i], argv[i + 1]];
    switch (flag) {
      case "--service": out.service = value; i++; break;
      case "--server": out.server = value; i++; break;
      case "--member": out.member = Number(value); i++; break;
      case "--members": out.members = Number(value); i++; break;
      case "--position-file": out.positionFile = value; i++; break;
      case "--from-start": out.fromStart = true; break;
      default: throw new Error(`unknown option ${flag}; known: --service, --server, ` +
        "--member, --members, --position-file, --from-start");
    }
  }
  if (!TOPICS[out.service]) {
    throw new Error(`--service must be one of ${Object.keys(TOPICS).join(", ")}`);
  }
  return out;
}

// The few calls a participant makes.
class Server {
  constructor(address) { this.base = `http://${address}`; }

  async call(method, path, body) {
    const answer = await fetch(this.base + path, {
      method,
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(35000),
    });
    const text = await answer.text();
    return [answer.status, text ? JSON.parse(text) : null];
  }

  // One page of `topic`'s commands after `after` (an offset, "latest", or null for the
  // log's start), as member share[0] of share[1].
  outbox(topic, after, waitMs, share) {
    const query = new URLSearchParams({ topic, wait_ms: String(waitMs), limit: "100" });
    if (after !== null) query.set("after", String(after));
    if (share) {
      query.set("members", String(share[1]));
      query.set("member", String(share[0]));
    }
    return this.call("GET", `/api/v1/outbox?${query}`);
  }

  reply(sagaId, reply) {
    return this.call("POST", `/api/v1/sagas/${encodeURIComponent(sagaId)}/events`, reply);
  }
}

// Reserves stock; releases it on compensation.
class Inventory {
  constructor() { this.reserved = new Map(); }

  execute(command) {
    const reservation = `res-${command.saga_id}`;
    this.reserved.set(command.saga_id, reservation);
    return ["succeeded", { reservation_id: reservation }];
  }

  compensate(command) {
    // The reservation id comes back in `result`.
    const reservation = command.result ? command.result.reservation_id : null;
    this.reserved.delete(command.saga_id);
    return ["compensated", { released: reservation }];
  }
}

// Charges the order; refunds the charge on compensation.
class Payment {
  constructor() { this.charges = new Map(); } // what a real service keeps in its store

  execute(command) {
    if (command.payload.pay === "hang") return null; // never answers: it times out
    const charge = `ch-${command.saga_id}`;
    this.charges.set(command.saga_id, charge);
    return ["succeeded", { charge_id: charge, amount_cents: command.payload.amount_cents || 0 }];
  }

  compensate(command) {
    // The refund uses the charge's own id. After a timeout (result null) the charge may
    // or may not have gone through: look it up by saga id; none is nothing to undo.
    const charge = command.result ? command.result.charge_id
      : (this.charges.get(command.saga_id) || null);
    this.charges.delete(command.saga_id);
    return ["compensated", { refunded: charge, after_timeout: command.after_timeout }];
  }
}

function loadPosition(path) {
  try {
    // An offset, or the cursor a server with several partitions sends.
    const text = fs.readFileSync(path, "utf8").trim();
    return /^[0-9]+$/.test(text) ? Number(text) : text;
  } catch (e) {
    if (e.code === "ENOENT") return null;
    throw e;
  }
}

function storePosition(path, after) {
  const fresh = `${path}.new`;
  const fd = fs.openSync(fresh, "w");
  fs.writeSync(fd, String(after));
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fs.renameSync(fresh, path);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function sendReply(server, command, reply) {
  for (;;) {
    let status, body;
    try {
      [status, body] = await server.reply(command.saga_id, reply);
    } catch (e) {
      status = 503; // the server is away: try again
    }
    if (status === 503) { await sleep(200); continue; }
    if (status === 409) return; // the saga moved on (a stale attempt): nothing to do
    if (status !== 200 && status !== 202) {
      throw new Error(`reply answered ${status}: ${JSON.stringify(body)}`);
    }
    return;
  }
}

async function main() {
  const opts = options(process.argv.slice(2));
  const server = new Server(opts.server);
  const service = opts.service === "inventory" ? new Inventory() : new Payment();
  const topic = TOPICS[opts.service];
  const share = opts.members > 1 ? [opts.member, opts.members] : null;
  const position = opts.positionFile || `${opts.service}-${opts.member}.position`;
  let after = loadPosition(position);
  if (after === null && !opts.fromStart) after = "latest";
  const seen = new Set(); // recent event ids, to drop duplicate deliveries
  const order = [];
  let stopping = false;
  process.on("SIGTERM", () => { stopping = true; });
  process.on("SIGINT", () => { stopping = true; });
  let backoff = 100;
  console.log(`${opts.service}: member ${opts.member} of ${opts.members} on ${topic}`);

  while (!stopping) {
    let status, page;
    try {
      [status, page] = await server.outbox(topic, after, 1000, share);
    } catch (e) {
      status = 503;
    }
    if (status === 503) {
      await sleep(backoff);
      backoff = Math.min(backoff * 2, 5000);
      continue;
    }
    if (status !== 200) throw new Error(`outbox answered ${status}: ${JSON.stringify(page)}`);
    backoff = 100;
    for (const command of page.items) {
      if (seen.has(command.event_id)) continue;
      seen.add(command.event_id);
      order.push(command.event_id);
      if (order.length > 100000) seen.delete(order.shift());
      const answer = command.action === "execute"
        ? service.execute(command) : service.compensate(command);
      if (answer === null) continue;
      const [outcome, data] = answer;
      await sendReply(server, command, {
        event_id: `${opts.service}:${command.event_id}`,
        step: command.step,
        outcome,
        attempt: command.attempt,
        data,
      });
    }
    if (page.next_after !== null && page.next_after !== after) {
      after = page.next_after;
      storePosition(position, after);
    } else if (page.next_after === null && after === "latest") {
      after = null; // an empty log: what comes next is at its start
    }
  }
  console.log(`${opts.service}: stopped at ${after}`);
}

main().catch((e) => {
  console.error(e.message);
  process.exit(1);
});
