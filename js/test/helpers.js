// Test helpers: a real wsroom server (test/server, built with go build) and
// small waiting tools.
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { once } from "node:events";
import { createInterface } from "node:readline";

const serverDir = join(dirname(fileURLToPath(import.meta.url)), "server");
let binary;

function build() {
  if (binary) return binary;
  const dir = mkdtempSync(join(tmpdir(), "wsroom-js-test-"));
  process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  binary = join(dir, "server");
  execFileSync("go", ["build", "-o", binary, "."], { cwd: serverDir, stdio: "inherit" });
  return binary;
}

/** Starts a test server; resolves with {http, ws, ctl(path), stop()}. */
export async function startServer(args = []) {
  const proc = spawn(build(), args, { stdio: ["pipe", "pipe", "inherit"] });
  const lines = createInterface({ input: proc.stdout });
  const [line] = await Promise.race([
    once(lines, "line"),
    once(proc, "exit").then(([code]) => Promise.reject(new Error("test server exited: " + code))),
  ]);
  const http = line.replace(/^listening on /, "");
  return {
    http,
    ws: http.replace(/^http/, "ws"),
    async ctl(path, body) {
      const res = await fetch(http + "/ctl/" + path, { method: "POST", body });
      const text = await res.text();
      if (!res.ok) throw new Error(path + ": " + res.status + " " + text);
      return text;
    },
    async stop() {
      proc.stdin.end();
      if (proc.exitCode === null) await once(proc, "exit");
    },
  };
}

/** Resolves when cond() is true, polling; rejects after ms. */
export async function until(cond, what = "condition", ms = 5000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await sleep(5);
  }
}

/** Resolves with the next event of type from an emitter with on(). */
export function next(emitter, type, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error("timed out waiting for " + type));
    }, ms);
    const off = emitter.on(type, (...args) => {
      clearTimeout(timer);
      off();
      resolve(args);
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Fast reconnects for tests. */
export const fast = { minDelay: 20, maxDelay: 150, stableAfter: 60000 };
