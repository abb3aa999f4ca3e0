// A light gRPC load generator for bench workloads: Node.js (@grpc/grpc-js),
// the API discovered through server reflection (grpc-js-reflection-client),
// so the client side costs a fraction of what a Python grpc.aio client costs
// per call and does not compete with the service for the machine's cores.
//
// Reads one JSON object on standard input:
//   {"target": "host:port", "service": "crm.customers.v1.Customers",
//    "method": "GetCustomer", "id_field": "customer_id", "reply_field": "customer_id",
//    "token": "...", "channels": 2, "timeout_ms": 30000, "warm_up": ["id", ...],
//    "phases": [{"name": "max", "concurrency": 32, "ids": [...]},
//               {"name": "paced", "rate": 1000, "ids": [...]}]}
// and prints one JSON object: {"phase name": {"seconds": s, "latencies_ms": [...],
// "found": [...]}}. A call failing with an overload code (the server shedding
// load) has latency null and found null; any other error stops the run (exit 1).
// A paced phase starts call i at i / rate seconds whether or not earlier calls
// finished (open loop), and counts its latency from that scheduled start.
const grpc = require("@grpc/grpc-js");
const { GrpcReflection } = require("grpc-js-reflection-client");
const { performance } = require("node:perf_hooks");

const OVERLOAD = new Set([grpc.status.CANCELLED, grpc.status.RESOURCE_EXHAUSTED,
                          grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED]);

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (c) => chunks.push(c));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

async function clients(config) {
  const creds = grpc.credentials.createInsecure();
  const reflection = new GrpcReflection(config.target, creds);
  const descriptor = await reflection.getDescriptorBySymbol(config.service);
  const pkg = descriptor.getPackageObject({ keepCase: true, longs: String, enums: String });
  const Service = config.service.split(".").reduce((node, part) => node[part], pkg);
  // One connection per client: a local subchannel pool keeps them apart, so
  // the calls spread over every replica sharing the port.
  return Array.from({ length: config.channels }, () =>
    new Service(config.target, creds, { "grpc.use_local_subchannel_pool": 1 }));
}

(async () => {
  const config = JSON.parse(await readStdin());
  const stubs = await clients(config);
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${config.token}`);
  let next = 0;

  function call(id) {
    const stub = stubs[next++ % stubs.length];
    return new Promise((resolve, reject) => {
      stub[config.method]({ [config.id_field]: id }, metadata,
                          { deadline: Date.now() + config.timeout_ms }, (err, reply) => {
        if (!err) resolve(String(reply[config.reply_field]));
        else if (OVERLOAD.has(err.code)) resolve(null);
        else reject(new Error(`${config.method}(${id}): ${grpc.status[err.code]} ${err.details}`));
      });
    });
  }

  async function closedLoop(ids, concurrency) {
    const latencies = new Array(ids.length).fill(null);
    const found = new Array(ids.length).fill(null);
    let taken = 0;
    async function worker() {
      while (taken < ids.length) {
        const i = taken++;
        const started = performance.now();
        found[i] = await call(ids[i]);
        if (found[i] !== null) latencies[i] = performance.now() - started;
      }
    }
    const started = performance.now();
    await Promise.all(Array.from({ length: concurrency }, worker));
    return { seconds: (performance.now() - started) / 1000, latencies_ms: latencies, found };
  }

  async function paced(ids, rate) {
    const latencies = new Array(ids.length).fill(null);
    const found = new Array(ids.length).fill(null);
    const pending = [];
    const start = performance.now();
    let i = 0;
    while (i < ids.length) {
      const now = performance.now();
      for (; i < ids.length && start + (i * 1000) / rate <= now; i++) {
        const index = i;
        const due = start + (index * 1000) / rate;
        pending.push(call(ids[index]).then((reply) => {
          found[index] = reply;
          if (reply !== null) latencies[index] = performance.now() - due;
        }));
      }
      if (i < ids.length) {
        const wait = start + (i * 1000) / rate - performance.now();
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, wait)));
      }
    }
    await Promise.all(pending);
    return { seconds: (performance.now() - start) / 1000, latencies_ms: latencies, found };
  }

  if (config.warm_up && config.warm_up.length) await closedLoop(config.warm_up, 32);
  const out = {};
  for (const phase of config.phases) {
    out[phase.name] = phase.rate ? await paced(phase.ids, phase.rate)
                                 : await closedLoop(phase.ids, phase.concurrency);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  stubs.forEach((s) => s.close());
})().catch((err) => {
  process.stderr.write(`${err.stack || err}\n`);
  process.exit(1);
});
