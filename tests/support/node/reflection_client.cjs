// A gRPC client nobody on the team wrote: Node.js (@grpc/grpc-js) with no
// proto files, discovering the customers API through server reflection
// (grpc-js-reflection-client), as an integrator in another language would.
// Usage: node reflection_client.cjs HOST:PORT TOKEN
// Prints one JSON object with what it found; the Python test asserts on it.
const grpc = require("@grpc/grpc-js");
const { GrpcReflection } = require("grpc-js-reflection-client");

const [host, token] = process.argv.slice(2);

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
  const reflection = new GrpcReflection(host, grpc.credentials.createInsecure());
  const services = await reflection.listServices();
  const descriptor = await reflection.getDescriptorBySymbol("crm.customers.v1.Customers");
  const pkg = descriptor.getPackageObject({ keepCase: true, enums: String, longs: String,
                                            defaults: true, oneofs: true });
  const client = new pkg.crm.customers.v1.Customers(host, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  const email = `node-${Date.now()}@example.com`;
  const registered = await call(client, "RegisterCustomer",
                                { display_name: "Ada from Node", emails: [email] }, metadata);
  const id = registered.reply ? registered.reply.customer.customer_id : "";
  const fetched = await call(client, "GetCustomer", { customer_id: id }, metadata);
  const invalid = await call(client, "RegisterCustomer", { emails: ["not-an-email"] }, metadata);
  const missing = await call(client, "GetCustomer",
                             { customer_id: "00000000-0000-4000-8000-000000000000" }, metadata);
  const anonymous = await call(client, "GetCustomer", { customer_id: id }, new grpc.Metadata());
  console.log(JSON.stringify({ services, email, registered, fetched, invalid, missing,
                               anonymous }));
  client.close();
  process.exit(0);
})().catch((err) => {
  console.error(err);
  process.exit(1);
});
