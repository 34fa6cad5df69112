// Tests of the package as published: its size budget, its type
// declarations, and what it exports.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { measure, BUDGET } from "./size.js";
import * as client from "@wsroom/client";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

test("size: within the budget when minified and gzipped", async () => {
  const { minified, gzipped } = await measure();
  console.log(`# ${minified} bytes minified, ${gzipped} gzipped`);
  assert.ok(gzipped <= BUDGET, `${gzipped} bytes > budget ${BUDGET}`);
});

test("types: a typed usage file checks with tsc", () => {
  const tsc = join(root, "node_modules/typescript/bin/tsc");
  execFileSync(process.execPath, [tsc, "-p", join(root, "test/types")], { stdio: "inherit" });
});

test("exports: the package resolves to its source by name", () => {
  assert.deepEqual(Object.keys(client).sort(), ["Client", "Room", "RoomConnection", "WsroomError", "connect", "connectRoom"]);
});
