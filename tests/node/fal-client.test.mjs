// The real @fal-ai/client from npm, pointed at falgate's proxy route, against the fal emulator.
//
// Run by tests/test_fal_client_js.py, which starts both servers and sets:
//   FALGATE_URL           the gateway's base URL (the proxy route is FALGATE_URL/api/fal/proxy)
//   FALGATE_EMULATOR_URL  the emulator's base URL (its /_control API tells what reached "fal")
// By hand: `FALGATE_URL=... FALGATE_EMULATOR_URL=... node --test tests/node/`.
//
// The client holds no credentials: that is the point of the proxy. Every request it makes is
// recorded (through its `fetch` option) so the suite can prove that all of them went to the proxy.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { before, describe, it } from "node:test";

import { ApiError, createFalClient, fal, ValidationError } from "@fal-ai/client";

const GATEWAY = requiredEnv("FALGATE_URL");
const EMULATOR = requiredEnv("FALGATE_EMULATOR_URL");
const PROXY_URL = `${GATEWAY}/api/fal/proxy`;
const TEST_TIMEOUT = 30_000;

const VEO2 = "fal-ai/veo2/image-to-video";
const WAN_PRO = "fal-ai/wan-pro/image-to-video";
const KLING = "fal-ai/kling-video/v2.1/standard/image-to-video";
const SEEDANCE = "fal-ai/bytedance/seedance/v1/lite/image-to-video";
const HAILUO = "fal-ai/minimax/hailuo-02/pro/image-to-video";
const WAN_I2V = "fal-ai/wan-i2v";
const PIXVERSE = "fal-ai/pixverse/v4.5/image-to-video";
const LUMA = "fal-ai/luma-dream-machine/ray-2-flash/image-to-video";
const MAGI = "fal-ai/magi-distilled/image-to-video";

const CAT = "https://example.com/cat.png";
// One valid input per seeded model (tests/invalid_bodies.py VALID_BODIES, plus a documented option each).
const VALID_INPUTS = {
  [VEO2]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, duration: "5s" },
  [WAN_PRO]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, seed: 7 },
  [KLING]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, duration: "5" },
  [SEEDANCE]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, resolution: "720p" },
  [HAILUO]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, prompt_optimizer: true },
  [WAN_I2V]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, num_frames: 81 },
  [PIXVERSE]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, aspect_ratio: "16:9" },
  [LUMA]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, aspect_ratio: "16:9" },
  [MAGI]: { prompt: "A cat walks slowly toward the camera", image_url: CAT, num_frames: 96 },
};

// A real 1x1 PNG.
const PNG_BYTES = Buffer.from(
  "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
  "base64",
);

// Every request the client makes: {method, url, headers}.
const sent = [];

function recordingFetch(url, init = {}) {
  sent.push({ method: (init.method ?? "GET").toUpperCase(), url: String(url), headers: { ...(init.headers ?? {}) } });
  return fetch(url, init);
}

// The configuration a browser app would use: no credentials, every call through the proxy.
fal.config({
  proxyUrl: { url: PROXY_URL, when: "always" },
  credentials: undefined, // not even FAL_KEY from the environment
  fetch: recordingFetch,
});

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run this suite through tests/test_fal_client_js.py (pytest)`);
  }
  return value.replace(/\/$/, "");
}

async function emulatorLog() {
  const response = await fetch(`${EMULATOR}/_control/requests`);
  assert.equal(response.status, 200);
  return response.json();
}

async function emulatorJob(requestId) {
  const response = await fetch(`${EMULATOR}/_control/jobs/${requestId}`);
  assert.equal(response.status, 200, `the emulator has no job ${requestId}`);
  return response.json();
}

async function pollUntilCompleted(model, requestId, onStatus = () => {}) {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const status = await fal.queue.status(model, { requestId, logs: true });
    onStatus(status);
    if (status.status === "COMPLETED") return status;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${requestId} did not complete`);
}

function assertVideoResult(result, requestId) {
  assert.equal(typeof result.data?.video?.url, "string", JSON.stringify(result));
  assert.match(result.data.video.url, /^https?:\/\/.+\.mp4$/);
  assert.match(result.requestId, /^[0-9a-f-]{36}$/);
  if (requestId) assert.equal(result.requestId, requestId);
}

