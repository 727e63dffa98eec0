// An ESME on the npm `smpp` package (0.5.1): a client we did not write, for the tests of
// sms-router's SMPP server (tests/smpp_server).
//
// Usage: node client.js < job.json
// The job: {"port": N, "system_id": "...", "password": "...", "mode": "transceiver",
//           "window": 50, "tls": false,
//           "messages": [[part, ...], ...]}        // a message is its submit_sm parts
// A part: {"destination_addr", "dest_addr_ton", "dest_addr_npi", "source_addr",
//          "source_addr_ton", "source_addr_npi", "data_coding", "esm_class",
//          "registered_delivery", "short_message": hex, "sar": [ref, total, seq]}
// The parts of a message are sent one after another; at most `window` submits are
// unanswered at once. Prints one JSON line:
//   {"bind": status, "results": [[{"status", "message_id"}, ...], ...], "unbind": status,
//    "deliver_sm": [{"esm_class", "receipted_message_id", "short_message"}, ...]}
// The short_message is given as a Buffer, so the package sends the octets as they are.
'use strict';

const smpp = require('smpp');

function run(job) {
  const options = { host: '127.0.0.1', port: job.port, tls: !!job.tls };
  if (job.tls) options.rejectUnauthorized = false;
  const session = smpp.connect(options);
  const out = { bind: null, results: job.messages.map((m) => m.map(() => null)),
    unbind: null, deliver_sm: [] };
  const parts = [];
  job.messages.forEach((message, m) => message.forEach((part, p) => parts.push([m, p, part])));
  let next = 0;
  let outstanding = 0;
  let answered = 0;
  const window = job.window || 10;

  const finish = () => {
    session.unbind((pdu) => {
      out.unbind = pdu.command_status;
      session.close();
      process.stdout.write(JSON.stringify(out) + '\n');
    });
  };
  const pump = () => {
    while (outstanding < window && next < parts.length) {
      const [m, p, part] = parts[next];
      next += 1;
      outstanding += 1;
      const fields = {
        destination_addr: part.destination_addr, dest_addr_ton: part.dest_addr_ton ?? 1,
        dest_addr_npi: part.dest_addr_npi ?? 1, source_addr: part.source_addr || '',
        source_addr_ton: part.source_addr_ton || 0, source_addr_npi: part.source_addr_npi || 0,
        data_coding: part.data_coding || 0, esm_class: part.esm_class || 0,
        registered_delivery: part.registered_delivery || 0,
        short_message: Buffer.from(part.short_message, 'hex'),
      };
      if (part.sar) {
        [fields.sar_msg_ref_num, fields.sar_total_segments, fields.sar_segment_seqnum] = part.sar;
      }
      session.submit_sm(fields, (resp) => {
        outstanding -= 1;
        answered += 1;
        out.results[m][p] = { status: resp.command_status, message_id: resp.message_id || null };
        if (answered === parts.length) finish();
        else pump();
      });
    }
  };

  session.on('connect', () => {
    const bind = job.mode === 'transmitter' ? 'bind_transmitter' : 'bind_transceiver';
    session[bind]({ system_id: job.system_id, password: job.password }, (pdu) => {
      out.bind = pdu.command_status;
      if (pdu.command_status !== 0 || parts.length === 0) {
        session.close();
        process.stdout.write(JSON.stringify(out) + '\n');
        return;
      }
      pump();
    });
  });
  session.on('enquire_link', (pdu) => session.send(pdu.response()));
  session.on('unbind', (pdu) => { session.send(pdu.response()); session.close(); });
  session.on('deliver_sm', (pdu) => {
    const message = pdu.short_message || {};
    out.deliver_sm.push({ esm_class: pdu.esm_class,
      receipted_message_id: pdu.receipted_message_id || null,
      short_message: typeof message.message === 'string' ? message.message : null });
    session.send(pdu.response());
  });
  session.on('error', (error) => {
    process.stderr.write(String(error) + '\n');
    process.exit(2);
  });
}

let input = '';
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => run(JSON.parse(input)));
