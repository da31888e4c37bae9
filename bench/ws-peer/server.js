'use strict';
// Broadcast ("multi-echo") WebSocket server, benchmark peer.
// Loop is the `ws` README "Server broadcast" example: every message is sent
// to every client whose readyState is OPEN (sender included), keeping isBinary.
// Usage: node server.js [--port N] [--host H]   (port 0 = any free port)
// Prints exactly one line "listening on HOST:PORT" on stdout when ready.
const { WebSocketServer, WebSocket } = require('ws');

function arg(name, dflt) {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === name && i + 1 < argv.length) return argv[i + 1];
    if (argv[i].startsWith(name + '=')) return argv[i].slice(name.length + 1);
  }
  return dflt;
}

const host = arg('--host', '127.0.0.1');
const port = Number(arg('--port', '0'));
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`bad --port: ${arg('--port')}`);
  process.exit(2);
}

const wss = new WebSocketServer({ host, port, clientTracking: true });

wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => {
  const a = wss.address();
  process.stdout.write(`listening on ${a.address}:${a.port}\n`);
});

wss.on('error', (e) => {
  console.error(e);
  process.exit(1);
});

function shutdown() {
  for (const c of wss.clients) c.terminate();
  wss.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
