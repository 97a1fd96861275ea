'use strict';
// A relaymesh server for tests written in other languages (node/tests/clients-python), started by
// the compat harness: one node, or with RELAYMESH_COMPAT_CLUSTER=N an N-node cluster.
//
//   node serve.js '{"apps": [...], "extraToml": "..."}'
//
// prints one JSON line, {"port": P, "nodes": [{"name", "port"}, ...]} (`port`: the node for the
// server library), then serves until its standard input closes (the caller exited or closed it),
// and then stops every process and removes their folders. A line "logs" on standard input is
// answered with one JSON line, {"logs": "<the last lines of every process>"}.

const readline = require('node:readline');
const h = require('../lib/harness');

async function main() {
  const spec = JSON.parse(process.argv[2] || '{}');
  const server = await h.startTestServer({ apps: spec.apps || [h.DEFAULT_APP], extraToml: spec.extraToml || '' });
  const nodes = server.nodes || [server];
  let stopping = null;
  const stop = () =>
    (stopping ||= (async () => {
      await server.kill('SIGTERM');
      h.removeServerDir(server);
      process.exit(0);
    })());
  const input = readline.createInterface({ input: process.stdin });
  input.on('line', (line) => {
    if (line.trim() === 'logs') process.stdout.write(`${JSON.stringify({ logs: server.logTail(30) })}\n`);
  });
  input.on('close', stop);
  process.stdout.write(`${JSON.stringify({ port: server.port, nodes: nodes.map((n) => ({ name: n.name, port: n.port })) })}\n`);
}

main().catch((err) => {
  console.error(`serve.js: ${err.message}`);
  process.exit(1);
});
