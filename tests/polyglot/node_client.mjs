// Calls the gateway from Node through stubs that protoc-gen-es generated from protos/,
// over @connectrpc/connect-node's gRPC transport (the real gRPC protocol on HTTP/2).
// Run by test_node_client.py; prints a JSON report on stdout.
// Usage: node node_client.mjs STUBS_DIR HOST:PORT
import path from "node:path";
import { pathToFileURL } from "node:url";

import { toJson } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

const [stubsDir, target] = process.argv.slice(2);
if (!stubsDir || !target) {
  console.error("usage: node node_client.mjs STUBS_DIR HOST:PORT");
  process.exit(2);
}

// The stubs are generated per test run, outside the repository, so they are loaded by path.
const v1beta = path.resolve(stubsDir, "google/ai/generativelanguage/v1beta");
const load = (file) => import(pathToFileURL(path.join(v1beta, file)).href);
const { GenerativeService, GenerateContentResponseSchema } = await load("generative_service_pb.js");
const { ModelService } = await load("model_service_pb.js");

const transport = createGrpcTransport({
  baseUrl: `http://${target}`,
  httpVersion: "2",
  // Sent as grpc-timeout: a stuck call fails the test instead of hanging it.
  defaultTimeoutMs: 10_000,
});
const generative = createClient(GenerativeService, transport);
const models = createClient(ModelService, transport);

const request = (prompt, labels = {}) => ({
  model: "models/gemini-2.5-flash",
  contents: [{ role: "user", parts: [{ data: { case: "text", value: prompt } }] }],
  labels,
});
const textOf = (response) =>
  (response.candidates[0]?.content?.parts ?? [])
    .map((part) => (part.data.case === "text" ? part.data.value : ""))
    .join("");

const report = {};

const answer = await generative.generateContent(request("hello from node", { team: "node" }));
// toJson names enums the proto3 JSON way, so the report does not depend on numbering.
const answerJson = toJson(GenerateContentResponseSchema, answer);
report.generate = {
  text: textOf(answer),
  finishReason: answerJson.candidates[0].finishReason,
  totalTokens: answer.usageMetadata?.totalTokenCount ?? 0,
};

const texts = [];
for await (const chunk of generative.streamGenerateContent(request("node stream [[chunks:4]]"))) {
  texts.push(textOf(chunk));
}
report.stream = { texts };

const listed = await models.listModels({ pageSize: 50 });
report.models = listed.models.map((model) => model.name);

console.log(JSON.stringify(report));
