'use strict';
// Loopback test for server.js: starts it on --port 0, connects 3 clients,
// each sends text + binary messages (interleaved); checks that every client
// receives every message, with the right type (text/binary), that all clients
// see the same global order, and that each sender's order is preserved.
// Whole run bounded by a 20 s watchdog. Exit 0 on success.
const { spawn } = require('child_process');
const path = require('path');
const WebSocket = require('ws');

const N_CLIENTS = 3, N_PER_CLIENT = 200;
const watchdog = setTimeout(() => fail('timeout'), 20000);
let server;
function fail(msg) {
  console.error('FAIL:', msg);
  if (server) server.kill('SIGTERM');
  process.exit(1);
}

server = spawn(process.execPath, [path.join(__dirname, 'server.js'), '--port', '0', '--host', '127.0.0.1'],
  { stdio: ['ignore', 'pipe', 'inherit'] });
let out = '';
server.stdout.on('data', (d) => {
  out += d;
  const m = /^listening on 127\.0\.0\.1:(\d+)\n/.exec(out);
  if (m && !server.started) { server.started = true; run(Number(m[1])); }
});
server.on('exit', (code, sig) => { if (!server.stopping) fail(`server exited early ${code} ${sig}`); });

function run(port) {
  const url = `ws://127.0.0.1:${port}/`;
  const clients = [];
  let opened = 0;
  const expectedTotal = N_CLIENTS * N_PER_CLIENT;
  for (let c = 0; c < N_CLIENTS; c++) {
    const ws = new WebSocket(url);
    ws.got = [];
    ws.on('error', (e) => fail(`client ${c}: ${e.message}`));
    ws.on('message', (data, isBinary) => {
      ws.got.push({ isBinary, s: isBinary ? Buffer.from(data).toString('hex') : data.toString() });
      if (clients.every((x) => x.got.length >= expectedTotal)) check();
    });
    ws.on('open', () => { if (++opened === N_CLIENTS) sendAll(); });
    clients.push(ws);
  }
  function sendAll() {
    clients.forEach((ws, c) => {
      for (let i = 0; i < N_PER_CLIENT; i++) {
        if (i % 2 === 0) ws.send(`c${c} m${i} héllo`);                       // text frame
        else ws.send(Buffer.from([0xff, c, i & 0xff, i >> 8, 0x00]));       // binary frame (invalid UTF-8)
      }
    });
  }
  function check() {
    const ref = JSON.stringify(clients[0].got);
    clients.forEach((ws, c) => {
      if (ws.got.length !== expectedTotal) fail(`client ${c} got ${ws.got.length}`);
      if (JSON.stringify(ws.got) !== ref) fail(`client ${c} order differs from client 0`);
    });
    // per-sender order + type
    for (let c = 0; c < N_CLIENTS; c++) {
      const mine = clients[0].got.filter((m) => m.isBinary ? m.s.slice(2, 4) === c.toString(16).padStart(2, '0') : m.s.startsWith(`c${c} `));
      if (mine.length !== N_PER_CLIENT) fail(`sender ${c}: ${mine.length} msgs`);
      mine.forEach((m, i) => {
        const exp = i % 2 === 0
          ? { isBinary: false, s: `c${c} m${i} héllo` }
          : { isBinary: true, s: Buffer.from([0xff, c, i & 0xff, i >> 8, 0x00]).toString('hex') };
        if (m.isBinary !== exp.isBinary || m.s !== exp.s) fail(`sender ${c} msg ${i}: ${JSON.stringify(m)} != ${JSON.stringify(exp)}`);
      });
    }
    clients.forEach((ws) => ws.close());
    server.stopping = true;
    server.kill('SIGTERM');
    server.on('exit', (code, sig) => {
      clearTimeout(watchdog);
      if (code !== 0) fail(`server exit on SIGTERM: code=${code} sig=${sig}`);
      console.log(`OK: ${N_CLIENTS} clients x ${expectedTotal} msgs each (text+binary), same order everywhere; server exited 0 on SIGTERM`);
      console.log('1 passed, 0 failed');
    });
  }
}
