// The reference fal-js proxy, as its README deploys it: Express + `@fal-ai/server-proxy/express`.
//
// The package is used unmodified. Its host allow-list only admits fal's hosts, so the benchmark sends
// `x-fal-target-url: https://queue.fal.run/...` exactly as @fal-ai/client would. To make those fetches
// land on the local fake upstream instead of the real queue.fal.run, this process installs an undici
// global dispatcher (the one Node's built-in `fetch` uses) that rewrites the *origin* of any request to
// a fal host into BENCH_UPSTREAM_URL, then hands it to a normal keep-alive undici Agent. Nothing else
// about the request changes (method, path, query, headers, body), and the package's own code runs as
// it would in production; only the socket goes to 127.0.0.1 over plain HTTP instead of TLS to fal
// (which is also what the gateway does in the benchmark: it is pointed at the same upstream).
//
// Env: FAL_KEY (required by the proxy), BENCH_UPSTREAM_URL (e.g. http://127.0.0.1:8701),
//      PORT (default 8703), HOST (default 127.0.0.1).
import express from "express";
import { Agent, Dispatcher, setGlobalDispatcher } from "undici";
import * as falProxy from "@fal-ai/server-proxy/express";

const upstream = process.env.BENCH_UPSTREAM_URL;
if (!upstream) {
  console.error("BENCH_UPSTREAM_URL is required (the fake fal upstream)");
  process.exit(2);
}
if (!process.env.FAL_KEY) {
  console.error("FAL_KEY is required");
  process.exit(2);
}
const upstreamOrigin = new URL(upstream).origin;
const FAL_ORIGINS = new Set(["https://queue.fal.run", "https://fal.run", "https://rest.fal.ai", "https://rest.alpha.fal.ai"]);

class RewriteFalOrigin extends Dispatcher {
  constructor(inner) {
    super();
    this.inner = inner;
  }
  dispatch(opts, handler) {
    const origin = String(opts.origin);
    if (FAL_ORIGINS.has(origin)) {
      opts = { ...opts, origin: upstreamOrigin };
    }
    return this.inner.dispatch(opts, handler);
  }
  close(...args) {
    return this.inner.close(...args);
  }
  destroy(...args) {
    return this.inner.destroy(...args);
  }
}
// Sanity check that Node's built-in fetch will pick our dispatcher up (same global symbol).
if (!process.versions.undici?.startsWith("6.")) {
  console.warn(`note: node's bundled undici is ${process.versions.undici}; the dispatcher comes from undici 6`);
}
setGlobalDispatcher(new RewriteFalOrigin(new Agent({ keepAliveTimeout: 60_000 })));

const app = express();
app.disable("x-powered-by");
// As in the fal-js docs: a JSON body parser, then the proxy's handler on its conventional route.
app.all(falProxy.route, express.json(), falProxy.createHandler());
app.get("/healthz", (_req, res) => res.json({ ok: true }));

const port = Number(process.env.PORT ?? 8703);
const host = process.env.HOST ?? "127.0.0.1";
const server = app.listen(port, host, () => {
  console.log(`express @fal-ai/server-proxy on http://${host}:${port}${falProxy.route} -> ${upstreamOrigin}`);
});
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref();
  });
}
