// Known-good RFC 6455 echo server (Node `ws`), loopback only.
// Usage: node echo_ws.js [PORT] [--broken] [--max-fragments=N]   (default 9002, binds 127.0.0.1)
// maxFragments: ws 8.23.0 (installed here) defaults to 16384 fragments per message on the server and fails
// Autobahn 9.3.1/9.3.2/9.4.1/9.4.2 (65536 / 16384 fragments) with 1008; 0 = unlimited (default here).
// --broken sets skipUTF8Validation: a deliberately NON-conformant server used as
// a negative control (Autobahn 6.x UTF-8 cases must then FAIL).
'use strict';
const { WebSocketServer } = require('ws');
const port = parseInt(process.argv[2] || '9002', 10);
const broken = process.argv.includes('--broken');
const mf = process.argv.find((a) => a.startsWith('--max-fragments='));
const maxFragments = mf ? parseInt(mf.split('=')[1], 10) : 0;
const wss = new WebSocketServer({ host: '127.0.0.1', port, skipUTF8Validation: broken,
                                  perMessageDeflate: false, maxPayload: 64 * 1024 * 1024, maxFragments });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.log(`echo_ws (ws ${require('ws/package.json').version}) listening on ws://127.0.0.1:${port} maxFragments=${maxFragments}${broken ? ' (BROKEN: no UTF-8 validation)' : ''}`));
