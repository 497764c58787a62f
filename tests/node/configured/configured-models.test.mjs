// @fal-ai/client against endpoints configured with FALGATE_MODELS (issue 12), through the proxy route.
// Run by tests/test_configured_models_js.py, which starts a gateway serving the two fixture documents
// (tests/fixtures/openapi) and sets FALGATE_URL / FALGATE_EMULATOR_URL.

import assert from "node:assert/strict";
import { describe, it } from "node:test";

import { createFalClient, ValidationError } from "@fal-ai/client";

const GATEWAY = process.env.FALGATE_URL;
const EMULATOR = process.env.FALGATE_EMULATOR_URL;
const KLING = "fal-ai/kling-video/v2.5-turbo/pro/image-to-video";
const VEO = "fal-ai/veo3/fast/image-to-video";
const IMAGE = "https://storage.googleapis.com/falserverless/example_inputs/veo3-i2v-input.png";
// "always": in Node the client would otherwise call fal directly; no credentials, as in a browser app.
const fal = createFalClient({ proxyUrl: { url: `${GATEWAY}/api/fal/proxy`, when: "always" }, credentials: undefined });

async function upstreamRequests() {
  return (await fetch(`${EMULATOR}/_control/requests`)).json();
}

describe("configured models through @fal-ai/client", { timeout: 60_000 }, () => {
  for (const [id, input] of [
    [KLING, { prompt: "a car races", image_url: IMAGE, camera_control: { movement_type: "zoom", movement_value: 2 } }],
    [VEO, { prompt: "a woman laughs", image_url: IMAGE, sampling: { keyframes: [{ timestamp: 1, image_url: IMAGE }] } }],
  ]) {
    it(`subscribe ${id}`, async () => {
      const result = await fal.subscribe(id, { input, logs: true, pollInterval: 100 });
      assert.ok(result.data.video.url);
      assert.ok(result.requestId);
    });
  }

  it("a nested invalid field is a ValidationError naming its path, and fal is never called", async () => {
    await fetch(`${EMULATOR}/_control/requests`, { method: "DELETE" });
    const input = { prompt: "p", image_url: IMAGE, camera_control: { movement_type: "pan", movement_value: 11 } };
    await assert.rejects(fal.queue.submit(KLING, { input }), (error) => {
      assert.ok(error instanceof ValidationError, String(error));
      assert.equal(error.status, 422);
      assert.deepEqual(error.fieldErrors.map((e) => e.loc), [["body", "camera_control", "movement_value"]]);
      return true;
    });
    assert.deepEqual(await upstreamRequests(), []);
  });
});
