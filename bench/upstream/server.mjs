// A fast fake of fal's queue API for the load benchmark: plain node:http, no framework, no I/O
// beyond the socket, so that it is never the bottleneck of a run.
//
//   POST /{model path}                       -> 200 submit answer (IN_QUEUE) with its own URLs
//   GET  /{owner}/{app}/requests/{id}/status -> 202 IN_PROGRESS status (~300 bytes, with logs)
//   GET  /{owner}/{app}/requests/{id}        -> 200 a small result
//   PUT  /{owner}/{app}/requests/{id}/cancel -> 202 CANCELLATION_REQUESTED
//   GET  /healthz                            -> 200 ok
//
// Any `Authorization: Key ...` is accepted; a request without one gets 401 (so a proxy that
// forgot to inject the key shows up as non-2xx responses in the benchmark).
//
// Usage: node server.mjs [--port 8701] [--host 127.0.0.1] [--base http://127.0.0.1:8701]
import http from "node:http";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    port: { type: "string", default: process.env.UPSTREAM_PORT ?? "8701" },
    host: { type: "string", default: "127.0.0.1" },
    base: { type: "string" },
  },
});
const port = Number(args.port);
const base = args.base ?? `http://${args.host}:${port}`;

let counter = 0;
const idPrefix = `${process.pid.toString(16)}-`;
const nextId = () => `0b5e${idPrefix}${(counter++).toString(16).padStart(12, "0")}`;

const JSON_HEADERS = { "content-type": "application/json" };

function send(res, status, body, extra) {
  const payload = JSON.stringify(body);
  res.writeHead(status, {
    ...JSON_HEADERS,
    "content-length": Buffer.byteLength(payload),
    ...extra,
  });
  res.end(payload);
}

// The app id in per-request paths is owner/app (workflows/ and comfy/ keep three segments).
function appIdOf(modelPath) {
  const parts = modelPath.split("/").filter(Boolean);
  const n = parts[0] === "workflows" || parts[0] === "comfy" ? 3 : 2;
  return parts.slice(0, n).join("/");
}

const REQUEST_RE = /^\/(.+?)\/requests\/([^/]+)(\/status|\/cancel)?\/?$/;
const LOG_TS = "2025-01-01T00:00:00.000000";

const server = http.createServer((req, res) => {
  const q = req.url.indexOf("?");
  const path = q === -1 ? req.url : req.url.slice(0, q);

  if (path === "/healthz") {
    return send(res, 200, { ok: true });
  }
  const auth = req.headers.authorization;
  if (!auth || !auth.startsWith("Key ")) {
    req.resume();
    return send(res, 401, { detail: "Missing or invalid Authorization header" });
  }

  const m = REQUEST_RE.exec(path);
  if (req.method === "GET" && m && m[3] === "/status") {
    const [, app, id] = m;
    const root = `${base}/${app}/requests/${id}`;
    return send(
      res,
      202,
      {
        status: "IN_PROGRESS",
        request_id: id,
        logs: [
          { message: "Generating frames 12/48", level: "INFO", source: "user", timestamp: LOG_TS },
        ],
        response_url: root,
        status_url: `${root}/status`,
        cancel_url: `${root}/cancel`,
      },
      { "x-fal-request-id": id },
    );
  }
  if (req.method === "GET" && m && !m[3]) {
    return send(res, 200, { video: { url: "https://v3.fal.media/files/bench/out.mp4" } }, { "x-fal-request-id": m[2] });
  }
  if (req.method === "PUT" && m && m[3] === "/cancel") {
    req.resume();
    return send(res, 202, { status: "CANCELLATION_REQUESTED" });
  }
  if (req.method === "POST" && !m) {
    // Drain the body (the model input); it is not inspected.
    req.on("data", () => {});
    req.on("end", () => {
      const id = nextId();
      const root = `${base}/${appIdOf(path)}/requests/${id}`;
      send(
        res,
        200,
        {
          status: "IN_QUEUE",
          request_id: id,
          response_url: root,
          status_url: `${root}/status`,
          cancel_url: `${root}/cancel`,
          queue_position: 0,
        },
        { "x-fal-request-id": id },
      );
    });
    return;
  }
  req.resume();
  send(res, 404, { detail: "Not Found" });
});

server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
server.listen(port, args.host, () => {
  console.log(`fake fal upstream listening on ${base}`);
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500).unref());
