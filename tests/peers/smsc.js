// An SMSC on the npm `smpp` package (0.5.1): a peer we did not write, for sms-router's tests.
//
// Usage: node smsc.js [smpp_port] [http_port]   (0 = any free port)
// Prints {"smpp_port": N, "http_port": M} once listening. Control over HTTP:
//   GET  /submits  every submit_sm as the package decoded it, plus the raw PDU hex
//   GET  /stats    binds, submits, max_outstanding, receipts_sent/acked, inbound_sent/acked
//   POST /config   {"response_delay_ms": 0, "receipts": true, "stat": "DELIVRD"}
//   POST /inbound  {"from", "to", "parts": [hex of short_message incl. UDH], "udh": true,
//                   "data_coding": 0}  -> one deliver_sm per part, in the given order
//
// Interop notes on smpp 0.5.1: it decodes short_message into {udh: [IE buffers], message:
// string} and re-encodes strings on send, so raw bytes are kept by wrapping
// PDU.fromStream (below), and outgoing bodies are given as Buffers (sent as they are).
'use strict';

const http = require('http');
const smpp = require('smpp');
const { PDU } = require('smpp/lib/pdu');

// Keep each received PDU's raw bytes: the package only exposes decoded fields.
PDU.fromStream = function (stream, commandLength) {
  const body = stream.read(commandLength - 4);
  if (!body) return false;
  const head = Buffer.alloc(4);
  head.writeUInt32BE(commandLength, 0);
  const raw = Buffer.concat([head, body]);
  const pdu = new PDU(raw);
  pdu.raw = raw;
  return pdu;
};

const config = { response_delay_ms: 0, receipts: true, stat: 'DELIVRD' };
const stats = { binds: 0, bind_rejected: 0, submits: 0, max_outstanding: 0,
  receipts_sent: 0, receipts_acked: 0, inbound_sent: 0, inbound_acked: 0 };
const submits = [];
const sessions = new Set();
let nextId = 0x1000;

function stamp() {
  const d = new Date();
  const two = (n) => String(n).padStart(2, '0');
  return two(d.getUTCFullYear() % 100) + two(d.getUTCMonth() + 1) + two(d.getUTCDate())
    + two(d.getUTCHours()) + two(d.getUTCMinutes());
}

function receipt(session, id, pdu) {
  const text = `id:${id} sub:001 dlvrd:001 submit date:${stamp()} done date:${stamp()} `
    + `stat:${config.stat} err:000 text:`;
  stats.receipts_sent += 1;
  session.deliver_sm({
    source_addr: pdu.destination_addr, source_addr_ton: pdu.dest_addr_ton,
    source_addr_npi: pdu.dest_addr_npi, destination_addr: pdu.source_addr,
    dest_addr_ton: pdu.source_addr_ton, dest_addr_npi: pdu.source_addr_npi,
    esm_class: 0x04, data_coding: 0, short_message: Buffer.from(text, 'latin1'),
    receipted_message_id: id, message_state: config.stat === 'DELIVRD' ? 2 : 5,
  }, (resp) => { if (resp.command_status === 0) stats.receipts_acked += 1; });
}

function onSession(session) {
  session.mode = '';
  session.outstanding = 0;
  sessions.add(session);
  session.on('close', () => sessions.delete(session));
  session.on('error', () => sessions.delete(session));
  const bind = (mode) => (pdu) => {
    if (pdu.system_id !== 'smppclient1' || pdu.password !== 'password') {
      stats.bind_rejected += 1;
      session.send(pdu.response({ command_status: smpp.ESME_RINVPASWD }));
      return;
    }
    session.mode = mode;
    stats.binds += 1;
    session.send(pdu.response({ system_id: 'node-smpp' }));
  };
  session.on('bind_transmitter', bind('transmitter'));
  session.on('bind_transceiver', bind('transceiver'));
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => { session.send(pdu.response()); session.close(); });
  session.on('submit_sm', (pdu) => {
    stats.submits += 1;
    session.outstanding += 1;
    stats.max_outstanding = Math.max(stats.max_outstanding, session.outstanding);
    const message = pdu.short_message || {};
    submits.push({
      source_addr: pdu.source_addr, source_addr_ton: pdu.source_addr_ton,
      source_addr_npi: pdu.source_addr_npi, destination_addr: pdu.destination_addr,
      esm_class: pdu.esm_class, data_coding: pdu.data_coding,
      registered_delivery: pdu.registered_delivery,
      udh: (message.udh || []).map((ie) => ie.toString('hex')),
      message: typeof message.message === 'string' ? message.message : null,
      raw: pdu.raw ? pdu.raw.toString('hex') : null,
    });
    const id = (nextId += 1).toString(16).toUpperCase();
    setTimeout(() => {
      session.outstanding -= 1;
      session.send(pdu.response({ message_id: id }));
      if (config.receipts && (pdu.registered_delivery & 1) && session.mode === 'transceiver') {
        setTimeout(() => receipt(session, id, pdu), 20);
      }
    }, config.response_delay_ms);
  });
}

function inbound(body, reply) {
  const session = [...sessions].find((s) => s.mode === 'transceiver');
  if (!session) { reply(409, { error: 'no transceiver bound' }); return; }
  const statuses = [];
  body.parts.forEach((hex) => {
    stats.inbound_sent += 1;
    session.deliver_sm({
      source_addr: body.from.replace(/^\+/, ''), source_addr_ton: 1, source_addr_npi: 1,
      destination_addr: body.to.replace(/^\+/, ''), dest_addr_ton: 1, dest_addr_npi: 1,
      esm_class: body.udh ? 0x40 : 0, data_coding: body.data_coding || 0,
      short_message: Buffer.from(hex, 'hex'),
    }, (resp) => {
      statuses.push(resp.command_status);
      if (resp.command_status === 0) stats.inbound_acked += 1;
      if (statuses.length === body.parts.length) reply(200, { statuses });
    });
  });
}

const server = smpp.createServer(onSession);
const control = http.createServer((req, res) => {
  const reply = (code, value) => {
    res.writeHead(code, { 'content-type': 'application/json' });
    res.end(JSON.stringify(value));
  };
  let data = '';
  req.on('data', (chunk) => { data += chunk; });
  req.on('end', () => {
    const body = data ? JSON.parse(data) : {};
    if (req.url === '/submits') reply(200, submits);
    else if (req.url === '/stats') reply(200, stats);
    else if (req.url === '/config') { Object.assign(config, body); reply(200, config); }
    else if (req.url === '/inbound') inbound(body, reply);
    else reply(404, { error: 'unknown path' });
  });
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  control.listen(Number(process.argv[3] || 0), '127.0.0.1', () => {
    process.stdout.write(JSON.stringify({
      smpp_port: server.address().port, http_port: control.address().port,
    }) + '\n');
  });
});