function assertQueueUrls(submitted, model) {
  // The gateway hands back fal's own URLs (not its private upstream base): the client ignores them,
  // but they must not reveal where the gateway really sends its traffic.
  const appId = model.split("/").slice(0, 2).join("/");
  const root = `https://queue.fal.run/${appId}/requests/${submitted.request_id}`;
  assert.equal(submitted.response_url, root);
  assert.equal(submitted.status_url, `${root}/status`);
  assert.equal(submitted.cancel_url, `${root}/cancel`);
}

before(async () => {
  // Start from an empty record of what reached "fal", so the checks at the end cover this suite only.
  const response = await fetch(`${EMULATOR}/_control/requests`, { method: "DELETE" });
  assert.equal(response.status, 200);
});

describe("@fal-ai/client through falgate's proxy", { concurrency: true, timeout: TEST_TIMEOUT * 2 }, () => {
  describe("fal.subscribe with logs, every seeded model", { concurrency: true }, () => {
    for (const [model, input] of Object.entries(VALID_INPUTS)) {
      it(model, { timeout: TEST_TIMEOUT }, async () => {
        const updates = [];
        let enqueued;
        const result = await fal.subscribe(model, {
          input,
          logs: true,
          onEnqueue: (requestId) => (enqueued = requestId),
          onQueueUpdate: (update) => updates.push(update),
        });
        assertVideoResult(result, enqueued);
        const inProgress = updates.filter((u) => u.status === "IN_PROGRESS");
        assert.ok(inProgress.length > 0, `no IN_PROGRESS update: ${updates.map((u) => u.status)}`);
        assert.ok(
          inProgress.some((u) => Array.isArray(u.logs) && u.logs.length > 0 && typeof u.logs[0].message === "string"),
          "no IN_PROGRESS update carried logs",
        );
        assert.equal(updates.at(-1).status, "COMPLETED");
        // What reached "fal" is the model and the input the client sent, unchanged.
        const job = await emulatorJob(result.requestId);
        assert.equal(job.model_id, model);
        assert.deepEqual(job.input, input);
      });
    }
  });

  it("fal.subscribe with mode: streaming follows the status stream", { timeout: TEST_TIMEOUT }, async () => {
    const updates = [];
    const result = await fal.subscribe(KLING, {
      input: VALID_INPUTS[KLING],
      logs: true,
      mode: "streaming",
      onQueueUpdate: (update) => updates.push(update),
    });
    assertVideoResult(result);
    assert.ok(updates.some((u) => u.status === "IN_PROGRESS" && u.logs.length > 0), JSON.stringify(updates));
    assert.equal(updates.at(-1).status, "COMPLETED");
  });

  it("fal.queue.submit / status (with logs) / result", { timeout: TEST_TIMEOUT }, async () => {
    const submitted = await fal.queue.submit(HAILUO, { input: VALID_INPUTS[HAILUO] });
    assert.equal(submitted.status, "IN_QUEUE");
    assert.equal(typeof submitted.queue_position, "number");
    assertQueueUrls(submitted, HAILUO);

    const seen = [];
    const done = await pollUntilCompleted(HAILUO, submitted.request_id, (s) => seen.push(s));
    assert.equal(done.request_id, submitted.request_id);
    assert.ok(Array.isArray(done.logs) && done.logs.length > 0, "COMPLETED status without logs");
    // fal's metrics are optional (both clients treat them so); a COMPLETED answered from the gateway's
    // store (issue 16) has none, since fal's webhook does not carry them. When present, they are fal's.
    if (done.metrics !== undefined) assert.equal(typeof done.metrics.inference_time, "number");
    assert.ok(seen.some((s) => s.status === "IN_PROGRESS" && s.logs.length > 0), "never saw IN_PROGRESS with logs");
    // Polled status answers carry fal's URLs too, never the emulator's address.
    for (const status of seen) assertQueueUrls(status, HAILUO);

    const result = await fal.queue.result(HAILUO, { requestId: submitted.request_id });
    assertVideoResult(result, submitted.request_id);
  });

  it("fal.queue.cancel stops a request; cancelling a finished one is refused", { timeout: TEST_TIMEOUT }, async () => {
    const submitted = await fal.queue.submit(WAN_PRO, { input: VALID_INPUTS[WAN_PRO] });
    await fal.queue.cancel(WAN_PRO, { requestId: submitted.request_id }); // throws unless 2xx
    const done = await pollUntilCompleted(WAN_PRO, submitted.request_id);
    assert.equal(done.error_type, "request_cancelled");
    await assert.rejects(fal.queue.result(WAN_PRO, { requestId: submitted.request_id }), (err) => {
      assert.ok(err instanceof ApiError, String(err));
      assert.equal(err.status, 400);
      return true;
    });
    // Already finished: fal answers 400 ALREADY_COMPLETED, and the proxy keeps that status.
    await assert.rejects(fal.queue.cancel(WAN_PRO, { requestId: submitted.request_id }), (err) => {
      assert.ok(err instanceof ApiError, String(err));
      assert.equal(err.status, 400);
      assert.equal(err.body.status, "ALREADY_COMPLETED");
      return true;
    });
  });

  it("fal.queue.streamStatus ends at COMPLETED", { timeout: TEST_TIMEOUT }, async () => {
    const submitted = await fal.queue.submit(SEEDANCE, { input: VALID_INPUTS[SEEDANCE] });
    const stream = await fal.queue.streamStatus(SEEDANCE, { requestId: submitted.request_id, logs: true });
    const events = [];
    stream.on("data", (event) => events.push(event));
    const last = await stream.done();
    assert.equal(last.status, "COMPLETED");
    assert.equal(last.request_id, submitted.request_id);
    assert.ok(events.some((e) => e.status === "IN_PROGRESS"), `statuses: ${events.map((e) => e.status)}`);
    assert.equal(events.at(-1).status, "COMPLETED");
    assert.ok(last.logs.length > 0, "the COMPLETED event carries no logs");
    const result = await fal.queue.result(SEEDANCE, { requestId: submitted.request_id });
    assertVideoResult(result, submitted.request_id);
  });

  it("fal.storage.upload gives a file the emulator serves, usable as image_url", { timeout: TEST_TIMEOUT }, async () => {
    const url = await fal.storage.upload(new Blob([PNG_BYTES], { type: "image/png" }));
    assert.ok(url.startsWith(`${EMULATOR}/files/`), `unexpected file URL ${url}`);
    const download = await fetch(url);
    assert.equal(download.status, 200);
    assert.equal(download.headers.get("content-type"), "image/png");
    assert.deepEqual(Buffer.from(await download.arrayBuffer()), PNG_BYTES);

    const input = { ...VALID_INPUTS[MAGI], image_url: url };
    const result = await fal.subscribe(MAGI, { input });
    assertVideoResult(result);
    assert.equal((await emulatorJob(result.requestId)).input.image_url, url);
  });

  it("a Blob in the input is uploaded by the client and replaced by its URL", { timeout: TEST_TIMEOUT }, async () => {
    const input = { ...VALID_INPUTS[PIXVERSE], image_url: new Blob([PNG_BYTES], { type: "image/png" }) };
    const result = await fal.subscribe(PIXVERSE, { input });
    assertVideoResult(result);
    const job = await emulatorJob(result.requestId);
    assert.ok(job.input.image_url.startsWith(`${EMULATOR}/files/`), job.input.image_url);
  });

  it("an invalid body is the client's ValidationError and never reaches fal", { timeout: TEST_TIMEOUT }, async () => {
    // A unique x-fal-runner-hint (a header the gateway forwards) marks each submit in fal's log.
    const invalidHint = `invalid-${randomUUID()}`;
    const validHint = `valid-${randomUUID()}`;
    const bad = { ...VALID_INPUTS[WAN_I2V], num_frames: 500 };
    const isNumFramesError = (err) => {
      assert.ok(err instanceof ValidationError, `expected ValidationError, got ${err?.name}: ${err?.message}`);
      assert.equal(err.status, 422);
      assert.ok(Array.isArray(err.body.detail), JSON.stringify(err.body));
      assert.ok(err.body.detail[0].loc.includes("num_frames"), JSON.stringify(err.body.detail));
      assert.equal(err.getFieldErrors("num_frames").length, 1);
      return true;
    };
    await assert.rejects(fal.queue.submit(WAN_I2V, { input: bad, hint: invalidHint }), isNumFramesError);
    await assert.rejects(fal.subscribe(WAN_I2V, { input: bad, hint: invalidHint }), isNumFramesError);
    // The same submit with a valid body does reach fal, hint and all (so the check below can fail).
    const ok = await fal.queue.submit(WAN_I2V, { input: VALID_INPUTS[WAN_I2V], hint: validHint });

    const log = await emulatorLog();
    const hinted = (hint) => log.filter((r) => r.headers["x-fal-runner-hint"] === hint);
    assert.deepEqual(hinted(invalidHint), [], "a refused submit reached fal");
    assert.equal(hinted(validHint).length, 1);
    assert.equal(hinted(validHint)[0].path, `/queue/${WAN_I2V}`);
    await fal.queue.cancel(WAN_I2V, { requestId: ok.request_id });
  });

  it("fal.run goes to fal's sync host and returns the result", { timeout: TEST_TIMEOUT }, async () => {
    const result = await fal.run(LUMA, { input: VALID_INPUTS[LUMA] });
    assertVideoResult(result);
    const job = await emulatorJob(result.requestId);
    assert.equal(job.model_id, LUMA);
    const runs = (await emulatorLog()).filter((r) => r.method === "POST" && r.path === `/run/${LUMA}`);
    assert.ok(runs.length >= 1, "no POST /run/... reached the emulator");
  });

  it("a caller's own Authorization header is not passed on to fal", { timeout: TEST_TIMEOUT }, async () => {
    // The official server proxy forwards it when present; a browser app that sets one must not leak it.
    const withCredentials = createFalClient({
      proxyUrl: { url: PROXY_URL, when: "always" },
      credentials: "caller-own-key-id:caller-own-secret",
      fetch: recordingFetch,
    });
    const result = await withCredentials.subscribe(VEO2, { input: VALID_INPUTS[VEO2] });
    assertVideoResult(result);
    assert.ok(
      sent.some((r) => r.headers.Authorization === "Key caller-own-key-id:caller-own-secret"),
      "the client did not send its credentials (test set-up)",
    );
  });
});

