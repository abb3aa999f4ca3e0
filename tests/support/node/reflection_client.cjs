// A gRPC client nobody on the team wrote: Node.js (@grpc/grpc-js) with no
// proto files, discovering each service's API through server reflection
// (grpc-js-reflection-client), as an integrator in another language would.
// Usage: node reflection_client.cjs '{"token": ..., "customers": "host:port",
//                                     "interactions": "host:port", "loyalty": "host:port"}'
// Prints one JSON object with what it found; the Python test asserts on it.
const grpc = require("@grpc/grpc-js");
const { GrpcReflection } = require("grpc-js-reflection-client");

const config = JSON.parse(process.argv[2]);
const creds = () => grpc.credentials.createInsecure();
const options = { keepCase: true, enums: String, longs: String, defaults: true, oneofs: true };

async function stub(host, symbol) {
  const reflection = new GrpcReflection(host, creds());
  const services = await reflection.listServices();
  const pkg = (await reflection.getDescriptorBySymbol(symbol)).getPackageObject(options);
  const Service = symbol.split(".").reduce((node, part) => node[part], pkg);
  return { services, client: new Service(host, creds()) };
}

function call(client, method, request, metadata) {
  return new Promise((resolve) => {
    client[method](request, metadata, { deadline: Date.now() + 10000 }, (err, reply) => {
      if (err) {
        resolve({ code: grpc.status[err.code], details: err.details,
                  has_status_details: err.metadata.get("grpc-status-details-bin").length > 0 });
      } else {
        resolve({ code: "OK", reply });
      }
    });
  });
}

(async () => {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${config.token}`);
  const out = {};

  const customers = await stub(config.customers, "crm.customers.v1.Customers");
  out.services = customers.services;
  out.email = `node-${Date.now()}@example.com`;
  out.registered = await call(customers.client, "RegisterCustomer",
                              { display_name: "Ada from Node", emails: [out.email] }, metadata);
  const id = out.registered.reply ? out.registered.reply.customer.customer_id : "";
  out.fetched = await call(customers.client, "GetCustomer", { customer_id: id }, metadata);
  out.invalid = await call(customers.client, "RegisterCustomer", { emails: ["not-an-email"] },
                           metadata);
  out.missing = await call(customers.client, "GetCustomer",
                           { customer_id: "00000000-0000-4000-8000-000000000000" }, metadata);
  out.anonymous = await call(customers.client, "GetCustomer", { customer_id: id },
                             new grpc.Metadata());

  const interactions = await stub(config.interactions, "crm.interactions.v1.Interactions");
  out.recorded = await call(interactions.client, "RecordInteraction", {
    customer_id: id, channel: "chat", kind: "inquiry", touchpoint: "help-widget",
    notes: "asks from a Node client", idempotency_key: `node-${id}` }, metadata);
  out.bad_channel = await call(interactions.client, "RecordInteraction", {
    customer_id: id, channel: "pigeon", kind: "inquiry", idempotency_key: `node-bad-${id}` },
    metadata);

  const loyalty = await stub(config.loyalty, "crm.loyalty.v1.Loyalty");
  // Loyalty learns of the customer from customer.registered: NOT_FOUND until then.
  for (let i = 0; i < 100; i++) {
    out.profile = await call(loyalty.client, "GetLoyaltyProfile", { customer_id: id }, metadata);
    if (out.profile.code !== "NOT_FOUND") break;
    await new Promise((r) => setTimeout(r, 100));
  }
  out.malformed_code = await call(loyalty.client, "ValidateDiscount", {
    code: "NOPE-NOPE-NOPE-NOPE", order_amount: { amount_minor: 1000, currency: "EUR" } },
    metadata);

  console.log(JSON.stringify(out));
  for (const s of [customers, interactions, loyalty]) s.client.close();
  process.exit(0);
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
