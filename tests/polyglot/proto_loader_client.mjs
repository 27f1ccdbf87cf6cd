// Calls the gateway from Node with @grpc/grpc-js, reading the .proto files at run time with
// @grpc/proto-loader: nothing is generated. Run from the repository root after `make generate`
// (which fills third_party/), against a running gateway; prints a JSON report:
//   node tests/polyglot/proto_loader_client.mjs 127.0.0.1:50051
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const target = process.argv[2] ?? "127.0.0.1:50051";

const definition = protoLoader.loadSync(
  // model_service.proto imports google/longrunning/operations.proto, found in third_party/.
  [
    "google/ai/generativelanguage/v1beta/generative_service.proto",
    "google/ai/generativelanguage/v1beta/model_service.proto",
  ],
  {
    includeDirs: ["protos", "third_party"], // google/protobuf/* come with proto-loader
    keepCase: false, // fields in lowerCamelCase, as in proto3 JSON: usageMetadata
    enums: String, // finishReason: "STOP"
    longs: Number,
    defaults: true,
    oneofs: true, // part.data names the member that is set ("text")
  },
);
const v1beta = grpc.loadPackageDefinition(definition).google.ai.generativelanguage.v1beta;
const credentials = grpc.credentials.createInsecure(); // createSsl() for a gateway with TLS
const generative = new v1beta.GenerativeService(target, credentials);
const models = new v1beta.ModelService(target, credentials);

// A deadline on every call: a stuck call fails instead of hanging.
const options = () => ({ deadline: Date.now() + 10_000 });
const unary = (client, method, request) =>
  new Promise((resolve, reject) =>
    client[method](request, options(), (error, answer) => (error ? reject(error) : resolve(answer))),
  );

const request = (prompt, labels = {}) => ({
  model: "models/gemini-2.5-flash",
  contents: [{ role: "user", parts: [{ text: prompt }] }],
  labels,
});
const textOf = (response) =>
  (response.candidates[0]?.content?.parts ?? []).map((part) => part.text ?? "").join("");

const answer = await unary(
  generative, "generateContent", request("hello from proto-loader", { team: "proto-loader" }),
);
const report = {
  generate: {
    text: textOf(answer),
    finishReason: answer.candidates[0].finishReason,
    totalTokens: answer.usageMetadata?.totalTokenCount ?? 0,
    partMember: answer.candidates[0].content.parts[0].data,
  },
};

// A server-streaming call is a Node readable stream of response messages.
const texts = [];
for await (const chunk of generative.streamGenerateContent(
  request("proto-loader stream [[chunks:3]]"), options(),
)) {
  texts.push(textOf(chunk));
}
report.stream = { texts };

const listed = await unary(models, "listModels", { pageSize: 50 });
report.models = listed.models.map((model) => model.name);

generative.close();
models.close();
console.log(JSON.stringify(report));