describe("afterwards: what reached fal", () => {
  it("every request went through the gateway with the gateway's key only", async () => {
    const log = await emulatorLog();
    assert.ok(log.length >= 30, `only ${log.length} requests reached the emulator`);
    for (const entry of log) {
      const where = `${entry.method} ${entry.path}`;
      assert.ok(!JSON.stringify(entry).includes("caller-own-secret"), `${where} carried the caller's secret`);
      // fal's webhook signing keys are a public document: the gateway fetches them without a key.
      if (entry.method === "GET" && entry.path === "/rest/.well-known/jwks.json") {
        assert.equal(entry.headers.authorization, undefined, `${where} must not carry the fal key`);
        continue;
      }
      // The emulator masks the real key as "Key <valid>" and keeps any other credential verbatim.
      assert.equal(entry.headers.authorization, "Key <valid>", `${where} carried another credential`);
      assert.equal(entry.headers["user-agent"], "falgate", `${where} did not come from the gateway`);
    }
  });

  it("the client only ever called the proxy (and the signed upload URLs)", (t) => {
    assert.ok(sent.length >= 30, `only ${sent.length} requests recorded`);
    for (const request of sent) {
      if (request.method === "PUT" && request.url.startsWith(`${EMULATOR}/files/upload/`)) continue;
      assert.equal(request.url, PROXY_URL, `${request.method} ${request.url} bypassed the proxy`);
      const target = new URL(request.headers["x-fal-target-url"]);
      assert.match(target.host, /^(queue\.fal\.run|fal\.run|rest\.fal\.ai)$/);
    }
    const anonymous = sent.filter((r) => !("Authorization" in r.headers));
    assert.ok(anonymous.length > 0);
    const byTarget = {};
    for (const { method, headers } of sent) {
      const target = headers["x-fal-target-url"];
      const key = `${method} ${target ? new URL(target).host : "signed upload URL"}`;
      byTarget[key] = (byTarget[key] ?? 0) + 1;
    }
    t.diagnostic(`requests made by @fal-ai/client: ${JSON.stringify(byTarget)}`);
  });
});
